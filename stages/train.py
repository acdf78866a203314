"""The train stage: fit the dense baseline that every compression stage starts from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.kerasio import clone_with_weights
from slimpipe.pipeline.stage import StageResult, check_choice, require
from slimpipe.stages.finetune import FineTune

IF_TRAINED = ("skip", "continue")


@dataclass(frozen=True)
class Train(FineTune):
    """Train a Keras classifier on the run's data set (Adam, sparse cross-entropy).

    >>> arts = Train(epochs=5, batch_size=128).run(source, ctx)
    >>> arts[0].name, arts[0].meta["train_accuracy"]
    ('trained', 0.91)

    An input already marked `trained: True` in its meta is kept as the baseline without more
    training unless `if_trained="continue"`. `epochs=0` copies the model unchanged. The
    fine-tuning parameters are the other training stages' (`stages.finetune.FineTune`), except
    `distill`: this stage trains the teacher that later stages distill from.
    """

    name: ClassVar[str] = "train"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = "keras"

    epochs: int = 10
    if_trained: str = "skip"

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.name, "if_trained", self.if_trained, IF_TRAINED)
        require(self.distill == 0, self.name, "distill must be 0: train makes the baseline that later "
                f"stages distill from. Received: distill={self.distill!r}; fix: set distill in a later stage")

    def run(self, art: Artifact, ctx) -> StageResult:
        if art.meta.get("trained") and self.if_trained == "skip":
            # No new artifact: the runner keeps `art` as the current model.
            return StageResult(baseline=art.name, notes=[
                f"train: {art.name!r} is already trained; kept it as the baseline "
                "(set if_trained = \"continue\" to train it further)"])

        model = clone_with_weights(ctx.keras_model(art))
        meta = {"epochs": self.epochs, "trained": True}
        if self.epochs > 0:
            history = self.fit(model, ctx).history
            meta["train_accuracy"] = float(history["accuracy"][-1])
            meta["train_loss"] = float(history["loss"][-1])
        else:
            # Nothing was trained here: only claim `trained` if the input already was.
            meta["trained"] = bool(art.meta.get("trained", False))
        out = ctx.save_model(self, model, "trained", parent=art, kind="keras", meta=meta)
        return StageResult([out], baseline=out.name)
