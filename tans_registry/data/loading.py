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
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import tans_registry
from tans_registry.errors import DataError

log = logging.getLogger("tans_registry")

DEFAULT_DATA_DIR: Path = Path(tans_registry.__file__).parent / "demo_data"
ENV_DATA_DIR = "TANS_DATA_DIR"
REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")
#: Suffixes of every image format this PIL build can open (save-only formats such as PDF excluded).
IMAGE_SUFFIXES = frozenset(
    ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)
_LIST_HINT = ("Run `tans data list` to see the datasets of the data directory, "
              "or pass a .npz archive or an image folder.")
_LAYOUT_HINT = ("Put each class's images in its own sub-folder (<folder>/<class>/<image>.png), "
                "or use train/ and test/ each holding one sub-folder per class.")


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
            rows.append(_describe_archive(path))
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
        xtr, ytr, xte, yte, classes, n_skipped = _read_folder(path, input_size, seed, test_fraction)
    else:
        if not path.is_file():
            path = _find_named(str(spec), data_dir)
        name, n_skipped = path.stem, 0
        xtr, ytr, xte, yte, classes, source = _read_archive(path)
    rng_train, rng_test = (np.random.default_rng([seed, stream]) for stream in (1, 2))
    if max_train is not None:
        keep = stratified_subsample(ytr, max_train, rng_train)
        xtr, ytr = xtr[keep], ytr[keep]
    if max_test is not None:
        keep = stratified_subsample(yte, max_test, rng_test)
        xte, yte = xte[keep], yte[keep]
    return ImageDataset(name=name, x_train=_to_rgb(xtr, input_size), y_train=ytr.astype(np.int64),
                        x_test=_to_rgb(xte, input_size), y_test=yte.astype(np.int64),
                        classes=classes, source=source, n_skipped=n_skipped)


# ----------------------------------------------------------------------------- sampling helpers

def stratified_split(y: np.ndarray, test_fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class: ``round(n_c * test_fraction)`` go to test, at least one to each
    side for classes of two or more images (a class of one image stays in train). Sorted."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(np.floor(len(idx) * test_fraction + 0.5))
        n_test = min(max(n_test, 1), len(idx) - 1) if len(idx) >= 2 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_subsample(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items of ``y`` (all if ``n >= len(y)``), kept per class in
    proportion to the class counts (largest remainder) with every class keeping at least one
    item when ``n`` is at least the number of classes; otherwise ``n`` random classes keep one."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    labels, counts = np.unique(y, return_counts=True)
    if n < len(labels):
        chosen = rng.choice(len(labels), size=n, replace=False)
        quota = np.zeros(len(labels), dtype=np.int64)
        quota[chosen] = 1
    else:  # largest remainder in exact integer arithmetic, then lift empty classes to one
        share = counts * n
        quota = share // len(y)
        order = sorted(range(len(labels)), key=lambda i: (-(share[i] % len(y)), i))
        for i in order[: n - int(quota.sum())]:
            quota[i] += 1
        for i in np.flatnonzero(quota == 0):
            quota[int(np.argmax(quota))] -= 1  # the biggest share pays, so the sum stays n
            quota[i] = 1
    keep = [rng.choice(np.flatnonzero(y == c), size=q, replace=False)
            for c, q in zip(labels, quota) if q > 0]
    return np.sort(np.concatenate(keep))


# ----------------------------------------------------------------------------- archives

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


def _open_archive(path: Path) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a readable .npz archive (not a zip file). Pass an archive "
                        f"written by numpy.savez_compressed with keys {', '.join(REQUIRED_KEYS)}, "
                        f"or an image folder.")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz archive ({exc}). Re-create it with "
                        f"numpy.savez_compressed, or pass an image folder.") from None
    present = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    missing = [k for k in REQUIRED_KEYS if k not in present]
    if missing:
        zf.close()
        raise DataError(f"archive {path} lacks the key(s) {', '.join(missing)}; it has "
                        f"{', '.join(sorted(present)) or 'none'}. Expected {', '.join(REQUIRED_KEYS)} "
                        f"(plus optional source, license, meta); re-create it in that format.")
    return zf


