"""What the registry stage takes and gives: :class:`RegisterConfig` -> :func:`~.register.register_zoo`
-> :class:`RegisterRecord`. No torch here."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .. import params as P


@dataclass(frozen=True)
class RegisterConfig:
    work_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        P.store(self, work_dir=P.as_path("zoo register", "work_dir", self.work_dir),
                progress=P.as_bool("zoo register", "progress", self.progress, flag=False))


@dataclass(frozen=True)
class RegisterRecord:
    tracking_uri: str
    models: dict[str, int] = field(default_factory=dict)  # model name -> versions created now
    created: int = 0
    existing: int = 0
    superseded: int = 0   # versions of earlier builds marked superseded now

    def to_dict(self) -> dict:
        return asdict(self)
