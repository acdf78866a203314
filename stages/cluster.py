"""The cluster stage: weight clustering with fine-tuning (tfmot's cluster_weights)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.kerasio import clone_with_weights, tfmot_scope
from slimpipe.pipeline.layer_select import layer_infos, select, select_mapping, selector_pairs, selector_tuple
from slimpipe.pipeline.stage import StageResult, check_choice, check_count, check_name_as, require
from slimpipe.stages.finetune import FineTune

INITS = ("kmeans_plus_plus", "linear", "density_based", "random")


@dataclass(frozen=True)
class Cluster(FineTune):
    """Share each kernel's weights among `clusters` values, fine-tune, strip the wrappers.

    >>> arts = Cluster(clusters=16, epochs=1).run(pruned, ctx)
    >>> arts[0].name, arts[0].kind, arts[0].meta["layers"][0]
    ('clustered', 'keras', {'name': 'conv', 'unique_values': 17, 'params': 72, 'sparsity': 0.7})

    `layer_clusters` gives some layers their own count ({selector = clusters}; a later entry
    wins), e.g. more values for a layer that loses accuracy to clustering. `preserve_sparsity` keeps a pruned model's zeros at zero (one extra value, so a layer may
    end with clusters + 1 unique values). The meta is measured on the stripped kernels. A Conv2D
    with no more weights than `clusters` is left alone by tfmot; the report notes it. `layers`
    picks the layers with selectors (`pipeline.layer_select`); empty clusters every layer with a
    kernel. `name_as` names the output ("clustered"). The fine-tuning parameters are `stages.finetune.FineTune`'s.
    """

    name: ClassVar[str] = "cluster"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = "keras"

    clusters: int = 16
    init: str = "kmeans_plus_plus"
    preserve_sparsity: bool = True
    # tfmot's clustering tutorial fine-tunes with Adam at 1e-5: the centroids start from a
    # trained model, and a larger step scatters what the k-means initialisation found.
    learning_rate: float = 1e-5
    layers: tuple[str, ...] = ()
    layer_clusters: tuple[tuple[str, int], ...] = ()
    name_as: str = "clustered"

    def __post_init__(self):
        super().__post_init__()
        n = self.name
        check_name_as(n, self.name_as)
        object.__setattr__(self, "layers", selector_tuple(n, "layers", self.layers))
        object.__setattr__(self, "layer_clusters", selector_pairs(n, "layer_clusters", self.layer_clusters))
        for sel, count in self.layer_clusters:
            check_count(n, f"layer_clusters[{sel!r}]", count, minimum=3 if self.preserve_sparsity is True else 2)
        require(isinstance(self.preserve_sparsity, bool), n,
                f"preserve_sparsity must be true or false. Received: preserve_sparsity={self.preserve_sparsity!r}")
        # tfmot needs one centroid besides the zero one when it preserves sparsity.
        check_count(n, "clusters", self.clusters, minimum=3 if self.preserve_sparsity is True else 2)
        check_choice(n, "init", self.init, INITS)

    def run(self, art: Artifact, ctx) -> StageResult:
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras
        from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import ClusterWeights

        clustering = tfmot.clustering.keras
        source = ctx.keras_model(art)
        targets, result = self._targets(source), StageResult()
        counts = self._counts(source, targets)
        sparse = [layer.name for layer in source.layers
                  if layer.name in targets and self._too_few(layer, counts[layer.name])]
        if sparse:
            targets -= set(sparse)
            result.note(f"cluster: {', '.join(sparse)} kept as they are: too few non-zero weights for "
                     f"k-means++ to find clusters={self.clusters} values (they hold few distinct values already)")
        params = {"cluster_centroids_init": getattr(clustering.CentroidInitialization, self.init.upper()),
                  "preserve_sparsity": self.preserve_sparsity}

        def wrap(layer):
            if layer.name not in targets:
                return layer
            return clustering.cluster_weights(layer, number_of_clusters=counts[layer.name], **params)

        # Wrap a private copy: cluster_weights wraps the very layer objects it is given.
        with tfmot_scope():
            model = keras.models.clone_model(clone_with_weights(source), clone_function=wrap)
        skipped = [layer.name for layer in model.layers
                   if layer.name in targets and not isinstance(layer, ClusterWeights)]
        if skipped:
            result.note(f"cluster: tfmot left {', '.join(skipped)} unclustered: a Conv2D needs more "
                     f"than clusters={self.clusters} weights; lower clusters to cluster it")
        if self.epochs:
            self.fit(model, ctx)
        model = clustering.strip_clustering(model)

        layers = [entry for entry in clustered_weights(model) if entry["name"] in targets]
        extra = 1 if self.preserve_sparsity else 0
        over = [f"{e['name']} ({e['unique_values']})" for e in layers
                if e["unique_values"] > counts[e["name"]] + extra and e["name"] not in skipped]
        if over:
            result.note(f"cluster: {', '.join(over)} ended with more unique kernel values than "
                     f"clusters={self.clusters}" + (" + 1 for zero" if self.preserve_sparsity else ""))
        for entry in layers:
            entry["clusters"] = counts[entry["name"]]
        meta = {"clusters": self.clusters, "layers": layers, "unclustered": skipped}
        result.artifacts.append(ctx.save_model(self, model, self.name_as, parent=art, kind="keras", meta=meta))
        return result

    def check(self, model, data) -> None:
        """The layers to cluster, before anything trains."""
        self._counts(model, self._targets(model))

    def _counts(self, model, targets: set[str]) -> dict[str, int]:
        """Clusters per target layer: `clusters`, or its layer_clusters entry."""
        infos = [i for i in layer_infos(model) if i.name in targets]
        own = select_mapping(self.layer_clusters, infos, stage=self.name, field="layer_clusters")
        return {name: int(own.get(name, self.clusters)) for name in targets}

    def _targets(self, model) -> set[str]:
        infos = {i.name: i for i in layer_infos(model)}
        clusterable = [infos[layer.name] for layer in model.layers if _clusterable(layer)]
        if not clusterable:
            raise ConfigError("stage 'cluster': the model has no layer with weights tfmot can cluster "
                              "(Conv, Dense, ...): use another model or drop the cluster step")
        return set(select(self.layers, clusterable, stage=self.name, field="layers"))


    def _too_few(self, layer, clusters: int) -> bool:
        """Whether tfmot's k-means++ initialization would fail on the layer's kernel: it samples
        its centroids from the weights (with preserve_sparsity, clusters - 1 of them split between
        the negative and the positive weights in proportion), so it needs that many to sample."""
        if self.init != "kmeans_plus_plus":
            return False
        kernel = next((getattr(layer, a) for a in ("kernel", "depthwise_kernel", "pointwise_kernel")
                       if getattr(layer, a, None) is not None), None)
        if kernel is None:
            return False
        w = np.asarray(kernel.numpy()).ravel()
        if not self.preserve_sparsity:
            return w.size < clusters
        negative, positive = int(np.sum(w < 0)), int(np.sum(w > 0))
        if negative + positive == 0:
            return False
        wanted = int(np.round((clusters - 1) * negative / (negative + positive)))
        return wanted > negative or clusters - 1 - wanted > positive


def _clusterable(layer) -> bool:
    """Layers whose weights tfmot clusters (Conv*, Dense, ...); pooling, BN... have none."""
    from tensorflow_model_optimization.python.core.clustering.keras import clusterable_layer, clustering_registry

    if isinstance(layer, clusterable_layer.ClusterableLayer):
        return True
    registry = clustering_registry.ClusteringRegistry
    return layer.__class__ in registry._LAYERS_WEIGHTS_MAP and bool(registry._weight_names(layer))


def clustered_weights(model) -> list[dict]:
    """Unique values and zeros of every kernel-like weight of a plain model, per layer."""
    out = []
    for layer in model.layers:
        for attr in ("kernel", "pointwise_kernel", "embeddings"):
            weight = getattr(layer, attr, None)
            if weight is None or not hasattr(weight, "numpy"):
                continue
            w = weight.numpy()
            out.append({"name": layer.name, "unique_values": int(np.unique(w).size),
                        "params": int(w.size), "sparsity": round(float(np.mean(w == 0)), 4)})
            break
    return out
