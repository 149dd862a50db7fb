"""Tasks made from datasets: the groups the model zoo is trained on.

TANS built its meta-training groups as class ranges of larger datasets. Here a dataset is cut into
*class-subset tasks* (:func:`class_subset_tasks`) and a list of datasets is spread into a given
number of groups (:func:`make_groups`). Everything is deterministic in the seed; the random stream
is also keyed on the dataset's name and class names, so two datasets get different subsets.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from math import comb

import numpy as np

from tans_registry.data.loading import ImageDataset
from tans_registry.errors import DataError

#: Upper bound of the default subset size (``max_classes=None``): ``min(n_classes - 1, 20)``.
DEFAULT_MAX_CLASSES = 20
_RANDOM_TRIES = 50


def class_subset_tasks(ds: ImageDataset, n_tasks: int, seed: int = 0, min_classes: int = 2,
                       max_classes: int | None = None) -> list[ImageDataset]:
    """Cut ``ds`` into ``n_tasks`` tasks named ``f"{ds.name}-t{i}"`` with ``parent=ds.name``.

    **Class subsets** (the normal case). Each task holds the train and test images of a subset of
    the classes, relabelled ``0..k-1`` in the order of the original label ids (``classes``
    follows). The subset size ``k`` is ``n_classes // 2`` clamped to
    ``[min_classes, max_classes]``; ``max_classes`` defaults to ``min(n_classes - 1, 20)`` and is
    never more than ``n_classes - 1`` (e.g. 10 classes -> subsets of 5, 43 -> 20, 4 -> 2).
    Subsets are drawn by walking through seeded permutations of the classes in chunks of ``k``,
    so the first ``ceil(n_classes / k)`` tasks together cover every class; no two tasks share
    the same class set (a repeated draw is replaced, using other sizes within the range if the
    ``k``-subsets run out). Task ``i`` does not depend on ``n_tasks`` (prefixes are stable).

    **Few-classes fallback.** When the dataset has fewer than ``2 * min_classes`` classes, or
    fewer distinct subsets of the allowed sizes than ``n_tasks`` (e.g. 2 or 3 classes), every
    task keeps *all* classes and gets a disjoint, seeded, per-class stratified part of the
    training images (``n_tasks`` parts, sizes within one image per class of each other); each
    task keeps the full test set.
    """
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, (int, np.integer)) or n_tasks < 1:
        raise DataError(f"n_tasks must be a positive integer, got {n_tasks!r}.")
    if min_classes < 2:
        raise DataError(f"min_classes must be at least 2 (a task needs two classes), "
                        f"got {min_classes}.")
    if max_classes is not None and max_classes < min_classes:
        raise DataError(f"max_classes ({max_classes}) is below min_classes ({min_classes}); "
                        f"pass max_classes >= min_classes or leave it unset.")
    rng = _task_rng(ds, seed)
    n = ds.n_classes
    cap = max(DEFAULT_MAX_CLASSES, min_classes) if max_classes is None else max_classes
    sizes = list(range(min_classes, min(cap, n - 1) + 1))  # empty when n <= min_classes
    capacity = sum(comb(n, k) for k in sizes)
    if n < 2 * min_classes or capacity < n_tasks:
        return _image_part_tasks(ds, int(n_tasks), rng)
    target = min(max(n // 2, min_classes), sizes[-1])
    sizes.sort(key=lambda k: (abs(k - target), k))
    subsets = _distinct_subsets(n, int(n_tasks), sizes, rng)
    return [_subset_task(ds, i, ids) for i, ids in enumerate(subsets)]


def make_groups(datasets: list[ImageDataset], n_groups: int, seed: int = 0,
                min_classes: int = 2) -> list[ImageDataset]:
    """Spread ``n_groups`` meta-training groups over ``datasets`` as evenly as possible.

    * ``n_groups <= len(datasets)``: the first ``n_groups`` datasets themselves, unchanged.
    * otherwise a dataset with too few classes to cut class subsets from (fewer than
      ``2 * min_classes``, e.g. 2 or 3 classes) stays one group, whole: cutting its images into
      parts would only weaken every part (measured: bccd_cells in four parts of ~985 images fell
      1-3 points below logistic regression). The other datasets share the remaining groups,
      ``remaining // n`` class-subset tasks each (:func:`class_subset_tasks`, same ``seed``) and one
      more for the first ``remaining % n``; e.g. 60 groups over 15 datasets of which 2 have few
      classes = 2 whole + 6 x 5 + 7 x 4 tasks. When every dataset has few classes, all are cut
      (image parts).

    The result is ordered dataset by dataset, task by task. Dataset names must be unique, since
    the task names derive from them.
    """
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 1:
        raise DataError(f"n_groups must be a positive integer, got {n_groups!r}.")
    if not datasets:
        raise DataError("no datasets to make groups from. Load at least one dataset first.")
    names = [d.name for d in datasets]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise DataError(f"dataset names must be unique to make groups; repeated: {dupes}. "
                        f"Pass each dataset once.")
    if n_groups <= len(datasets):
        return list(datasets[:n_groups])
    few = [d.n_classes < 2 * min_classes for d in datasets]
    if all(few):
        few = [False] * len(datasets)
    cut = [d for d, f in zip(datasets, few) if not f]
    per, extra = divmod(int(n_groups) - sum(few), len(cut))
    counts = iter([per + (1 if i < extra else 0) for i in range(len(cut))])
    groups: list[ImageDataset] = []
    for ds, f in zip(datasets, few):
        groups.extend([ds] if f else class_subset_tasks(ds, next(counts), seed=seed, min_classes=min_classes))
    return groups


# ----------------------------------------------------------------------------- helpers

def _task_rng(ds: ImageDataset, seed: int) -> np.random.Generator:
    """A generator keyed on the seed and the dataset's identity (name and class names)."""
    key = json.dumps([ds.name, list(ds.classes)], ensure_ascii=False).encode("utf-8")
    digest = int(hashlib.sha256(key).hexdigest()[:16], 16)
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, digest])


