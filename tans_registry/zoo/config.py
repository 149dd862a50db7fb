"""What the zoo stages take and give: :class:`ZooConfig` -> :func:`~.build.build_zoo` ->
:class:`ZooBuildRecord`, and :class:`ZooListConfig` -> :func:`~.store.list_zoo`.

Configs are frozen and validated once, here, where they enter (:mod:`tans_registry.params`). No torch:
the CLI reads these defaults.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import params as P
from .profiles import PROFILES

STAGE = "zoo build"


@dataclass(frozen=True)
class ZooConfig:
    profile: str = "quick"
    datasets: tuple[str, ...] | None = None  # overrides the profile's list
    subnets: int | None = None               # overrides the profile's count
    groups: int | None = None                # overrides the profile's group count
    epochs: float | None = None              # overrides the per-group training epochs
    base_epochs: float | None = None         # overrides the base supernet's epochs (0: no base)
    resume: bool = False
    data_dir: str | None = None
    work_dir: str | None = None
    seed: int = 0
    progress: bool = True
    # Groups built at once, each in its own process with its share of the CPU threads: 2 on a 2-core
    # machine build ~1.45x faster than 1 (small networks use two threads poorly; BENCHMARKS.md).
    # Local: groups built at once (default 1). Ray: at most this many group tasks in flight (default: as
    # many as the cluster's CPUs run).
    workers: int | None = None
    executor: str = "local"                    # local processes, or one Ray task per group
    ray_address: str | None = None             # the Ray cluster (None: RAY_ADDRESS, else a local one)
    device: str = "auto"                       # auto: CUDA when a device answers, else CPU
    only_groups: tuple[str, ...] | None = None  # build just these groups (names as `tans zoo list` shows)
    holdout: tuple[str, ...] | None = None      # datasets kept out of the build; None: the profile's; (): none
    # (where the data directory has a MANIFEST.json, its role `report` datasets replace the profile's list
    # and are held out whatever this says: it can add names, never drop one; zoo/build.py with_manifest_roles)

    def __post_init__(self) -> None:
        P.store(self,
                profile=P.as_choice(STAGE, "profile", self.profile, PROFILES),
                datasets=P.as_names(STAGE, "datasets", self.datasets),
                subnets=P.as_int(STAGE, "subnets", self.subnets, 1, optional=True),
                groups=P.as_int(STAGE, "groups", self.groups, 1, optional=True),
                epochs=P.as_float(STAGE, "epochs", self.epochs, above=0, optional=True),
                base_epochs=P.as_float(STAGE, "base_epochs", self.base_epochs, minimum=0, optional=True),
                resume=P.as_bool(STAGE, "resume", self.resume),
                data_dir=P.as_path(STAGE, "data_dir", self.data_dir),
                work_dir=P.as_path(STAGE, "work_dir", self.work_dir),
                seed=P.as_int(STAGE, "seed", self.seed, 0),
                progress=P.as_bool(STAGE, "progress", self.progress, flag=False),
                workers=P.as_int(STAGE, "workers", self.workers, 1, optional=True),
                executor=P.as_choice(STAGE, "executor", self.executor, ("local", "ray")),
                ray_address=P.as_path(STAGE, "ray_address", self.ray_address),
                device=P.as_choice(STAGE, "device", self.device, ("auto", "cpu", "cuda")),
                only_groups=P.as_names(STAGE, "only_groups", self.only_groups),
                holdout=None if self.holdout is None else (P.as_names(STAGE, "holdout", self.holdout) or ()))
        if self.ray_address is not None and self.executor != "ray":
            P.fail(STAGE, "ray_address", "used with --executor ray only", self.ray_address, True)


@dataclass(frozen=True)
class GroupResult:
    group: str
    dataset: str
    run_id: str
    status: str  # "built" or "skipped"
    n_networks: int
    best_accuracy: float
    min_accuracy: float
    seconds: float
    logreg_accuracy: float | None = None


@dataclass(frozen=True)
class ZooBuildRecord:
    profile: str
    tracking_uri: str
    experiment_id: str
    groups: tuple[GroupResult, ...] = ()
    holdout: tuple[str, ...] = ()   # the reported datasets this build kept out
    generalist: GroupResult | None = None  # the base supernet's subnets as a group (builds with a base)

    @property
    def n_networks(self) -> int:
        return sum(g.n_networks for g in self.groups) + (self.generalist.n_networks if self.generalist else 0)

    def to_dict(self) -> dict:
        return asdict(self) | {"n_networks": self.n_networks}


@dataclass(frozen=True)
class ZooListConfig:
    dataset: str | None = None      # only this dataset's (or group's) networks
    max_params: int | None = None   # only networks with at most this many parameters
    work_dir: str | None = None

    def __post_init__(self) -> None:
        P.store(self,
                dataset=None if self.dataset is None else P.as_names("zoo list", "dataset", self.dataset,
                                                                      optional=False)[0],
                max_params=P.as_int("zoo list", "max_params", self.max_params, 1, optional=True),
                work_dir=P.as_path("zoo list", "work_dir", self.work_dir))
