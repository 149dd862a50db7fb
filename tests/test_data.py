"""Tests of the data layer (tans_registry.data): loading, demo data, tasks and groups."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tans_registry.data import (
    DEFAULT_DATA_DIR,
    ImageDataset,
    class_subset_tasks,
    list_datasets,
    load_dataset,
    make_groups,
    resolve_data_dir,
    stratified_subsample,
)
from tans_registry.errors import DataError

DEMO = {  # name: (n_classes, n_train, n_test, channels)
    "bccd_cells": (3, 1200, 400, 3),
    "chinese_mnist": (15, 1200, 400, 1),
    "mnist": (10, 1200, 400, 1),
    "omniglot": (40, 600, 200, 1),
    "pneumoniamnist": (2, 1200, 400, 1),
    "sign_language_digits": (10, 1200, 400, 3),
}


# ----------------------------------------------------------------------------- helpers

def write_archive(path: Path, n_classes: int = 3, n_train: int = 4, n_test: int = 2,
                  size: int = 32, channels: int = 1, **override) -> Path:
    """A tiny archive in the shared format; ``override`` replaces or drops (None) keys."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_classes * n_train, size, size, channels), np.uint8),
        "y_train": np.repeat(np.arange(n_classes), n_train).astype(np.int64),
        "x_test": rng.integers(0, 256, (n_classes * n_test, size, size, channels), np.uint8),
        "y_test": np.repeat(np.arange(n_classes), n_test).astype(np.int64),
        "classes": np.array([f"c{i}" for i in range(n_classes)]),
        "source": np.array("made in a test"), "license": np.array("CC0"),
        "meta": np.array("{}"),
    }
    arrays.update(override)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def write_images(folder: Path, n: int, size=(40, 28), start: int = 0, fmt: str = "png",
                 mode: str = "RGB") -> None:
    """``n`` distinct images of ``size`` (w, h) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
        Image.fromarray(arr, "RGB").convert(mode).save(folder / f"img{i:03d}.{fmt}")


def make_folder(root: Path, classes=("cat", "dog", "eel"), n: int = 5, **kw) -> Path:
    for c in classes:
        write_images(root / c, n, **kw)
    return root


def synthetic(n_classes: int, n_train: int = 6, n_test: int = 2, name: str = "syn") -> ImageDataset:
    """Pixel (0, 0) holds the label (channel 0) and the image index (channels 1-2)."""
    def split(per: int, offset: int):
        y = np.repeat(np.arange(n_classes), per).astype(np.int64)
        x = np.zeros((len(y), 8, 8, 3), np.uint8)
        idx = np.arange(len(y)) + offset
        x[:, 0, 0, 0], x[:, 0, 0, 1], x[:, 0, 0, 2] = y, idx // 256, idx % 256
        return x, y
    xtr, ytr = split(n_train, 0)
    xte, yte = split(n_test, 10_000)
    return ImageDataset(name, xtr, ytr, xte, yte, tuple(f"k{i}" for i in range(n_classes)))


def image_ids(x: np.ndarray) -> set[int]:
    return set((x[:, 0, 0, 1].astype(int) * 256 + x[:, 0, 0, 2]).tolist())


def raises(fragments: list[str], fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    for frag in fragments:
        assert frag in str(info.value), f"{frag!r} not in {info.value}"
    return info.value


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("TANS_DATA_DIR", raising=False)


# ----------------------------------------------------------------------------- demo data

def test_list_datasets_demo_dir():
    rows = list_datasets()
    assert [r["name"] for r in rows] == sorted(DEMO)
    for r in rows:
        assert (r["n_classes"], r["n_train"], r["n_test"], r["channels"]) == DEMO[r["name"]]
        assert r["license"] and r["source"] and Path(r["path"]).is_file()


def test_load_demo_by_name_and_by_path():
    ds = load_dataset("mnist")
    assert ds.name == "mnist" and ds.parent is None and ds.n_skipped == 0
    assert ds.x_train.shape == (1200, 32, 32, 3) and ds.x_test.shape == (400, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.classes == tuple(str(i) for i in range(10)) and ds.n_classes == 10
    assert ds.input_size == 32 and "MIT" in ds.source
    assert (ds.x_train[..., 0] == ds.x_train[..., 2]).all()  # gray repeated to RGB
    assert set(np.unique(ds.y_train)) == set(range(10))
    by_path = load_dataset(DEFAULT_DATA_DIR / "mnist.npz")
    assert by_path.fingerprint() == ds.fingerprint()
    assert load_dataset(str(DEFAULT_DATA_DIR / "mnist.npz")).name == "mnist"


def test_npz_resized_and_capped():
    ds = load_dataset("sign_language_digits", input_size=48, max_train=50, max_test=20, seed=3)
    assert ds.x_train.shape == (50, 48, 48, 3) and ds.x_test.shape == (20, 48, 48, 3)
    assert len(np.unique(ds.y_train)) == 10 and len(np.unique(ds.y_test)) == 10
    again = load_dataset("sign_language_digits", input_size=48, max_train=50, max_test=20, seed=3)
    assert again.fingerprint() == ds.fingerprint()


def test_stratified_subsample_keeps_proportions_and_classes():
    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    keep = stratified_subsample(y, 20, np.random.default_rng(0))
    assert len(keep) == 20 and len(set(keep)) == 20 and (np.diff(keep) > 0).all()
    assert np.bincount(y[keep]).tolist() == [16, 3, 1]
    keep = stratified_subsample(y, 2, np.random.default_rng(0))
    assert len(set(y[keep])) == 2
    assert len(stratified_subsample(y, 500, np.random.default_rng(0))) == 100


# ----------------------------------------------------------------------------- archives & folders

def test_npz_single_channel_other_size(tmp_path):
    path = write_archive(tmp_path / "tiny.npz", size=28, channels=1)
    ds = load_dataset(path)
    assert ds.name == "tiny" and ds.x_train.shape == (12, 32, 32, 3)
    assert (ds.x_train[..., 0] == ds.x_train[..., 1]).all()
    assert ds.classes == ("c0", "c1", "c2") and "CC0" in ds.source
    rgb = load_dataset(write_archive(tmp_path / "rgb.npz", channels=3))
    raw = np.load(tmp_path / "rgb.npz", allow_pickle=False)["x_train"]
    assert np.array_equal(rgb.x_train, raw)  # right size and RGB: untouched


def test_folder_without_split_is_stratified_and_seeded(tmp_path):
    root = make_folder(tmp_path / "pets", n=8)
    ds = load_dataset(root)
    assert ds.name == "pets" and ds.classes == ("cat", "dog", "eel")
    assert ds.x_train.shape == (18, 32, 32, 3) and ds.x_test.shape == (6, 32, 32, 3)
    assert np.bincount(ds.y_train).tolist() == [6, 6, 6]
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2]
    assert load_dataset(root).fingerprint() == ds.fingerprint()
    other = load_dataset(root, seed=1)
    assert other.fingerprint() != ds.fingerprint()
    half = load_dataset(root, test_fraction=0.5)
    assert np.bincount(half.y_test).tolist() == [4, 4, 4]
    assert load_dataset(root, input_size=16).x_train.shape == (18, 16, 16, 3)


def test_folder_with_train_test_split(tmp_path):
    make_folder(tmp_path / "d" / "train", classes=("b", "a"), n=4)
    make_folder(tmp_path / "d" / "test", classes=("b", "a"), n=2, start=50)
    ds = load_dataset(tmp_path / "d")
    assert ds.classes == ("a", "b") and ds.name == "d"
    assert np.bincount(ds.y_train).tolist() == [4, 4]
    assert np.bincount(ds.y_test).tolist() == [2, 2]


def test_folder_image_formats_and_modes(tmp_path):
    root = tmp_path / "mixed"
    for i, (fmt, mode) in enumerate([("png", "L"), ("png", "RGBA"), ("png", "LA"), ("gif", "P"),
                                     ("bmp", "RGB"), ("jpg", "RGB"), ("jpg", "L"),
                                     ("png", "1"), ("tif", "CMYK")]):
        write_images(root / "a", 1, start=i, fmt=fmt, mode=mode, size=(50, 70))
        write_images(root / "b", 1, start=100 + i, fmt=fmt, mode=mode, size=(20, 20))
    deep = np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50
    (root / "b" / "sub").mkdir()
    Image.fromarray(deep).save(root / "b" / "sub" / "deep16.png")  # 16-bit, nested
    (root / "a" / "notes.txt").write_text("not an image, ignored")
    ds = load_dataset(root, test_fraction=0.25)
    assert len(ds.y_train) + len(ds.y_test) == 19 and ds.n_skipped == 0
    assert ds.x_train.shape[1:] == (32, 32, 3)
    assert ds.x_train.std() > 0


def test_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    root = make_folder(tmp_path / "f", classes=("x", "y"), n=5)
    (root / "x" / "broken.png").write_bytes(b"definitely not a png")
    good = (root / "y" / "img000.png").read_bytes()
    (root / "y" / "truncated.png").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="tans_registry"):
        ds = load_dataset(root)
    assert ds.n_skipped == 2 and len(ds.y_train) + len(ds.y_test) == 10
    assert "skipped 2" in caplog.text and "broken.png" in caplog.text


def test_env_var_and_explicit_data_dir(tmp_path, monkeypatch):
    write_archive(tmp_path / "foo.npz")
    monkeypatch.setenv("TANS_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert load_dataset("foo").name == "foo"
    assert [r["name"] for r in list_datasets()] == ["foo"]
    assert load_dataset("mnist", data_dir=DEFAULT_DATA_DIR).n_classes == 10  # arg beats env
    raises(["'mnist' not found", "Available: foo", "tans data list"], load_dataset, "mnist")
    monkeypatch.setenv("TANS_DATA_DIR", str(tmp_path / "nope"))
    raises(["does not exist", "$TANS_DATA_DIR"], resolve_data_dir)
    raises(["'foo' not found", "TANS_DATA_DIR"], load_dataset, "foo")


def test_fingerprint_stable_and_sensitive():
    ds = synthetic(4)
    fp = ds.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0 and synthetic(4).fingerprint() == fp
    x = ds.x_train.copy()
    x[3, 5, 5, 1] ^= 1
    assert ImageDataset("syn", x, ds.y_train, ds.x_test, ds.y_test, ds.classes).fingerprint() != fp
    renamed = ImageDataset("syn", ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                           ("k0", "k1", "k2", "other"))
    assert renamed.fingerprint() != fp
    assert ImageDataset("other-name", ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                        ds.classes).fingerprint() == fp  # content only


# ----------------------------------------------------------------------------- bad input

def test_unknown_name_and_missing_path(tmp_path):
    raises(["dataset 'nosuch' not found", "nosuch.npz", "Available:", "mnist", "tans data list"],
           load_dataset, "nosuch")
    raises(["not found", "no such path"], load_dataset, tmp_path / "missing.npz")
    raises(["empty"], load_dataset, "")


def test_unreadable_archives(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is no zip file at all")
    raises(["not a readable .npz archive", "not a zip"], load_dataset, tmp_path / "junk.npz")
    whole = write_archive(tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    raises(["not a readable .npz archive"], load_dataset, tmp_path / "cut.npz")
    plain = tmp_path / "plain.npz"
    np.savez(plain, x_train=np.zeros((2, 32, 32, 1), np.uint8), y_train=np.array([0, 1]),
             x_test=np.zeros((2, 32, 32, 1), np.uint8), y_test=np.array([0, 1]),
             classes=np.array(["a", "b"]))
    data = bytearray(plain.read_bytes())
    data[200:400] = b"\xff" * 200  # inside x_train's data: CRC check fails
    plain.write_bytes(bytes(data))
    raises(["corrupt", "x_train", "savez_compressed"], load_dataset, plain)


def test_archive_missing_keys_and_bad_arrays(tmp_path):
    path = write_archive(tmp_path / "a.npz", x_test=None, classes=None)
    raises(["lacks the key(s) x_test, classes", "Expected x_train, y_train, x_test, y_test, classes"],
           load_dataset, path)
    path = write_archive(tmp_path / "b.npz", x_train=np.zeros((12, 32, 32), np.uint8))
    raises(["x_train has shape (12, 32, 32)", "4-D"], load_dataset, path)
    path = write_archive(tmp_path / "c.npz", y_test=np.zeros(5, np.int64))
    raises(["y_test has 5 labels but x_test has 6 images"], load_dataset, path)
    path = write_archive(tmp_path / "d.npz", x_train=np.zeros((12, 32, 32, 1), np.float32))
    raises(["dtype float32", "uint8"], load_dataset, path)
    path = write_archive(tmp_path / "e.npz", y_train=np.full(12, 7, np.int64))
    raises(["labels outside 0..2"], load_dataset, path)
    path = write_archive(tmp_path / "f.npz", n_classes=1, classes=np.array(["only"]))
    raises(["1 class(es)", "at least 2"], load_dataset, path)
    path = tmp_path / "g.npz"  # object arrays would need pickle: refused, never unpickled
    np.savez(path, x_train=np.zeros((2, 32, 32, 1), np.uint8), y_train=np.array([0, 1]),
             x_test=np.zeros((2, 32, 32, 1), np.uint8), y_test=np.array([0, 1]),
             classes=np.array(["a", {"b": 1}], dtype=object))
    raises(["cannot be read", "classes"], load_dataset, path)


def test_bad_folders(tmp_path):
    one = make_folder(tmp_path / "one", classes=("solo",), n=3)
    raises(["1 class sub-folder(s)", "at least 2 classes", "sub-folder"], load_dataset, one)
    flat = tmp_path / "flat"
    write_images(flat, 4)
    raises(["0 class sub-folder(s)", "4 image file(s) directly inside"], load_dataset, flat)
    empty = make_folder(tmp_path / "empty", classes=("a", "b"), n=3)
    (empty / "c").mkdir()
    raises(["class 'c' has no images", "Add readable image files"], load_dataset, empty)
    rotten = make_folder(tmp_path / "rotten", classes=("a", "b"), n=3)
    (rotten / "c").mkdir()
    (rotten / "c" / "x.jpg").write_bytes(b"garbage")
    raises(["class 'c' has no images", "1 file(s) there could not be read"], load_dataset, rotten)
    make_folder(tmp_path / "mis" / "train", classes=("a", "b", "c"), n=2)
    make_folder(tmp_path / "mis" / "test", classes=("a", "b", "d"), n=2)
    raises(["different classes", "only in train: ['c']", "only in test: ['d']"],
           load_dataset, tmp_path / "mis")
    single = make_folder(tmp_path / "single", classes=("a", "b"), n=1)
    raises(["too few images for a test split"], load_dataset, single)


def test_bad_arguments():
    from tans_registry.errors import ParamError

    for kwargs, fragment in (({"input_size": 0}, "'input_size' parameter of load_dataset must be an int >= 1"),
                             ({"test_fraction": 1.5}, "'test_fraction'"), ({"max_train": 0}, "'max_train'"),
                             ({"seed": -1}, "'seed' parameter of load_dataset (--seed) must be an int >= 0")):
        with pytest.raises(ParamError, match=re.escape(fragment)):
            load_dataset("mnist", **kwargs)


# ----------------------------------------------------------------------------- tasks & groups

def test_class_subset_tasks_structure_and_labels():
    ds = synthetic(10)
    tasks = class_subset_tasks(ds, 4, seed=0)
    assert [t.name for t in tasks] == [f"syn-t{i}" for i in range(4)]
    sets = [frozenset(t.classes) for t in tasks]
    assert len(set(sets)) == 4 and all(len(s) == 5 for s in sets)
    assert set().union(*sets) == set(ds.classes)
    for t in tasks:
        assert t.parent == "syn" and t.n_classes == 5
        assert list(t.classes) == sorted(t.classes, key=ds.classes.index)  # original order
        assert np.array_equal(np.unique(t.y_train), np.arange(5))
        for x, y in ((t.x_train, t.y_train), (t.x_test, t.y_test)):
            original = [ds.classes[v] for v in x[:, 0, 0, 0]]
            assert [t.classes[v] for v in y] == original  # remapped label -> right class
        assert len(t.y_train) == 5 * 6 and len(t.y_test) == 5 * 2  # all images of its classes


def test_class_subset_tasks_deterministic_and_seeded():
    ds = synthetic(10)
    a = [t.classes for t in class_subset_tasks(ds, 6, seed=1)]
    assert a == [t.classes for t in class_subset_tasks(ds, 6, seed=1)]
    assert a[:3] == [t.classes for t in class_subset_tasks(ds, 3, seed=1)]  # stable prefix
    assert a != [t.classes for t in class_subset_tasks(ds, 6, seed=2)]
    ts = class_subset_tasks(ds, 3, seed=1)
    assert [t.fingerprint() for t in ts] == [t.fingerprint() for t in
                                             class_subset_tasks(ds, 3, seed=1)]


def test_class_subset_tasks_sizes_and_exhaustion():
    ds = synthetic(4)
    six = class_subset_tasks(ds, 6)
    assert len({t.classes for t in six}) == 6 and all(t.n_classes == 2 for t in six)
    ten = class_subset_tasks(ds, 10)  # all 2-subsets, then the 3-subsets
    assert len({t.classes for t in ten}) == 10 and {t.n_classes for t in ten} == {2, 3}
    big = synthetic(43, n_train=2, n_test=1)
    tasks = class_subset_tasks(big, 3)
    assert all(t.n_classes == 20 for t in tasks)  # default cap of the subset size
    assert all(t.n_classes == 3 for t in class_subset_tasks(big, 5, max_classes=3))
    raises(["n_tasks"], class_subset_tasks, ds, 0)
    raises(["max_classes (2) is below min_classes (3)"], class_subset_tasks, ds, 2,
           min_classes=3, max_classes=2)


@pytest.mark.parametrize("n_classes,n_tasks", [(3, 2), (2, 3), (4, 11)])
def test_few_classes_fallback_splits_images(n_classes, n_tasks):
    ds = synthetic(n_classes, n_train=9)
    tasks = class_subset_tasks(ds, n_tasks, seed=0)
    assert [t.name for t in tasks] == [f"syn-t{i}" for i in range(n_tasks)]
    ids = [image_ids(t.x_train) for t in tasks]
    for i in range(n_tasks):
        assert tasks[i].classes == ds.classes and tasks[i].parent == "syn"
        assert np.array_equal(tasks[i].x_test, ds.x_test)
        assert all(ids[i].isdisjoint(ids[j]) for j in range(i + 1, n_tasks))
        assert np.array_equal(tasks[i].x_train[:, 0, 0, 0], tasks[i].y_train)  # labels kept
    assert set().union(*ids) == image_ids(ds.x_train)
    sizes = [len(t.y_train) for t in tasks]
    assert max(sizes) - min(sizes) <= 1


def test_make_groups_counts_and_identity():
    dss = [synthetic(10, name="a"), synthetic(3, name="b"), synthetic(6, name="c")]
    first = make_groups(dss, 2)
    assert len(first) == 2 and first[0] is dss[0] and first[1] is dss[1]
    # "b" has 3 classes: too few to cut class subsets from, so it stays one whole group
    groups = make_groups(dss, 7, seed=0)
    assert [g.name for g in groups] == ["a-t0", "a-t1", "a-t2", "b", "c-t0", "c-t1", "c-t2"]
    assert groups[3] is dss[1]
    assert [g.name for g in make_groups(dss, 6)] == ["a-t0", "a-t1", "a-t2", "b", "c-t0", "c-t1"]
    few = [synthetic(3, name="x"), synthetic(2, name="y")]  # only few-class datasets: cut into parts
    assert [g.name for g in make_groups(few, 4)] == ["x-t0", "x-t1", "y-t0", "y-t1"]
    raises(["unique", "'a'"], make_groups, [dss[0], dss[0]], 4)
    raises(["n_groups"], make_groups, dss, 0)