def _next_chunk(queue: list[int], n: int, k: int, rng: np.random.Generator) -> list[int]:
    """Take ``k`` distinct classes from the front of ``queue``, refilled with a fresh seeded
    permutation whenever it runs dry; classes skipped as repeats go back to the front."""
    chunk: list[int] = []
    deferred: list[int] = []
    while len(chunk) < k:
        if not queue:
            queue.extend(int(c) for c in rng.permutation(n))
        c = queue.pop(0)
        (deferred if c in chunk else chunk).append(c)
    queue[:0] = deferred
    return chunk


def _distinct_subsets(n: int, n_tasks: int, sizes: list[int],
                      rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``n_tasks`` distinct class subsets, sizes taken from ``sizes`` in order of preference."""
    seen: set[frozenset[int]] = set()
    used = {k: 0 for k in sizes}
    queue: list[int] = []
    out: list[tuple[int, ...]] = []
    size_i = 0
    while len(out) < n_tasks:
        k = sizes[size_i]
        if used[k] >= comb(n, k):  # every k-subset is taken: move to the next preferred size
            size_i += 1
            continue
        cand = frozenset(_next_chunk(queue, n, k, rng))
        for _ in range(_RANDOM_TRIES):
            if cand not in seen:
                break
            cand = frozenset(int(c) for c in rng.choice(n, size=k, replace=False))
        if cand in seen:  # small class counts only: take the first unused k-subset
            cand = next(frozenset(c) for c in itertools.combinations(range(n), k)
                        if frozenset(c) not in seen)
        seen.add(cand)
        used[k] += 1
        out.append(tuple(sorted(cand)))
    return out


def _subset_task(ds: ImageDataset, i: int, class_ids: tuple[int, ...]) -> ImageDataset:
    ids = np.asarray(sorted(class_ids), dtype=np.int64)
    lut = np.full(ds.n_classes, -1, dtype=np.int64)
    lut[ids] = np.arange(len(ids))
    m_train, m_test = lut[ds.y_train] >= 0, lut[ds.y_test] >= 0
    return ImageDataset(name=f"{ds.name}-t{i}", x_train=ds.x_train[m_train],
                        y_train=lut[ds.y_train[m_train]], x_test=ds.x_test[m_test],
                        y_test=lut[ds.y_test[m_test]],
                        classes=tuple(ds.classes[c] for c in ids), source=ds.source,
                        parent=ds.name)


def _image_part_tasks(ds: ImageDataset, n_tasks: int,
                      rng: np.random.Generator) -> list[ImageDataset]:
    if len(ds.y_train) < n_tasks:
        raise DataError(f"dataset {ds.name!r} has {len(ds.y_train)} training images, too few "
                        f"for {n_tasks} tasks with disjoint images. Ask for fewer tasks.")
    parts: list[list[np.ndarray]] = [[] for _ in range(n_tasks)]
    offset = 0  # rotate which part gets a class's leftover images, to keep part sizes even
    for c in np.unique(ds.y_train):
        idx = rng.permutation(np.flatnonzero(ds.y_train == c))
        for j, chunk in enumerate(np.array_split(idx, n_tasks)):
            parts[(j + offset) % n_tasks].append(chunk)
        offset += len(idx) % n_tasks
    tasks = []
    for i, chunks in enumerate(parts):
        keep = np.sort(np.concatenate(chunks))
        if len(keep) == 0:
            raise DataError(f"dataset {ds.name!r} is too small to split into {n_tasks} tasks "
                            f"(task {i} would get no images). Ask for fewer tasks.")
        tasks.append(ImageDataset(name=f"{ds.name}-t{i}", x_train=ds.x_train[keep],
                                  y_train=ds.y_train[keep], x_test=ds.x_test, y_test=ds.y_test,
                                  classes=ds.classes, source=ds.source, parent=ds.name))
    return tasks
