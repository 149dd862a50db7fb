"""Which batch-norm statistics should every start begin fine-tuning with? Compared on the SELECTION
datasets (never on a reported one), on a built bench work directory:

- ``query``  (the product's policy, `retrieval/starts.py`): every start's statistics re-estimated on the same
  256 query training images;
- ``source``: every start keeps its own source's statistics (a zoo version those the zoo build estimated on
  its group's images; the generalist subnet's estimated on 256 images of the pooled training datasets).

    .venv/bin/python scripts/bn_policy.py --work-dir WORK [--datasets mnist,pacs_sketch] [--seeds 2]
        [--starts 10] [--epochs 5] [--max-train 500] [--max-test 1000] [--workers 2] [--json out.json]

For each selection dataset and seed (the benchmark's caps and recipe): ``--starts`` zoo networks spread over
the size range, none of the dataset's own groups (leave-one-dataset-out), plus the generalist (the
best-average architecture cut from the base supernet), each prepared under both policies and fine-tuned at
1 and ``--epochs`` epochs; the LogME of each prepared start's training features beside. Printed: mean test
accuracy per policy and budget, the paired 95% bootstrap interval of source minus query over the
(dataset, seed, start) units, the generalist's own figures, and LogME's weighted tau against the fine-tuned
accuracy per policy. The interval resamples (dataset, seed) pairs, each the mean difference over its starts.

Caveat: the base supernet (and so every group's supernet, which starts from it) was trained on the
selection dataset too; leave-one-dataset-out removes its groups and the generalist from the starts, not
that. The generalist start's source images leave the query dataset out.

Decision rule, fixed before the run: ``source`` replaces ``query`` only if its mean fine-tuned test accuracy
at the full budget is higher with the interval of the difference above 0; otherwise ``query`` stays (it is
the one treatment that means the same for every kind of start).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import numpy as np

GENERALIST = "generalist"  # the pooled group of the base supernet's subnets, where a zoo has one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--datasets", default="mnist,pacs_sketch", help="selection datasets (zoo training datasets)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--max-train", type=int, default=500)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", default=None, help="write every figure here")
    a = ap.parse_args()

    from tans_registry import tracking
    from tans_registry.bench import metrics as M
    from tans_registry.bench.config import BenchConfig
    from tans_registry.bench.stage import _best_average, _map, _workers, _zoo_facts
    from tans_registry.bench.starts import finetune_start
    from tans_registry.data import load_dataset
    from tans_registry.data.loading import resolve_data_dir
    from tans_registry.data.manifest import dataset_roles
    from tans_registry.finetune.config import FinetuneSettings
    from tans_registry.registry.index import load_index
    from tans_registry.registry.names import model_uri
    from tans_registry.retrieval.embed import load_champion
    from tans_registry.retrieval.search import searchable
    from tans_registry.retrieval.starts import BN_POLICIES, CALIB_IMAGES

    names = [n for n in a.datasets.split(",") if n]
    data_dir = resolve_data_dir(a.data_dir)
    roles = dataset_roles(data_dir) or {}
    reported = [n for n in names if roles.get(n) == "report"]
    if reported:
        sys.exit(f"error: {', '.join(reported)}: a reported dataset (MANIFEST.json role report); the policy is chosen "
                 "on selection datasets only")
    cfg = BenchConfig(work_dir=a.work_dir, data_dir=a.data_dir, workers=a.workers, progress=False)
    wd, uri = tracking.setup(a.work_dir)
    champ = load_champion()
    idx = searchable(load_index(wd, latency=False)[0], champ.version, champ.encoders.cfg.embed_dim)
    zoo = _zoo_facts(wd, set(idx.groups.tolist()))
    missing = [n for n in names if n not in zoo["datasets"]]
    if missing:
        sys.exit(f"error: {', '.join(missing)}: not a training dataset of this zoo (its datasets: "
                 f"{', '.join(zoo['datasets'])})")
    if a.epochs < 1:
        sys.exit("error: --epochs must be at least 1")
    workers, threads = _workers(cfg)
    budgets = [1.0, float(a.epochs)] if a.epochs != 1 else [1.0]
    units: list[dict] = []
    per = max(1, CALIB_IMAGES // max(1, len(zoo["datasets"]) - 1))
    for seed in range(a.seeds):
        sources: dict[str, object] = {}  # each training dataset loaded once per seed, not once per query
        for name in names:
            # the generalist's own statistics: CALIB_IMAGES images of the pooled training datasets, evenly
            # shared, the query dataset's never
            rng = np.random.default_rng([seed, 13])
            pool = []
            for n in zoo["datasets"]:
                if n != name:
                    if n not in sources:
                        sources[n] = load_dataset(n, data_dir=data_dir, seed=seed, max_train=4 * per)
                    src = sources[n]
                    pool.append(src.x_train[rng.permutation(len(src.x_train))[:per]])
            x_source = np.concatenate(pool)[:CALIB_IMAGES]
            ds = load_dataset(name, data_dir=data_dir, seed=seed, max_train=a.max_train, max_test=a.max_test)
            # leave-one-dataset-out: neither the dataset's own groups nor the generalist (pooled, it holds it)
            rows = np.flatnonzero(~np.isin(idx.datasets, [name, GENERALIST]))
            order = [int(r) for r in rows]
            picked = M.spread_sample(order, {r: int(idx.n_params[r]) for r in order}, a.starts, [])
            starts = {f"row{r}": {"kind": "zoo", "uri": model_uri(str(idx.names[r]), int(idx.versions[r]))}
                      for r in picked}
            avg = _best_average(idx, rows, zoo)
            if avg is not None:
                starts["best_average"] = avg
            settings = FinetuneSettings(epochs=a.epochs, seed=seed)
            for bn in BN_POLICIES:
                jobs = [{"start": st, "classes": list(ds.classes), "x_train": ds.x_train, "y_train": ds.y_train,
                         "x_test": ds.x_test, "y_test": ds.y_test, "settings": asdict(settings), "budgets": budgets,
                         "tracking_uri": uri, "threads": threads, "bn": bn, "x_source": x_source, "logme": True}
                        for st in starts.values()]
                for key, res in zip(starts, _map(finetune_start, jobs, workers, cfg)):
                    units.append({"dataset": name, "seed": seed, "start": key, "bn": bn,
                                  "logme": res["probe"]["logme"], "probe": res["probe"]["test_accuracy"],
                                  "preparation": res["preparation"],
                                  **{f"test_{b:g}": res["budgets"][str(b)]["test_accuracy"] for b in budgets},
                                  **{f"val_{b:g}": res["budgets"][str(b)]["val_accuracy"] for b in budgets}})
                print(f"{name} seed {seed} {bn}: {len(starts)} starts", file=sys.stderr, flush=True)
    report = summarise(units, budgets, M)
    print(markdown(report, budgets))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"units": units, "summary": report, "args": vars(a)}, fh, indent=1, default=float)


def summarise(units: list[dict], budgets: list[float], M) -> dict:
    key = {(u["dataset"], u["seed"], u["start"], u["bn"]): u for u in units}
    pairs = sorted({k[:3] for k in key})
    out: dict = {"units": len(pairs), "budgets": {}}
    if not pairs:
        raise SystemExit("error: nothing was fine-tuned")
    for b in budgets:
        col = f"test_{b:g}"
        q = np.array([key[p + ("query",)][col] for p in pairs])
        s = np.array([key[p + ("source",)][col] for p in pairs])
        gen = [p for p in pairs if p[2] == "best_average"]
        # the starts of one (dataset, seed) share its data, split and test set: one difference per pair, the
        # mean over its starts, is what the bootstrap resamples
        cells = sorted({p[:2] for p in pairs})
        diffs = [100 * float(np.mean([s[i] - q[i] for i, p in enumerate(pairs) if p[:2] == c])) for c in cells]
        out["budgets"][f"{b:g}"] = {
            "query_mean": float(q.mean()), "source_mean": float(s.mean()),
            "source_minus_query": M.paired_bootstrap(diffs), "per_pair": dict(zip(map(str, cells), diffs)),
            "generalist_query": float(np.mean([key[p + ("query",)][col] for p in gen])) if gen else None,
            "generalist_source": float(np.mean([key[p + ("source",)][col] for p in gen])) if gen else None}
    full = f"test_{budgets[-1]:g}"
    taus: dict[str, list] = {"query": [], "source": []}
    for d, seed in sorted({p[:2] for p in pairs}):
        for bn in taus:
            us = [key[p + (bn,)] for p in pairs if p[:2] == (d, seed)]
            taus[bn].append(M.weighted_tau([u["logme"] for u in us], [u[full] for u in us]))
    out["logme_tau"] = {bn: (float(np.mean([t for t in v if t is not None])) if any(t is not None for t in v) else None)
                        for bn, v in taus.items()}
    iv = out["budgets"][f"{budgets[-1]:g}"]["source_minus_query"]
    out["choice"] = "source" if iv["low"] is not None and iv["low"] > 0 else "query"
    return out


def markdown(r: dict, budgets: list[float]) -> str:
    lines = ["| budget | query mean | source mean | source - query, points (95% CI) | generalist query / source |",
             "|---|---|---|---|---|"]
    for b in budgets:
        x = r["budgets"][f"{b:g}"]
        iv = x["source_minus_query"]
        gen = ("n/a" if x["generalist_query"] is None else f"{x['generalist_query']:.3f} / {x['generalist_source']:.3f}")
        lines.append(f"| {b:g} ep | {x['query_mean']:.3f} | {x['source_mean']:.3f} | {iv['mean']:+.1f} "
                     f"[{iv['low']:+.1f}, {iv['high']:+.1f}] | {gen} |")
    t = r["logme_tau"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines.append(f"\nLogME weighted tau vs fine-tuned test accuracy (full budget): query {fmt(t['query'])}, "
                 f"source {fmt(t['source'])}; {r['units']} (dataset, seed, start) units. Choice: {r['choice']}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
