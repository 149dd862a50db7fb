"""The encoders' configuration (architecture and the retrieval policy they were validated with); no torch."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .. import params as P

POOLINGS = ("mean", "attention")
TRANSFER_LOSSES = ("", "pairwise", "mse")


@dataclass(frozen=True)
class EncoderConfig:
    """The encoders' architecture and the retrieval/re-ranking policy they were validated with: the one
    source of these defaults (training, validation and queries all read them from here)."""

    feature_dim: int = 256        # backbone feature size
    embed_dim: int = 128          # the shared space (TANS: 128)
    hidden: int = 256
    pooling: str = "mean"         # "mean" (TANS) or "attention" (MetaD2A-style set encoder)
    functional_dim: int = 1280    # OFA MobileNetV3 width 1.0 penultimate size
    # The functional embedding (penultimate activation on noise probes) is off by default: on held-out
    # datasets it made retrieval and ranking worse in both measured snapshots of the bench zoo
    # (BENCHMARKS.md, "Encoders"); `--functional` turns it on.
    use_functional: bool = False
    use_predictor: bool = True    # ablation: no accuracy predictor
    predictor_topology: bool = True  # the predictor also sees the normalised topology
    dataset_weight: float = 1.0   # retrieval: + weight * cos(query, network's source dataset)
    # Re-ranking (retrieval.rerank): the predictor orders the `shortlist` best-retrieved networks of the
    # first `rerank_groups` groups among them (0: the whole shortlist). The whole shortlist mixed other
    # datasets' networks into the top: xgood Recall@1 0.6 vs 1.0 on the bench zoo (BENCHMARKS.md, "Encoders").
    shortlist: int = 100
    rerank_groups: int = 1
    k_per_class: int = 20         # images per class in a dataset's query set (MetaD2A: 20), in training and queries
    # The transfer predictor (encoders.models.TransferPredictor), learnt from the transfer table's fine-tuned
    # accuracies after the contrastive training: "" for none (no records), else its loss ("pairwise": a logistic
    # loss on the order of every pair of starts of one task; "mse": squared error on each task's centred
    # accuracies) and whether it sees where a network comes from (its source dataset's embedding and source
    # accuracy). Chosen by `tans encoders train` on the selection datasets' records (training/transfer_fit.py).
    transfer_loss: str = ""
    transfer_source: bool = True

    def __post_init__(self) -> None:
        st = "encoders train"
        P.store(self, **{k: P.as_int(st, k, getattr(self, k), 1, flag=False)
                         for k in ("feature_dim", "embed_dim", "hidden", "functional_dim")})
        P.store(self, pooling=P.as_choice(st, "pooling", self.pooling, POOLINGS),
                use_functional=P.as_bool(st, "use_functional", self.use_functional, flag=False),
                use_predictor=P.as_bool(st, "use_predictor", self.use_predictor, flag=False),
                predictor_topology=P.as_bool(st, "predictor_topology", self.predictor_topology, flag=False),
                dataset_weight=P.as_float(st, "dataset_weight", self.dataset_weight, minimum=0),
                shortlist=P.as_int(st, "shortlist", self.shortlist, 1),
                rerank_groups=P.as_int(st, "rerank_groups", self.rerank_groups, 0),
                k_per_class=P.as_int(st, "k_per_class", self.k_per_class, 1),
                transfer_loss=P.as_choice(st, "transfer_loss", self.transfer_loss, TRANSFER_LOSSES, flag=False),
                transfer_source=P.as_bool(st, "transfer_source", self.transfer_source, flag=False))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EncoderConfig":
        d = json.loads(text)
        # encoders saved before these fields existed were built and validated without them
        d.setdefault("predictor_topology", False)
        d.setdefault("dataset_weight", 0.0)
        d.setdefault("rerank_groups", 0)
        d.setdefault("shortlist", 100)
        d.setdefault("k_per_class", 20)
        return cls(**d)
