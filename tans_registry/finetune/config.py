"""What fine-tuning and the whole `tans query` take and give (no torch here: the CLI reads these).

:class:`QueryConfig` (the ranking's :class:`~tans_registry.retrieval.config.RankConfig` plus how many
candidates to fine-tune, with :class:`FinetuneSettings`) -> :func:`~.pipeline.query` -> :class:`QueryRecord`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .. import params as P
from ..retrieval.config import VAL_FRACTION, RankConfig

STAGE = "query"
# A query dataset as the fine-tuning benchmark and the transfer table both see one: at most QUERY_TRAIN training
# images (stratified; the validation fifth carved out of them) and QUERY_TEST test images. Set for cost on
# 2026-12-04 (BENCHMARKS.md, the benchmark's unit costs), before any figure.
QUERY_TRAIN = 500
QUERY_TEST = 1000


@dataclass(frozen=True)
class FinetuneSettings:
    """One candidate's fine-tuning. The optimiser is TANS's (SGD, momentum 0.9, weight decay 4e-5, lr
    1e-2), batch 64 as the zoo's training and baselines.md; the epochs and early stopping fit the
    README's main job on 2 cores. None of it was chosen on a reported dataset."""

    epochs: float = 5.0            # passes over the training part (the validation part carved out)
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_fraction: float = 0.1   # of all steps: linear warm-up, then one cosine to 0 (per batch)
    patience: int = 2              # epochs without a better validation accuracy before stopping
    val_fraction: float = VAL_FRACTION  # of the training images (stratified, seeded); the test split is never used to choose
    crop_pad: int = 2              # random translation, as the zoo's training
    # head-first: the new head fitted on the start's frozen features (the linear probe), then everything trained
    head_first: bool = False
    # the probe itself (the frozen start with the probe's head) is kept when it validates better than every epoch
    keep_probe: bool = True
    seed: int = 0
    workers: int | None = None     # candidates fine-tuned at once (processes); None: min(candidates, cores)
    device: str = "auto"           # auto: CUDA when a device answers, else CPU

    def __post_init__(self) -> None:
        P.store(self,
                epochs=P.as_float(STAGE, "epochs", self.epochs, above=0),
                batch_size=P.as_int(STAGE, "batch_size", self.batch_size, 2, flag=False),
                lr=P.as_float(STAGE, "lr", self.lr, above=0, flag=False),
                momentum=P.as_float(STAGE, "momentum", self.momentum, minimum=0, maximum=1, flag=False),
                weight_decay=P.as_float(STAGE, "weight_decay", self.weight_decay, minimum=0, flag=False),
                warmup_fraction=P.as_float(STAGE, "warmup_fraction", self.warmup_fraction, minimum=0, maximum=0.5,
                                           flag=False),
                patience=P.as_int(STAGE, "patience", self.patience, 1, flag=False),
                val_fraction=P.as_float(STAGE, "val_fraction", self.val_fraction, above=0, maximum=0.5, flag=False),
                crop_pad=P.as_int(STAGE, "crop_pad", self.crop_pad, 0, flag=False),
                head_first=P.as_bool(STAGE, "head_first", self.head_first),
                keep_probe=P.as_bool(STAGE, "keep_probe", self.keep_probe, flag=False),
                seed=P.as_int(STAGE, "seed", self.seed, 0, flag=False),
                workers=P.as_int(STAGE, "workers", self.workers, 1, optional=True, flag="--finetune-workers"),
                device=P.as_choice(STAGE, "device", self.device, ("auto", "cpu", "cuda")))


@dataclass(frozen=True)
class QueryConfig(RankConfig):
    """`tans query`: rank (every :class:`RankConfig` field), then fine-tune the top ``finetune``
    candidates, register the winner and export it to ONNX (``export``)."""

    finetune: int = 3                       # candidates fine-tuned (0: rank only)
    settings: FinetuneSettings = field(default_factory=FinetuneSettings)
    export: bool = True                     # export the winner to ONNX and register it
    executor: str = "local"                 # candidates in local processes, or one Ray task each
    ray_address: str | None = None          # the Ray cluster (None: RAY_ADDRESS, else a local one)

    def __post_init__(self) -> None:
        self._validate_rank(STAGE)
        P.store(self, executor=P.as_choice(STAGE, "executor", self.executor, ("local", "ray")),
                ray_address=P.as_path(STAGE, "ray_address", self.ray_address))
        if self.ray_address is not None and self.executor != "ray":
            P.fail(STAGE, "ray_address", "used with --executor ray only", self.ray_address)
        if not isinstance(self.settings, FinetuneSettings):
            P.fail(STAGE, "settings", "a FinetuneSettings", self.settings, flag=False)
        P.store(self, finetune=P.as_int(STAGE, "finetune", self.finetune, 0),
                export=P.as_bool(STAGE, "export", self.export, flag="--no-export"))
        if self.finetune > self.top_k:
            P.fail(STAGE, "finetune", f"at most --top-k ({self.top_k}), since only ranked candidates are fine-tuned: "
                   "pass a smaller --finetune or a larger --top-k", self.finetune)

    def rank_config(self) -> RankConfig:
        return RankConfig(**{f: getattr(self, f) for f in RankConfig.__dataclass_fields__})


@dataclass(frozen=True)
class CandidateResult:
    """One fine-tuned candidate."""

    rank: int                      # its rank in the query's list
    parent: str                    # the zoo version it started from (models:/zoo.<group>/<version>)
    val_accuracy: float            # best epoch's, on the validation part of the training images
    test_accuracy: float           # of that epoch's weights, on the test split (reported, never used to choose)
    epochs: float                  # passes run
    best_epoch: int
    stopped_early: bool
    steps: int
    seconds: float
    history: tuple = ()            # validation accuracy after each epoch
    kept: str = "finetuned"        # "probe": the frozen start with the probe's head validated better than every epoch
    run_id: str | None = None      # its run in tans/queries (a child of the query run)
    model_uri: str | None = None   # its fine-tuned MLflow model (runs:/<run>/finetuned; the winner's is registered)


@dataclass(frozen=True)
class QueryRecord:
    ranking: object                # RankRecord
    finetuned: tuple = ()          # CandidateResult, in rank order
    winner: dict | None = None     # the winner: its result, `model_uri` (tans-finetuned version), champion or not
    onnx: object | None = None     # ExportRecord of the winner
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON of `tans query --json`: query, candidates, finetuned, winner, onnx, timings."""
        r = asdict(self.ranking)
        return {"query": {"dataset": r["dataset"], "fingerprint": r["dataset"]["fingerprint"],
                          "constraints": r["constraints"], "rerank": r["rerank"], "encoder_version": r["encoder_version"],
                          "index_key": r["index_key"], "zoo_networks": r["zoo_networks"], "run_id": r["run_id"]},
                "candidates": r["candidates"], "finetuned": [asdict(c) for c in self.finetuned],
                "winner": self.winner, "onnx": None if self.onnx is None else asdict(self.onnx),
                "timings": self.timings}