def _read_member(zf: zipfile.ZipFile, key: str, path: Path, header_only: bool = False):
    """One array of the archive (or its ``(shape, dtype)`` when ``header_only``)."""
    try:
        with zf.open(key + ".npy") as f:
            if not header_only:
                return np.lib.format.read_array(f, allow_pickle=False)
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
            return shape, dtype
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"archive {path} is unreadable or corrupt: its array {key!r} cannot be read "
                        f"({type(exc).__name__}: {exc}). Re-create the archive with "
                        f"numpy.savez_compressed (no object arrays).") from None


def _text(zf: zipfile.ZipFile, key: str, path: Path) -> str:
    if key + ".npy" not in zf.namelist():
        return ""
    return str(_read_member(zf, key, path)).strip()


def _describe_archive(path: Path) -> dict:
    with _open_archive(path) as zf:
        x_shape, _ = _read_member(zf, "x_train", path, header_only=True)
        n_test = _read_member(zf, "x_test", path, header_only=True)[0]
        classes = _read_member(zf, "classes", path)
        return {"name": path.stem, "path": str(path), "n_classes": int(np.size(classes)),
                "n_train": int(x_shape[0]) if x_shape else 0,
                "n_test": int(n_test[0]) if n_test else 0,
                "channels": int(x_shape[3]) if len(x_shape) == 4 else None,
                "license": _text(zf, "license", path), "source": _text(zf, "source", path)}


def _read_archive(path: Path):
    """Native-resolution arrays of an archive, validated: (x_tr, y_tr, x_te, y_te, classes, src)."""
    with _open_archive(path) as zf:
        arr = {k: _read_member(zf, k, path) for k in REQUIRED_KEYS}
        source, licence = _text(zf, "source", path), _text(zf, "license", path)
    fix = "Re-create the archive in the shared format (see the data README)."
    for split in ("train", "test"):
        x, y = arr[f"x_{split}"], arr[f"y_{split}"]
        if x.ndim != 4 or x.shape[3] not in (1, 3):
            raise DataError(f"archive {path}: x_{split} has shape {x.shape}, expected 4-D "
                            f"[N, H, W, C] with C = 1 or 3. {fix}")
        if x.dtype != np.uint8:
            raise DataError(f"archive {path}: x_{split} has dtype {x.dtype}, expected uint8 "
                            f"(0..255). Convert the images to uint8. {fix}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"archive {path}: y_{split} has dtype {y.dtype} and shape {y.shape}, "
                            f"expected 1-D integer labels. {fix}")
        if len(y) != len(x):
            raise DataError(f"archive {path}: y_{split} has {len(y)} labels but x_{split} has "
                            f"{len(x)} images; the lengths must match. {fix}")
    classes = tuple(str(c) for c in np.atleast_1d(arr["classes"]).ravel())
    if len(classes) < 2:
        raise DataError(f"archive {path} has {len(classes)} class(es); a classification dataset "
                        f"needs at least 2. Add classes or pick another dataset.")
    if len(arr["x_train"]) == 0:
        raise DataError(f"archive {path} has no training images. {fix}")
    for split in ("train", "test"):
        y = arr[f"y_{split}"]
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"archive {path}: y_{split} holds labels outside 0..{len(classes) - 1} "
                            f"(there are {len(classes)} classes). {fix}")
    source = "; ".join(s for s in (str(path), source, f"licence: {licence}" if licence else "") if s)
    return (arr["x_train"], arr["y_train"].astype(np.int64), arr["x_test"],
            arr["y_test"].astype(np.int64), classes, source)


