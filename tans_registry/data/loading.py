"""The data layer: every dataset the product touches becomes one :class:`ImageDataset`.

:func:`load_dataset` takes, in this order of resolution,

1. a path to a ``.npz`` archive in the shared format (keys ``x_train``, ``y_train``, ``x_test``,
   ``y_test``, ``classes``; optional ``source``, ``license``, ``meta``);
2. a path to an image folder, either ``<root>/<class>/<image>`` (split here, stratified and seeded)
   or ``<root>/train/<class>/...`` plus ``<root>/test/<class>/...``;
3. a dataset name, looked up as ``<data dir>/<name>.npz`` (see :func:`resolve_data_dir`).

Whatever comes in leaves as uint8 ``[N, S, S, 3]`` images with ``S = input_size`` (grayscale
repeated to three channels, other sizes resized with PIL bilinear) and int64 labels. Every input
the user can get wrong raises :class:`~tans_registry.errors.DataError` naming the problem and the
next step. Archives are always read with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tans_registry.data.readers import IMAGE_SUFFIXES, REQUIRED_KEYS, describe_archive, read_archive, read_folder, to_rgb
from tans_registry.data.sampling import stratified_split, stratified_subsample

__all__ = ["IMAGE_SUFFIXES", "REQUIRED_KEYS", "ImageDataset", "describe_dataset", "list_datasets", "load_dataset",
           "resolve_data_dir", "stratified_split", "stratified_subsample"]
from tans_registry import params as P
from tans_registry.errors import DataError

log = logging.getLogger("tans_registry")

DEFAULT_DATA_DIR: Path = Path(__file__).resolve().parent.parent / "demo_data"
ENV_DATA_DIR = "TANS_DATA_DIR"
_LIST_HINT = ("Run `tans data list` to see the datasets of the data directory, "
              "or pass a .npz archive or an image folder.")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """An image-classification dataset held in memory, ready for training.

    ``x_*`` are uint8 ``[N, S, S, 3]``, ``y_*`` int64 ``[N]`` with values ``0..n_classes-1``;
    ``classes[i]`` names label ``i``. ``parent`` is set on tasks made from another dataset and
    ``n_skipped`` counts corrupt image files skipped while loading a folder.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    source: str = ""
    parent: str | None = None
    n_skipped: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if (x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3
                    or x.shape[1] != x.shape[2]):
                raise DataError(f"dataset {self.name!r}: x_{split} must be uint8 [N, S, S, 3], "
                                f"got {x.dtype} {x.shape}. Build it with load_dataset().")
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise DataError(f"dataset {self.name!r}: y_{split} must be int64 [{len(x)}], got "
                                f"{y.dtype} {y.shape}. Build it with load_dataset().")
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                raise DataError(f"dataset {self.name!r}: y_{split} holds labels outside "
                                f"0..{len(self.classes) - 1}. Build it with load_dataset().")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"dataset {self.name!r}: train images {self.x_train.shape[1:]} and "
                            f"test images {self.x_test.shape[1:]} differ in size.")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> int:
        return int(self.x_train.shape[1])

    def fingerprint(self) -> str:
        """First 16 hex chars of a sha256 over the four arrays (shape and bytes) and the classes."""
        h = hashlib.sha256()
        for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(repr(tuple(arr.shape)).encode())
            h.update(np.ascontiguousarray(arr).data)
        h.update(json.dumps(list(self.classes), ensure_ascii=False).encode("utf-8"))
        return h.hexdigest()[:16]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$TANS_DATA_DIR``, else the demo data."""
    if data_dir is not None and str(data_dir) != "":
        path, how = Path(data_dir), "given as the data directory"
        fix = "Pass an existing directory of .npz archives."
    elif os.environ.get(ENV_DATA_DIR):
        path, how = Path(os.environ[ENV_DATA_DIR]), f"from ${ENV_DATA_DIR}"
        fix = f"Point ${ENV_DATA_DIR} at an existing directory of .npz archives, or unset it."
    else:
        path, how = DEFAULT_DATA_DIR, "the built-in demo data"
        fix = f"Reinstall the package, or set ${ENV_DATA_DIR} to a directory of .npz archives."
    path = path.expanduser()
    if not path.is_dir():
        raise DataError(f"data directory {path} ({how}) does not exist or is not a directory. {fix}")
    return path


def list_datasets(data_dir: str | Path | None = None) -> list[dict]:
    """Describe every ``*.npz`` archive of the data directory, sorted by name.

    Only the array headers of ``x_*`` are read, never the images. Archives that cannot be read
    are left out with a logged warning.
    """
    root = resolve_data_dir(data_dir)
    rows = []
    for path in sorted(root.glob("*.npz"), key=lambda p: p.stem):
        try:
            rows.append(describe_archive(path))
        except DataError as exc:
            log.warning("skipping %s in the dataset list: %s", path, exc)
    return rows


def load_dataset(spec: str | Path, data_dir: str | Path | None = None, input_size: int = 32,
                 seed: int = 0, test_fraction: float = 0.2, max_train: int | None = None,
                 max_test: int | None = None) -> ImageDataset:
    """Load ``spec`` (archive path, image folder, or dataset name) as an :class:`ImageDataset`.

    ``seed`` drives the train/test split of a folder without one (``test_fraction`` per class)
    and the stratified subsamples capping the splits at ``max_train`` / ``max_test`` images.
    """
    _check_args(input_size, seed, test_fraction, max_train, max_test)
    if str(spec).strip() == "":
        raise DataError(f"no dataset given (empty name). {_LIST_HINT}")
    path = Path(spec).expanduser()
    if path.is_dir():
        name, source = path.resolve().name, f"image folder {path}"
        xtr, ytr, xte, yte, classes, n_skipped = read_folder(path, input_size, seed, test_fraction)
    else:
        if not path.is_file():
            path = _find_named(str(spec), data_dir)
        name, n_skipped = path.stem, 0
        xtr, ytr, xte, yte, classes, source = read_archive(path)
    rng_train, rng_test = (np.random.default_rng([seed, stream]) for stream in (1, 2))
    if max_train is not None:
        keep = stratified_subsample(ytr, max_train, rng_train)
        xtr, ytr = xtr[keep], ytr[keep]
    if max_test is not None:
        keep = stratified_subsample(yte, max_test, rng_test)
        xte, yte = xte[keep], yte[keep]
    return ImageDataset(name=name, x_train=to_rgb(xtr, input_size), y_train=ytr.astype(np.int64),
                        x_test=to_rgb(xte, input_size), y_test=yte.astype(np.int64),
                        classes=classes, source=source, n_skipped=n_skipped)


def describe_dataset(spec: str | Path, data_dir: str | Path | None = None) -> dict:
    """What `tans data show` prints: a dataset loaded (name, archive or folder) and described."""
    ds = load_dataset(spec, data_dir=data_dir)
    return {"name": ds.name, "source": ds.source, "n_classes": ds.n_classes, "classes": list(ds.classes),
            "n_train": int(len(ds.x_train)), "n_test": int(len(ds.x_test)), "input_size": ds.input_size,
            "train_class_counts": np.bincount(ds.y_train, minlength=ds.n_classes).tolist(),
            "skipped_files": ds.n_skipped, "fingerprint": ds.fingerprint()}


def _find_named(spec: str, data_dir: str | Path | None) -> Path:
    name = spec[:-4] if spec.endswith(".npz") else spec
    try:
        root = resolve_data_dir(data_dir)
    except DataError as exc:
        raise DataError(f"dataset {spec!r} not found: no such path, and {exc}") from None
    candidate = root / f"{name}.npz"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in root.glob("*.npz"))
    if not names:
        known = f" The data directory {root} holds no .npz archives."
    elif len(names) <= 20:
        known = f" Available: {', '.join(names)}."
    else:
        known = f" The data directory holds {len(names)} datasets."
    raise DataError(f"dataset {spec!r} not found: no file {candidate} and no such path.{known} "
                    f"{_LIST_HINT}")


def _check_args(input_size, seed, test_fraction, max_train, max_test) -> None:
    """The loader's parameters, with the one template of :mod:`tans_registry.params`."""
    st = "load_dataset"
    P.as_int(st, "input_size", input_size, 1, flag=False)
    P.as_int(st, "seed", seed, 0)
    P.as_float(st, "test_fraction", test_fraction, above=0, flag=False)
    if test_fraction >= 1:
        P.fail(st, "test_fraction", "a number > 0 and < 1", test_fraction, flag=False)
    P.as_int(st, "max_train", max_train, 1, optional=True, flag=False)
    P.as_int(st, "max_test", max_test, 1, optional=True, flag=False)
