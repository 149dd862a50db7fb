#!/usr/bin/env python
"""Build the small demo datasets shipped in ``tans_registry/demo_data/``.

Takes six archives of the shared dataset collection, checks from ``MANIFEST.json`` that each
licence allows redistribution, caps each split by a stratified seeded subsample (omniglot: a
seeded choice of whole classes instead), keeps the native channels and writes the result in the
same ``.npz`` format, plus a README naming sources, licences and how the files were made.

    python scripts/make_demo_data.py [--src ../shared/datasets] [--out tans_registry/demo_data]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tans_registry.data.loading import stratified_subsample  # noqa: E402

DATASETS = ("mnist", "omniglot", "bccd_cells", "sign_language_digits", "pneumoniamnist",
            "chinese_mnist")
#: Licences that allow redistributing (a subsample of) the data, matched on the manifest's text.
REDISTRIBUTABLE = ("MIT", "Apache-2.0", "CC BY 4.0", "CC BY-SA 4.0", "CC0")
SUBSET_BY_CLASS = {"omniglot"}  # many classes, few images each: keep whole classes instead


def _licence_ok(licence: str) -> bool:
    return any(licence.startswith(ok) for ok in REDISTRIBUTABLE)


def _subsample(name: str, z, args) -> tuple[dict, dict]:
    """Arrays of the demo archive and a note on how they were picked."""
    y_tr, y_te = z["y_train"], z["y_test"]
    classes = z["classes"]
    if name in SUBSET_BY_CLASS:
        rng = np.random.default_rng(args.seed)
        keep = np.sort(rng.choice(len(classes), size=min(args.max_classes, len(classes)),
                                  replace=False))
        lut = np.full(len(classes), -1, dtype=np.int64)
        lut[keep] = np.arange(len(keep))
        tr, te = np.flatnonzero(lut[y_tr] >= 0), np.flatnonzero(lut[y_te] >= 0)
        arrays = {"x_train": z["x_train"][tr], "y_train": lut[y_tr[tr]],
                  "x_test": z["x_test"][te], "y_test": lut[y_te[te]], "classes": classes[keep]}
        note = (f"{len(keep)} of {len(classes)} classes chosen at random (numpy default_rng("
                f"{args.seed})), all their images kept; labels renumbered 0..{len(keep) - 1} "
                f"in the original class order")
    else:
        tr = stratified_subsample(y_tr, args.max_train, np.random.default_rng([args.seed, 1]))
        te = stratified_subsample(y_te, args.max_test, np.random.default_rng([args.seed, 2]))
        arrays = {"x_train": z["x_train"][tr], "y_train": y_tr[tr], "x_test": z["x_test"][te],
                  "y_test": y_te[te], "classes": classes}
        note = (f"stratified subsample (seed {args.seed}) of at most {args.max_train} train / "
                f"{args.max_test} test images "
                "(tans_registry.data.loading.stratified_subsample)")
    return arrays, {"method": note, "from_n_train": int(len(y_tr)),
                    "from_n_test": int(len(y_te)), "from_n_classes": int(len(classes))}


def build(args: argparse.Namespace) -> list[dict]:
    src, out = Path(args.src), Path(args.out)
    manifest = json.loads((src / "MANIFEST.json").read_text())
    bad = [n for n in DATASETS if not _licence_ok(manifest[n]["license"])]
    if bad:
        sys.exit(f"licence does not allow redistribution: {bad}; pick other datasets")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in DATASETS:
        entry = manifest[name]
        with np.load(src / f"{name}.npz", allow_pickle=False) as z:
            arrays, how = _subsample(name, z, args)
            meta = json.loads(str(z["meta"]))
            source, licence = str(z["source"]), str(z["license"])
        meta.update(n_classes=int(len(arrays["classes"])), n_train=int(len(arrays["y_train"])),
                    n_test=int(len(arrays["y_test"])),
                    train_class_counts=np.bincount(arrays["y_train"]).tolist(),
                    test_class_counts=np.bincount(arrays["y_test"]).tolist(),
                    demo_subsample=dict(how, script="scripts/make_demo_data.py",
                                        source_sha256=entry["sha256"]))
        path = out / f"{name}.npz"
        np.savez_compressed(path, **arrays, source=np.array(source), license=np.array(licence),
                            meta=np.array(json.dumps(meta, ensure_ascii=False)))
        rows.append({"name": name, "domain": entry["domain"], "n_classes": meta["n_classes"],
                     "n_train": meta["n_train"], "n_test": meta["n_test"],
                     "channels": int(arrays["x_train"].shape[3]), "source": source,
                     "license": licence, "how": how["method"], "bytes": path.stat().st_size})
        print(f"{name:22s} {meta['n_classes']:4d} classes {meta['n_train']:5d} train "
              f"{meta['n_test']:4d} test  {path.stat().st_size / 1e6:.2f} MB")
    _write_readme(out, rows, args)
    print(f"total {sum(r['bytes'] for r in rows) / 1e6:.2f} MB in {out}")
    return rows


def _write_readme(out: Path, rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Demo datasets",
        "",
        "Small real datasets shipped with the package so that `tans` works out of the box and the",
        "tests have real data. They are the default data directory (override with `--data-dir` or",
        "`$TANS_DATA_DIR`). Same format as the full collection: `x_train`, `x_test` uint8",
        "`[N, 32, 32, C]` (C = 1 or 3), `y_train`, `y_test` int64, `classes`, `source`, `license`,",
        "`meta` (JSON; `meta.demo_subsample` records how each file was cut down).",
        "",
        "| dataset | domain | classes | train | test | channels | source | licence |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['domain']} | {r['n_classes']} | {r['n_train']} | "
                     f"{r['n_test']} | {r['channels']} | {r['source']} | {r['license']} |")
    lines += [
        "",
        "## How they were made",
        "",
        "Generated by `scripts/make_demo_data.py` (defaults: `--seed "
        f"{args.seed} --max-train {args.max_train} --max-test {args.max_test} --max-classes "
        f"{args.max_classes}`) from the archives of the shared 32x32 collection, whose",
        "`MANIFEST.json` gives the original sources and licences copied above; the script refuses",
        "datasets whose licence is not one of " + ", ".join(REDISTRIBUTABLE) + ".",
        "",
    ]
    lines += [f"- **{r['name']}**: {r['how']}." for r in rows]
    lines += [
        "",
        "omniglot has 242 classes with 15 train / 5 test images each; a stratified cap would",
        "leave most classes with one or two images, so whole classes are kept instead.",
        "Images keep their native channels (1 or 3) to save space; the loader repeats a single",
        "channel to RGB. The caps (1200 train / 400 test by default) keep the six files near",
        f"10 MB in all; this build: {sum(r['bytes'] for r in rows) / 1e6:.1f} MB.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default="../shared/datasets", help="the shared dataset collection")
    p.add_argument("--out", default="tans_registry/demo_data", help="where to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=1200)
    p.add_argument("--max-test", type=int, default=400)
    p.add_argument("--max-classes", type=int, default=40, help="omniglot: classes kept")
    build(p.parse_args(argv))


if __name__ == "__main__":
    main()
