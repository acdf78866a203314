"""Keras 3 models in and out: slimpipe compresses with tfmot, which works with tf_keras only.

In: `pipeline.models.load_user_model` asks `detect` which Keras saved a .keras or .h5 file;
a Keras 3 file goes through `translate.load_keras3_file`, which
1. reads the stored config and refuses, in one line, everything it cannot translate exactly
   (`scan`: custom layers without --custom-objects, Lambda without --allow-unsafe-model,
   layers and keras.ops calls with no tf_keras equivalent, channels_first layers, float16 /
   bfloat16 / float64 and quantized dtype policies) before Keras runs anything from the file;
2. loads it with Keras 3 (`safe_mode` on unless --allow-unsafe-model);
3. rebuilds the same graph in tf_keras layer by layer (`build_in`, with the layer table and
   config rules in `table` and the graph walk in `graph`): Sequential and functional models,
   shared layers and branches; nested models inlined; keras.ops arithmetic and Keras 3's
   hard_sigmoid / hard_silu rebuilt from standard layers; mixed precision made float32;
4. copies every weight (shapes and counts checked) and requires the same outputs on sample
   inputs (`check`: max |diff| <= 1e-5 of the outputs' scale).

Out: for such a run, `RunContext.keras3` (an `out.Keras3Writer`) writes each plain Keras
artifact as `<name>.keras` beside its .h5 too, rebuilt for Keras 3 (`build_out`), reloaded by
Keras 3 and checked the same way; the record sits in the artifact's meta["keras3"].

Importing this package does not import Keras 3; only reading or writing a Keras 3 file does.
"""
