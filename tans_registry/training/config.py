"""What encoder training takes and gives (no torch here: the CLI reads these defaults).

:class:`EncoderTrainConfig` (holding the :class:`~tans_registry.encoders.config.EncoderConfig` to
train) -> :func:`~.stage.train_encoders` -> :class:`EncoderTrainRecord`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .. import params as P
from ..encoders.config import EncoderConfig

LOSSES = ("hinge", "infonce")
# The encoders' ablations (`tans encoders bench --variants`): overrides of the training or encoder config.
VARIANTS = {
    "default": {},
    "attention pooling": {"pooling": "attention"},
    "InfoNCE": {"loss": "infonce"},
    "with functional embedding": {"use_functional": True},
    "no predictor": {"use_predictor": False},
    "uniform positives (TANS)": {"positive_sharpness": 0.0},
    "no ranking term (MSE only)": {"rank_weight": 0.0},
    "predictor without topology": {"predictor_topology": False},
    "no dataset term (TANS retrieval)": {"dataset_weight": 0.0},
    "re-rank 2 groups": {"rerank_groups": 2},
    "re-rank the whole shortlist": {"rerank_groups": 0},
}

STAGE = "encoders train"


@dataclass(frozen=True)
class EncoderTrainConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # what is trained (and its retrieval policy)
    steps: int = 300
    lr: float = 1e-3                 # Adam (the reference's 1e-2 diverged in our runs' early checks)
    loss: str = "hinge"              # or "infonce"
    margin: float = 0.2              # TANS
    temperature: float = 0.1
    predictor_weight: float = 1.0    # TANS: 1:1
    rank_weight: float = 1.0         # pairwise ranking term of the predictor (0: MSE only)
    rank_pairs: int = 4              # random same-group pairs per group per step for the predictor
    positive_sharpness: float = 5.0  # positive sampling ~ exp(sharpness * accuracy); 0: uniform (TANS)
    val_datasets: tuple[str, ...] | None = None   # held out for meta-validation; None: a seeded fifth
    eval_every: int = 20
    patience: int = 5                # evaluations without improvement before stopping
    backbone_epochs: float = 2.0
    seed: int = 777                  # TANS's seed
    work_dir: str | None = None
    data_dir: str | None = None
    snapshot: str | None = None      # learn from a zoo snapshot file instead of the work dir's zoo
    register: bool = True
    promote: bool = False            # move the champion to this version whatever the current one scored
    progress: bool = True
    device: str = "auto"             # where the backbone trains (auto: CUDA when present); the encoders' own
                                     # small networks on cached features train on the CPU
    # The transfer predictor learns from these sources of the transfer table (`tans zoo transfer`'s "table",
    # `tans query`'s "query"; "bench", the reported datasets' records, only for an ablation); () for none.
    transfer_sources: tuple[str, ...] = ("table", "query")
    transfer_exclude: tuple[str, ...] = ()  # task datasets whose records are left out (ablations)

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, EncoderConfig):
            P.fail(STAGE, "encoder", "an EncoderConfig", self.encoder, flag=False)
        P.store(self,
                steps=P.as_int(STAGE, "steps", self.steps, 1),
                lr=P.as_float(STAGE, "lr", self.lr, above=0, flag=False),
                loss=P.as_choice(STAGE, "loss", self.loss, LOSSES),
                margin=P.as_float(STAGE, "margin", self.margin, minimum=0, flag=False),
                temperature=P.as_float(STAGE, "temperature", self.temperature, above=0, flag=False),
                predictor_weight=P.as_float(STAGE, "predictor_weight", self.predictor_weight, minimum=0, flag=False),
                rank_weight=P.as_float(STAGE, "rank_weight", self.rank_weight, minimum=0),
                rank_pairs=P.as_int(STAGE, "rank_pairs", self.rank_pairs, 1, flag=False),
                positive_sharpness=P.as_float(STAGE, "positive_sharpness", self.positive_sharpness, minimum=0,
                                              flag=False),
                val_datasets=P.as_names(STAGE, "val_datasets", self.val_datasets,
                                        flag="--val-datasets; tans encoders bench: --holdout"),
                eval_every=P.as_int(STAGE, "eval_every", self.eval_every, 1, flag=False),
                patience=P.as_int(STAGE, "patience", self.patience, 1, flag=False),
                backbone_epochs=P.as_float(STAGE, "backbone_epochs", self.backbone_epochs, above=0, flag=False),
                seed=P.as_int(STAGE, "seed", self.seed, 0),
                work_dir=P.as_path(STAGE, "work_dir", self.work_dir),
                data_dir=P.as_path(STAGE, "data_dir", self.data_dir),
                snapshot=P.as_path(STAGE, "snapshot", self.snapshot),
                register=P.as_bool(STAGE, "register", self.register, flag=False),
                promote=P.as_bool(STAGE, "promote", self.promote),
                progress=P.as_bool(STAGE, "progress", self.progress, flag=False),
                device=P.as_choice(STAGE, "device", self.device, ("auto", "cpu", "cuda")),
                transfer_sources=P.as_names(STAGE, "transfer_sources", self.transfer_sources) or (),
                transfer_exclude=P.as_names(STAGE, "transfer_exclude", self.transfer_exclude) or ())
        unknown = [s for s in self.transfer_sources if s not in ("table", "query", "bench")]
        if unknown:
            P.fail(STAGE, "transfer_sources", "among table, query, bench", ",".join(unknown))
        if self.snapshot and self.register:
            from ..errors import ConfigError

            raise ConfigError("encoders trained on a zoo snapshot are not registered (the index embeds the "
                              "registry's zoo); use `tans encoders bench --snapshot`")

    def with_overrides(self, **overrides) -> "EncoderTrainConfig":
        """A copy with ``overrides`` applied to this config or to its encoder config, by field name."""
        enc_fields = {f.name for f in fields(EncoderConfig)}
        enc = {k: v for k, v in overrides.items() if k in enc_fields}
        own = {k: v for k, v in overrides.items() if k not in enc_fields}
        return replace(self, encoder=replace(self.encoder, **enc), **own)

    def to_params(self) -> dict:
        """Flat parameters for the run (the encoder's fields beside the training's)."""
        d = {k: v for k, v in asdict(self).items()
             if k not in ("encoder", "work_dir", "data_dir", "progress", "promote")}
        d |= asdict(self.encoder)
        return {k: (",".join(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass(frozen=True)
class EncoderTrainRecord:
    run_id: str
    best: dict                  # validation report of the kept checkpoint (with its step)
    untrained: dict             # the same encoders untrained (same seed)
    pixel_heuristic: dict       # nearest dataset by pixel statistics
    size_heuristic: dict        # bigger is better (ranking only)
    val_datasets: tuple[str, ...]
    seconds: float
    encoders_version: int | None = None   # set when registered
    backbone_version: int | None = None
    champion: bool | None = None          # whether `tans-encoders@champion` moved to it
    previous_champion: int | None = None
    champion_comparable: bool | None = None  # whether the previous champion was scored the same way
    best_average: dict = field(default_factory=dict)  # the architecture best on average (ranking only)
    transfer: dict = field(default_factory=dict)  # the transfer predictor: its variant, why, records, figures

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AblationConfig:
    train: EncoderTrainConfig = field(default_factory=lambda: EncoderTrainConfig(register=False))
    variants: tuple[str, ...] | None = None    # of VARIANTS; None: all
    save_snapshot: str | None = None           # also write the zoo's snapshot file here

    def __post_init__(self) -> None:
        st = "encoders bench"
        if not isinstance(self.train, EncoderTrainConfig):
            P.fail(st, "train", "an EncoderTrainConfig", self.train, flag=False)
        names = P.as_names(st, "variants", self.variants)
        unknown = [n for n in names or () if n not in VARIANTS]
        if unknown:
            P.fail(st, "variants", "names among " + ", ".join(map(repr, VARIANTS)), ",".join(unknown))
        P.store(self, train=replace(self.train, register=False), variants=names,
                save_snapshot=P.as_path(st, "save_snapshot", self.save_snapshot))


@dataclass(frozen=True)
class AblationRecord:
    rows: dict                  # variant or baseline -> its validation report
    val_datasets: list
    prepare_seconds: float
    n_train_groups: int
    n_val_groups: int
    run_id: str                 # the table's run in tans/bench

    def to_dict(self) -> dict:
        return asdict(self)
