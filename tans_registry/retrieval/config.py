"""What the retrieval stages take and give (no torch here: the CLI reads these defaults).

:class:`IndexConfig` -> :func:`~.indexing.build_index` -> :class:`IndexRecord`;
:class:`RankConfig` -> :func:`~.search.rank` -> :class:`RankRecord` (its :class:`Candidate` rows): the
ranking half of `tans query` (the fine-tuning stage extends it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .. import params as P

RERANK = ("predictor", "logme", "hybrid", "none")
# The hybrid policy: the learned ranking's (the predictor's, else retrieval's) first HYBRID_K networks, spanning
# at least HYBRID_MIN_GROUPS groups and holding the generalist's best-ranked network, re-ranked by the
# transferability score HYBRID_SCORE (one forward pass of each over the query's images). K and the group
# spread are the bounds the design set (K at most 25, 3 groups); the score was chosen on the selection datasets
# by scripts/choose_defaults.py's rule 2 (2026-12-07, mnist and pacs_sketch x 2 seeds, the bench zoo of b45366c):
# mean weighted tau against the fine-tuned accuracies NCE 0.441, LEEP 0.410, LogME 0.142 (docs/retrieval.md).
HYBRID_K = 25
HYBRID_MIN_GROUPS = 3
HYBRID_SCORE = "nce"
# The share of a query's training images kept for validation (fine-tuning's default; every start's batch
# norm is re-estimated on the rest, so LogME needs it too).
VAL_FRACTION = 0.2


@dataclass(frozen=True)
class IndexConfig:
    work_dir: str | None = None
    force: bool = False       # rebuild the cache even when it matches the registry
    progress: bool = True

    def __post_init__(self) -> None:
        P.store(self, work_dir=P.as_path("index build", "work_dir", self.work_dir),
                force=P.as_bool("index build", "force", self.force),
                progress=P.as_bool("index build", "progress", self.progress, flag=False))


@dataclass(frozen=True)
class IndexRecord:
    cache: str                # "hit" or "built"
    versions: int             # zoo versions indexed (current builds only)
    models: int               # zoo models in the registry
    seconds: float
    path: str                 # the cache file
    key: str                  # the registry state it was built from
    encoder_version: str      # whose embeddings it holds ("raw" before the encoders)
    embedded: dict = field(default_factory=dict)  # what re-embedding the zoo did

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RankConfig:
    data: str                                # dataset name, .npz archive, or image folder
    top_k: int = 5
    max_params: int | None = None            # None: no limit
    max_flops: int | None = None             # None: no limit
    max_latency_ms: float | None = None      # ONNX Runtime batch-1 latency on this machine; None: no limit
    exclude_datasets: tuple[str, ...] = ()   # e.g. the query's own source dataset, in a benchmark
    # "none": retrieval order; "predictor": the learned ranking re-orders the shortlist; "logme": LogME of the
    # shortlist's features; "hybrid": a learned shortlist across groups re-ranked by a transferability score.
    # The default was chosen on the selection datasets by scripts/choose_defaults.py's rule 1 (2026-12-07: mean
    # fine-tuned test accuracy none 0.7172, logme 0.7179, predictor 0.6935, hybrid 0.6503; none and logme tie
    # within 0.1 point and none takes 1 forward pass, logme 7; docs/retrieval.md)
    rerank: str = "none"
    shortlist: int | None = None             # retrieved networks re-ranked; None: the encoders' setting
    rerank_groups: int | None = None         # ... of the first N groups among them; None: the encoders' setting
    k_per_class: int | None = None           # images per class embedded; None: as the encoders were trained
    seed: int = 0
    work_dir: str | None = None
    data_dir: str | None = None
    log_run: bool = True
    device: str = "auto"                     # where LogME's forward passes run (auto: CUDA when present)

    def __post_init__(self) -> None:
        self._validate_rank("query")

    def _validate_rank(self, st: str) -> None:
        P.store(self,
                data=P.as_path(st, "data", self.data, optional=False, flag=False),
                top_k=P.as_int(st, "top_k", self.top_k, 1),
                max_params=P.as_int(st, "max_params", self.max_params, 1, optional=True),
                max_flops=P.as_int(st, "max_flops", self.max_flops, 1, optional=True),
                max_latency_ms=P.as_float(st, "max_latency_ms", self.max_latency_ms, above=0, optional=True),
                exclude_datasets=P.as_names(st, "exclude_datasets", self.exclude_datasets,
                                            flag="--exclude-dataset") or (),
                rerank=P.as_choice(st, "rerank", self.rerank, RERANK),
                shortlist=P.as_int(st, "shortlist", self.shortlist, 1, optional=True),
                rerank_groups=P.as_int(st, "rerank_groups", self.rerank_groups, 0, optional=True),
                k_per_class=P.as_int(st, "k_per_class", self.k_per_class, 1, optional=True),
                seed=P.as_int(st, "seed", self.seed, 0),
                work_dir=P.as_path(st, "work_dir", self.work_dir),
                data_dir=P.as_path(st, "data_dir", self.data_dir),
                log_run=P.as_bool(st, "log_run", self.log_run, flag=False),
                device=P.as_choice(st, "device", self.device, ("auto", "cpu", "cuda")))
        if self.rerank == "hybrid":  # its shortlist is its own (HYBRID_K across HYBRID_MIN_GROUPS groups)
            for name in ("shortlist", "rerank_groups"):
                if getattr(self, name) is not None:
                    P.fail(st, name, f"left out with --rerank hybrid (its shortlist is the learned ranking's first "
                           f"{HYBRID_K} across {HYBRID_MIN_GROUPS} groups or more)", getattr(self, name))
        if self.rerank == "none":  # nothing is re-ranked: a shortlist would be ignored
            for name in ("shortlist", "rerank_groups"):
                if getattr(self, name) is not None:
                    P.fail(st, name, "left out with --rerank none (nothing is re-ranked: the first --top-k of "
                           "retrieval's order are the answer); pass --rerank predictor or logme to re-rank a shortlist",
                           getattr(self, name))


@dataclass(frozen=True)
class Candidate:
    """One ranked starting point: a registered zoo version."""

    rank: int
    model: str                 # registered model (zoo.<group>)
    version: int
    group: str
    dataset: str
    accuracy: float            # measured on its source dataset
    n_params: int
    flops: int
    arch_hash: str
    arch: dict                 # the OFA kernel/expand/depth config
    latency_ms: float | None   # ONNX Runtime batch-1 latency on the index's machine
    score: float               # retrieval score
    model_uri: str             # models:/zoo.<group>/<version>
    predicted_accuracy: float | None = None   # set when the predictor re-ranked it
    logme: float | None = None                # set when LogME re-ranked it
    transfer_score: float | None = None       # set when the hybrid policy or the transfer predictor re-ranked it
    #                                           (RankRecord.score_kind: logme, leep, nce; "transfer": the predictor's
    #                                           ranking score, not an accuracy)


@dataclass(frozen=True)
class RankRecord:
    dataset: dict              # name, fingerprint, classes, train_images, skipped_images
    encoder_version: str
    index_key: str
    zoo_networks: int
    constraints: dict
    rerank: str
    shortlist: int
    rerank_groups: int
    k_per_class: int
    candidates: tuple[Candidate, ...]
    seconds: dict              # load, embed, search, rerank
    run_id: str | None = None  # the query's run in tans/queries
    rerank_forward_passes: int = 0   # LogME: networks run over the dataset's images
    score_kind: str | None = None    # the hybrid policy's score (logme, leep, nce), "transfer" (the transfer predictor)

    def to_dict(self) -> dict:
        return asdict(self)
