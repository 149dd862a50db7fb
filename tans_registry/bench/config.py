"""What `tans bench` takes and gives (no torch here: the CLI reads these defaults).

:class:`BenchConfig` -> :func:`~.stage.run_bench` -> :class:`BenchRecord`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .. import params as P
from ..finetune.config import QUERY_TEST, QUERY_TRAIN, FinetuneSettings

STAGE = "bench"
# Every start the benchmark compares, each fine-tuned with the same budget (epochs, images, schedule).
METHODS = ("tans", "tans_predictor", "tans_logme", "tans_hybrid", "logme_all", "random", "best_average", "top_source",
           "largest", "scratch", "oracle")
# whose ranking of the ground truth is measured (weighted tau): retrieval, the predictor, the transferability scores
SCORERS = ("tans", "predictor", "hybrid", "logme", "leep", "nce")


@dataclass(frozen=True)
class BenchConfig:
    """The fine-tuning benchmark over query datasets that no training and no choice has seen.

    The budget is the product's fine-tuning (:class:`~tans_registry.finetune.config.FinetuneSettings`:
    SGD, warm-up then cosine, the validation split) without early stopping, so that every start's
    validation accuracy is known after every epoch; fixed a priori, never chosen on a reported dataset."""

    holdout: tuple[str, ...] | None = None     # reported datasets of the data directory; None: the zoo build's
    query_data: tuple[str, ...] = ()           # archives or image folders from outside (never used for training)
    epochs: float = 5.0                        # the full budget (the one-epoch budget is run too)
    # Per query dataset: 500 training images (a fifth carved out for validation), at least 6 ground-truth
    # networks and 2 random draws. Cut from 1,000 / 20 / 5 on 2026-12-04, then from 12 / 3 on 2026-12-06, by the
    # unit costs and before any figure, towards a chain of 150 minutes: 4.6 min a (dataset, seed) at 12 / 3 with
    # the 340-network zoo on 2 cores, ~174 min a chain (BENCHMARKS.md); a fine-tuned start costs ~7 s of a pair.
    # The methods' own picks (up to 3 each) are fine-tuned too and join the ground truth: ~19 zoo starts a pair.
    # Test: up to 1,000.
    max_train: int = QUERY_TRAIN               # training images per query dataset (stratified; validation carved out)
    max_test: int = QUERY_TEST                 # test images per query dataset (stratified)
    ground_truth: int = 6                      # zoo networks fine-tuned at least (spread over retrieval order and size)
    random_draws: int = 2
    max_params: int | None = None              # the constraint every method works under (None: none)
    seed: int = 0                              # the first seed; seed, seed + 1, ... for --seeds
    seeds: int = 2                             # seeds per dataset: each its own training sample, head init, draws
    workers: int | None = None                 # jobs at once (processes); None: the machine's cores (Ray: the cluster's)
    executor: str = "local"                    # local processes, or one Ray task per start / LogME group
    device: str = "auto"                       # auto: CUDA when a device answers, else CPU
    ray_address: str | None = None             # the Ray cluster (None: RAY_ADDRESS, else a local one)
    plots: str | None = None                   # also write the PNG plots into this folder (e.g. docs/)
    resume: bool = False                       # reuse (dataset, seed) results finished with the same settings
    # benchmark the selection datasets instead (training datasets of the zoo, each without its own groups): the
    # figures the project's defaults are chosen by, never reported as results
    selection: bool = False
    # the fine-tuning recipe (the new head fitted on frozen features first, or not): the product's by default
    head_first: bool = FinetuneSettings.__dataclass_fields__["head_first"].default
    work_dir: str | None = None
    data_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        P.store(self,
                holdout=None if self.holdout is None else (P.as_names(STAGE, "holdout", self.holdout) or ()),
                query_data=tuple(P.as_path(STAGE, "query_data", q, optional=False) for q in (self.query_data or ())),
                epochs=P.as_float(STAGE, "epochs", self.epochs, minimum=1),
                max_train=P.as_int(STAGE, "max_train", self.max_train, 20),
                max_test=P.as_int(STAGE, "max_test", self.max_test, 10),
                ground_truth=P.as_int(STAGE, "ground_truth", self.ground_truth, 3),
                random_draws=P.as_int(STAGE, "random_draws", self.random_draws, 1),
                max_params=P.as_int(STAGE, "max_params", self.max_params, 1, optional=True),
                seed=P.as_int(STAGE, "seed", self.seed, 0),
                seeds=P.as_int(STAGE, "seeds", self.seeds, 1),
                workers=P.as_int(STAGE, "workers", self.workers, 1, optional=True),
                executor=P.as_choice(STAGE, "executor", self.executor, ("local", "ray")),
                device=P.as_choice(STAGE, "device", self.device, ("auto", "cpu", "cuda")),
                ray_address=P.as_path(STAGE, "ray_address", self.ray_address),
                plots=P.as_path(STAGE, "plots", self.plots),
                resume=P.as_bool(STAGE, "resume", self.resume),
                selection=P.as_bool(STAGE, "selection", self.selection),
                head_first=P.as_bool(STAGE, "head_first", self.head_first),
                work_dir=P.as_path(STAGE, "work_dir", self.work_dir),
                data_dir=P.as_path(STAGE, "data_dir", self.data_dir),
                progress=P.as_bool(STAGE, "progress", self.progress, flag=False))
        if self.ray_address is not None and self.executor != "ray":
            P.fail(STAGE, "ray_address", "used with --executor ray only", self.ray_address)
        if self.selection and (self.holdout is not None or self.query_data):
            P.fail(STAGE, "selection", "used alone: the selection datasets replace --holdout and --query-data",
                   self.selection)


@dataclass(frozen=True)
class BenchRecord:
    run_id: str                                   # the parent run in tans/bench
    datasets: dict = field(default_factory=dict)  # name -> its figures (see `tans bench --help`)
    settings: dict = field(default_factory=dict)
    zoo: dict = field(default_factory=dict)       # networks, groups, the build's holdout, encoder version
    seconds: float = 0.0
    plots: tuple[str, ...] = ()
    intervals: dict = field(default_factory=dict)  # pooled paired 95% bootstrap intervals over (dataset, seed)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ChainConfig:
    """`tans bench-chain`: zoo build (``profile``), register, encoders, index, then the benchmark over the
    reported datasets at ``seeds`` seeds; every stage resumable (``resume``)."""

    profile: str = "bench"
    seeds: int = 2
    epochs: float = 5.0
    resume: bool = False
    workers: int | None = None
    executor: str = "local"
    ray_address: str | None = None
    device: str = "auto"
    plots: str | None = None
    work_dir: str | None = None
    data_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        st = "bench-chain"
        P.store(self, profile=P.as_choice(st, "profile", self.profile, ("quick", "bench")),
                seeds=P.as_int(st, "seeds", self.seeds, 1),
                epochs=P.as_float(st, "epochs", self.epochs, minimum=1),
                resume=P.as_bool(st, "resume", self.resume),
                workers=P.as_int(st, "workers", self.workers, 1, optional=True),
                executor=P.as_choice(st, "executor", self.executor, ("local", "ray")),
                ray_address=P.as_path(st, "ray_address", self.ray_address),
                device=P.as_choice(st, "device", self.device, ("auto", "cpu", "cuda")),
                plots=P.as_path(st, "plots", self.plots),
                work_dir=P.as_path(st, "work_dir", self.work_dir),
                data_dir=P.as_path(st, "data_dir", self.data_dir),
                progress=P.as_bool(st, "progress", self.progress, flag=False))
        if self.ray_address is not None and self.executor != "ray":
            P.fail(st, "ray_address", "used with --executor ray only", self.ray_address)


@dataclass(frozen=True)
class ChainRecord:
    stage_seconds: dict = field(default_factory=dict)  # zoo_build, zoo_register, transfer_table, encoders_train, index_build, bench
    total_seconds: float = 0.0
    bench: BenchRecord | None = None
    facts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