def _to_rgb(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, C] (C = 1 or 3) -> uint8 [N, size, size, 3], resizing with PIL bilinear."""
    if x.shape[1:3] != (size, size):
        out = np.empty((len(x), size, size, x.shape[3]), dtype=np.uint8)
        for i, img in enumerate(x):
            im = Image.fromarray(img[..., 0], "L") if x.shape[3] == 1 else Image.fromarray(img, "RGB")
            out[i] = np.asarray(im.resize((size, size), Image.BILINEAR)).reshape(size, size, -1)
        x = out
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else np.ascontiguousarray(x)


# ----------------------------------------------------------------------------- image folders

def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "__")))


def _read_folder(root: Path, size: int, seed: int, test_fraction: float):
    """Decode an image folder: (x_tr, y_tr, x_te, y_te, classes, n_skipped)."""
    bad: list[tuple[Path, str]] = []
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = _class_dirs(root / "train")
        test_classes = _class_dirs(root / "test")
        if classes != test_classes:
            only_tr = sorted(set(classes) - set(test_classes))
            only_te = sorted(set(test_classes) - set(classes))
            raise DataError(f"image folder {root}: train/ and test/ hold different classes "
                            f"(only in train: {only_tr or 'none'}; only in test: "
                            f"{only_te or 'none'}). Give both the same class sub-folders.")
        _check_class_count(root / "train", classes)
        xtr, ytr = _read_split(root / "train", classes, size, bad)
        xte, yte = _read_split(root / "test", classes, size, bad)
    else:
        classes = _class_dirs(root)
        _check_class_count(root, classes)
        x, y = _read_split(root, classes, size, bad)
        tr, te = stratified_split(y, test_fraction, np.random.default_rng([seed, 0]))
        if len(te) == 0:
            raise DataError(f"image folder {root} has too few images for a test split (one per "
                            f"class). Add at least 2 images per class, or use train/ and test/.")
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    if bad:
        log.warning("skipped %d unreadable image file(s) under %s, e.g. %s (%s)",
                    len(bad), root, bad[0][0], bad[0][1])
    return xtr, ytr, xte, yte, tuple(classes), len(bad)


def _check_class_count(folder: Path, classes: list[str]) -> None:
    if len(classes) >= 2:
        return
    loose = sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    found = f" and {loose} image file(s) directly inside it" if loose else ""
    raise DataError(f"image folder {folder} has {len(classes)} class sub-folder(s) "
                    f"{classes}{found}; need at least 2 classes. {_LAYOUT_HINT}")


def _read_split(folder: Path, classes: list[str], size: int, bad: list):
    """Decode every image under ``folder/<class>/`` (recursively, sorted); corrupt files go to
    ``bad``. Raises when a class has no readable image."""
    images, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (folder / cls).rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                       and p.is_file())
        n_ok = 0
        for f in files:
            try:
                images.append(_read_image(f, size))
            except Exception as exc:  # PIL raises many types on corrupt data  # noqa: BLE001
                bad.append((f, f"{type(exc).__name__}: {exc}"))
                continue
            labels.append(label)
            n_ok += 1
        if n_ok == 0:
            why = (f" ({len(files)} file(s) there could not be read as images, e.g. {files[0].name})"
                   if files else "")
            raise DataError(f"class {cls!r} has no images in {folder / cls}{why}. Add readable "
                            f"image files (png, jpg, bmp, gif, ...) to it, or remove the folder.")
    x = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return x, np.asarray(labels, dtype=np.int64)


def _read_image(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 [size, size, 3]: EXIF orientation applied, any mode to RGB."""
    with Image.open(path) as im:
        im.draft(None, (size, size))  # JPEG only: decode at a reduced scale, still >= size
        im.load()
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):  # high bit depth: stretch to 0..255
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(np.round(a).astype(np.uint8), "L")
    if im.mode == "PA" or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _is_int(value, minimum: int) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, np.integer))
            and value >= minimum)


def _check_args(input_size, seed, test_fraction, max_train, max_test) -> None:
    if not _is_int(input_size, 1):
        raise DataError(f"input_size must be a positive integer, got {input_size!r}.")
    if not _is_int(seed, 0):
        raise DataError(f"seed must be a non-negative integer, got {seed!r}.")
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}.")
    for key, val in (("max_train", max_train), ("max_test", max_test)):
        if val is not None and not _is_int(val, 1):
            raise DataError(f"{key} must be a positive integer or None, got {val!r}.")
