"""The low_rank stage: factorize Dense and Conv2D layers into two thinner layers, then fine-tune.

A rank-r factorization of fc1 (in x out) needs r (in + out) weights and as many MACs, and runs on
ordinary dense kernels: the file gets smaller and faster with no sparse kernel. The rank of each
layer comes from, in order of precedence, `ranks` ({selector: rank}), `ratio` (the factors hold
at most 1/ratio of the layer's weights) or `energy` (the smallest rank keeping that share of the
squared singular values). A layer whose factors would need as many weights or MACs as the layer
itself is left alone, and the report says so. See `stages.surgery.factorize` for the surgery.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from slimpipe.pipeline.artifacts import Artifact
from slimpipe.pipeline.errors import ConfigError
from slimpipe.pipeline.layer_select import (layer_infos, select, select_mapping, selector_pairs,
                                            selector_tuple)
from slimpipe.pipeline.stage import StageResult, check_choice, is_number, require
from slimpipe.stages.finetune import FineTune
from slimpipe.stages.surgery.factorize import CONV_MODES, factorize, plan_layer

FAMILIES = ("Dense", "Conv2D")


@dataclass(frozen=True)
class LowRank(FineTune):
    """Truncated-SVD factorization of the selected Dense/Conv2D layers, then `epochs` of
    fine-tuning (0: none).

    >>> LowRank(layers=("@dense", "!@output"), energy=0.9, epochs=4).run(trained, ctx)
    """

    name: ClassVar[str] = "low_rank"
    accepts: ClassVar[tuple[str, ...]] = ("keras",)
    produces: ClassVar[str | None] = "keras"

    layers: tuple[str, ...] = ("!@input", "!@output")
    energy: float = 0.9
    ratio: float | None = None
    ranks: tuple[tuple[str, int], ...] = ()
    conv: str = "spatial"
    epochs: int = 2

    def __post_init__(self):
        super().__post_init__()
        n = self.name
        object.__setattr__(self, "layers", selector_tuple(n, "layers", self.layers))
        object.__setattr__(self, "ranks", selector_pairs(n, "ranks", self.ranks))
        require(is_number(self.energy) and 0 < self.energy <= 1, n, "energy must be in (0, 1], the share "
                f"of the squared singular values each layer keeps (e.g. 0.9). Received: energy={self.energy!r}")
        require(self.ratio is None or is_number(self.ratio) and self.ratio > 1, n, "ratio must be a number "
                "> 1 (the factors hold at most 1/ratio of a layer's weights), or unset to rank by energy. "
                f"Received: ratio={self.ratio!r}")
        for sel, rank in self.ranks:
            require(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1, n,
                    f"ranks[{sel!r}] must be an integer >= 1. Received: {rank!r}")
        check_choice(n, "conv", self.conv, CONV_MODES)

    def check(self, model, data) -> list[str]:
        """The selectors and explicit ranks against the model, before anything trains."""
        plans, _ = self._plans(model)
        return [f"low_rank: {p.name} is left as it is: {p.reason}" for p in plans.values() if p.reason]

    def _plans(self, model):
        candidates = [i for i in layer_infos(model) if i.cls in FAMILIES]
        if not candidates:
            raise ConfigError(f"stage '{self.name}': the model has no Dense or Conv2D layer to factorize: "
                              "remove the low_rank step for this model")
        names = select(self.layers, candidates, stage=self.name, field="layers")
        explicit = select_mapping(self.ranks, candidates, stage=self.name, field="ranks") if self.ranks else {}
        plans = {name: plan_layer(model.get_layer(name), self.conv) for name in {*names, *explicit}}
        for name, rank in explicit.items():
            plan = plans[name]
            if plan.reason:
                raise ConfigError(f"stage '{self.name}': ranks names {name}, which cannot be factorized "
                                  f"({plan.reason}): remove it from ranks")
            if rank > plan.max_rank:
                raise ConfigError(f"stage '{self.name}': rank {rank} for {name} exceeds its largest "
                                  f"possible rank, {plan.max_rank} (kernel {plan.shape}): choose a rank "
                                  f"from 1 to {plan.max_rank}")
        return plans, explicit

    def run(self, art: Artifact, ctx) -> StageResult:
        source = ctx.keras_model(art)
        plans, explicit = self._plans(source)
        result, chosen, records = StageResult(), {}, []
        for name in (layer.name for layer in source.layers if layer.name in plans):
            plan = plans[name]
            if plan.reason:
                result.note(f"low_rank: {name} left as it is: {plan.reason}")
                continue
            rank = explicit.get(name) or (plan.rank_for_ratio(self.ratio) if self.ratio
                                          else plan.rank_for_energy(self.energy))
            record = plan.record(rank)
            if not plan.pays(rank):
                record["skipped"] = "the factors would need as many weights or MACs as the layer"
                result.note(f"low_rank: {name} left as it is: at rank {rank} of {plan.max_rank} its factors "
                            f"need {record['params_after']:,} weights and {record['macs_after']:,} MACs "
                            f"against {plan.params:,} and {plan.macs:,}")
            else:
                chosen[name] = rank
            records.append(record)
        if not chosen:
            result.note("low_rank: no selected layer pays to factorize; the model is unchanged")
        model = factorize(source, chosen, self.conv, plans)  # a new model: the input is never changed
        if self.epochs and chosen:
            self.fit(model, ctx)
        meta = {"factorization": records, "conv": self.conv, "trained": True}
        result.artifacts.append(ctx.save_model(self, model, "lowrank", parent=art, kind="keras", meta=meta))
        return result
