"""Reading what users bring: ``.npz`` archives in the shared format and image folders.

Archives are always read with ``allow_pickle=False``; every problem raises
:class:`~tans_registry.errors.DataError` naming the file and the fix.
"""
from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tans_registry.data.sampling import stratified_split
from tans_registry.errors import DataError

log = logging.getLogger("tans_registry")

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")
#: Suffixes of every image format this PIL build can open (save-only formats such as PDF excluded).
IMAGE_SUFFIXES = frozenset(
    ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)
_LAYOUT_HINT = ("Put each class's images in its own sub-folder (<folder>/<class>/<image>.png), "
                "or use train/ and test/ each holding one sub-folder per class.")


# ----------------------------------------------------------------------------- archives

def open_archive(path: Path) -> zipfile.ZipFile:
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


def describe_archive(path: Path) -> dict:
    with open_archive(path) as zf:
        x_shape, _ = _read_member(zf, "x_train", path, header_only=True)
        n_test = _read_member(zf, "x_test", path, header_only=True)[0]
        classes = _read_member(zf, "classes", path)
        return {"name": path.stem, "path": str(path), "n_classes": int(np.size(classes)),
                "n_train": int(x_shape[0]) if x_shape else 0,
                "n_test": int(n_test[0]) if n_test else 0,
                "channels": int(x_shape[3]) if len(x_shape) == 4 else None,
                "license": _text(zf, "license", path), "source": _text(zf, "source", path)}


def read_archive(path: Path):
    """Native-resolution arrays of an archive, validated: (x_tr, y_tr, x_te, y_te, classes, src)."""
    with open_archive(path) as zf:
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
    if len(arr["x_train"]) < 2:
        raise DataError(f"archive {path} has {len(arr['x_train'])} training image; training needs at least 2 "
                        f"(one per class at the very least). {fix}")
    empty = np.flatnonzero(np.bincount(arr["y_train"].astype(np.int64), minlength=len(classes)) == 0)
    if empty.size:
        names = ", ".join(repr(classes[i]) for i in empty[:5]) + (" ..." if empty.size > 5 else "")
        raise DataError(f"archive {path}: {empty.size} class(es) have no training image ({names}); every class "
                        f"needs at least one. Add images of them to x_train/y_train, or drop them from 'classes'.")
    source = "; ".join(s for s in (str(path), source, f"licence: {licence}" if licence else "") if s)
    return (arr["x_train"], arr["y_train"].astype(np.int64), arr["x_test"],
            arr["y_test"].astype(np.int64), classes, source)


def as_images(model_input, size: int) -> np.ndarray:
    """What a pyfunc model was given (an array, a dict holding one, a DataFrame of flattened images),
    as uint8 ``[N, size, size, 3]``: grayscale repeated, floats in [0, 1] scaled, other sizes resized."""
    x = model_input
    if isinstance(x, dict):  # a named tensor input
        x = next(iter(x.values()))
    if hasattr(x, "to_numpy"):  # a pandas DataFrame of flattened images
        x = x.to_numpy()
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] in (size * size, size * size * 3):
        x = x.reshape(len(x), size, size, -1)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3) or x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"expected images [N, {size}, {size}, 3] (or 1 channel); got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(x * 255.0 if x.size and x.max() <= 1.0 else x, 0, 255).astype(np.uint8)
    return to_rgb(x, size)


def to_rgb(x: np.ndarray, size: int) -> np.ndarray:
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


def read_folder(root: Path, size: int, seed: int, test_fraction: float):
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
                images.append(read_image(f, size))
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


def read_image(path: Path, size: int) -> np.ndarray:
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
