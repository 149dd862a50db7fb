"""What the transfer table's stage takes and gives (no torch here: the CLI reads these defaults).

:class:`TransferConfig` -> :func:`~.stage.build_table` -> :class:`TransferRecord`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import params as P
from ..finetune.config import QUERY_TEST, QUERY_TRAIN

STAGE = "zoo transfer"


@dataclass(frozen=True)
class TransferConfig:
    """Fine-tune, on each training dataset of the zoo taken as a query (the benchmark's caps, seed and budgets),
    ``starts`` networks of the *other* datasets' groups and of the generalist (leave-one-dataset-out: a task's
    own dataset's groups are never its candidates), and keep every result as a record in `tans/transfer`.

    Sized to fit the benchmark chain's 150 minutes on 2 cores: a start costs ~8 s at both budgets on two
    workers, so 17 tasks x 4 starts take ~9 minutes (6 starts took 14.1 minutes on 2026-12-07, which with the
    rest of the chain measured that day overran the 150)."""

    starts: int = 4                            # per task: one of the generalist's networks and the rest from other groups
    datasets: tuple[str, ...] | None = None    # the tasks' datasets; None: every training dataset of the zoo
    epochs: float = 5.0                        # the full budget; the one-epoch budget is run too (the benchmark's)
    max_train: int = QUERY_TRAIN
    max_test: int = QUERY_TEST
    seed: int = 0
    workers: int | None = None                 # starts fine-tuned at once (processes); None: the machine's cores
    device: str = "auto"
    executor: str = "local"                    # local processes, or one Ray task per start
    ray_address: str | None = None             # the Ray cluster (None: RAY_ADDRESS, else a local one)
    resume: bool = False                       # keep the records already written for the same task, start, settings
    work_dir: str | None = None
    data_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        P.store(self,
                starts=P.as_int(STAGE, "starts", self.starts, 1),
                datasets=P.as_names(STAGE, "datasets", self.datasets),
                epochs=P.as_float(STAGE, "epochs", self.epochs, minimum=1),
                max_train=P.as_int(STAGE, "max_train", self.max_train, 20),
                max_test=P.as_int(STAGE, "max_test", self.max_test, 10),
                seed=P.as_int(STAGE, "seed", self.seed, 0),
                workers=P.as_int(STAGE, "workers", self.workers, 1, optional=True),
                device=P.as_choice(STAGE, "device", self.device, ("auto", "cpu", "cuda")),
                executor=P.as_choice(STAGE, "executor", self.executor, ("local", "ray")),
                ray_address=P.as_path(STAGE, "ray_address", self.ray_address),
                resume=P.as_bool(STAGE, "resume", self.resume),
                work_dir=P.as_path(STAGE, "work_dir", self.work_dir),
                data_dir=P.as_path(STAGE, "data_dir", self.data_dir),
                progress=P.as_bool(STAGE, "progress", self.progress, flag=False))
        if self.ray_address is not None and self.executor != "ray":
            P.fail(STAGE, "ray_address", "used with --executor ray only", self.ray_address)

    @property
    def budgets(self) -> list[float]:
        return [1.0, float(self.epochs)] if self.epochs != 1 else [1.0]


@dataclass(frozen=True)
class TransferRecord:
    experiment_id: str
    tasks: tuple[str, ...]
    records: int          # records of this table's tasks in the experiment now (one per task, start and budget)
    written: int          # of them, written by this run
    kept: int             # of them, kept from an earlier run (--resume)
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AddConfig:
    """`tans zoo add`: a fine-tuned winner (``models:/tans-finetuned.<dataset>/<version>`` or ``@alias``) joins the
    zoo as a standalone candidate."""

    model_uri: str
    work_dir: str | None = None

    def __post_init__(self) -> None:
        P.store(self, model_uri=P.as_path("zoo add", "model_uri", self.model_uri, optional=False, flag=False),
                work_dir=P.as_path("zoo add", "work_dir", self.work_dir))


@dataclass(frozen=True)
class AddRecord:
    model_uri: str        # the zoo version it became (models:/zoo.added.<dataset>/<version>)
    added_from: str       # the fine-tuned version it is
    created: bool         # False: it was in the zoo already (the same version returned)
    dataset: str
    accuracy: float       # its test accuracy on its dataset (as the fine-tuning measured it)
    n_params: int
    run_id: str

    def to_dict(self) -> dict:
        return asdict(self)
