"""`tans bench`: for each query dataset no training and no choice has seen, which start wins after the
same fine-tuning? Every method picks from the registered zoo under the same constraint; each picked start
is fine-tuned once per budget (one epoch; the full budget) and reused by every method that picks it.

Methods: ``tans`` (retrieval top-1), ``tans_predictor`` (predictor re-rank), ``tans_logme`` (LogME re-rank of
the re-ranked pool), ``tans_hybrid`` (the learned ranking's first networks across groups and the generalist,
re-ranked by a transferability score), ``logme_all`` (LogME of every network: one forward pass each, which also
gives every network's LEEP and NCE for their weighted tau), ``random`` (mean and
spread of draws), ``best_average`` (the architecture with the best mean source accuracy over the zoo's
groups, cut from the shared base supernet), ``top_source`` (highest source accuracy), ``largest`` (most
parameters), ``scratch`` (the retrieved architecture, random weights), and the ``oracle``: the best of the
ground truth, at least ``ground_truth`` zoo networks spread over the retrieval order and the size range
(plus every method's picks).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import tracking
from ..data import load_dataset, resolve_data_dir
from ..data.manifest import SELECTION_DATASETS
from ..data.stats import image_hashes
from ..errors import ConfigError, TansError
from ..device import resolve as resolve_device
from ..executor import Executor, on_task_device, parallel_map, ray_session, shared_pool
from ..finetune.config import FinetuneSettings
from ..registry.index import load_index
from ..registry.names import model_uri
from ..retrieval.config import HYBRID_K, HYBRID_MIN_GROUPS, HYBRID_SCORE, RankConfig
from ..retrieval.embed import embed_dataset, load_champion
from ..retrieval.search import learned_scores, rank_candidates, searchable
from ..retrieval.transferability import hybrid_shortlist
from ..zoo import store
from ..zoo.generalist import is_generalist
from . import metrics as M
from . import figures as F
from . import runs as R
from . import seeds as S
from .config import BenchConfig, BenchRecord
from ..retrieval.starts import BN_POLICY, CALIB_IMAGES, calibration_set, split_train_val
from .floors import logreg_pixels
from .report import plot_dataset, plot_forest, plot_regrets
from .starts import finetune_start, logme_group
from ..transfer.feedback import record_bench

RANKED = {"tans": "none", "tans_predictor": "predictor", "tans_logme": "logme",  # method -> re-ranking
          "tans_hybrid": "hybrid"}
OVERLAP_LIMIT = 0.01  # a query dataset with more of its images than this in the zoo's groups is not new


def run_bench(cfg: BenchConfig) -> BenchRecord:
    import mlflow

    t0 = time.time()
    device = str(resolve_device(cfg.device))  # cuda asked for and absent: refused before anything is read
    wd, uri = tracking.setup(cfg.work_dir)
    champ = load_champion()
    idx = searchable(load_index(wd, latency=False)[0], champ.version, champ.encoders.cfg.embed_dim)
    zoo = _zoo_facts(wd, set(idx.groups.tolist()))
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    queries = {seed: _queries(cfg, zoo, seed) for seed in seeds}  # each seed draws its own stratified sample
    exp = tracking.experiment_id("bench", wd)
    tags = {"tans.kind": "finetune-bench", "tans.encoder_version": champ.version, "tans.device": device,
            "tans.executor": cfg.executor}
    out: dict[str, dict] = {}
    plots: list[str] = []
    resumed: list[str] = []
    ray = ray_session(cfg.ray_address) if cfg.executor == "ray" else contextlib.nullcontext()
    pool = shared_pool(_workers(cfg)[0], Executor(cfg.executor, cfg.ray_address))  # one pool for every map
    with ray, pool, mlflow.start_run(experiment_id=exp, run_name="finetune-bench", tags=tags) as parent, \
            tempfile.TemporaryDirectory() as tmp:
        settings0 = FinetuneSettings(epochs=cfg.epochs, seed=cfg.seed, device=cfg.device, head_first=cfg.head_first)
        mlflow.log_params({k: (",".join(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                           if k not in ("work_dir", "data_dir", "progress", "plots")}
                          | {f"finetune_{k}": v for k, v in asdict(settings0).items() if k not in ("patience", "seed")}
                          | {"zoo_networks": len(idx), "zoo_holdout": ",".join(zoo["holdout"]) or "none",
                             "seeds_used": ",".join(map(str, seeds)), "bn_policy": BN_POLICY,
                             "calib_images": CALIB_IMAGES})
        for pos, (label, _, _) in enumerate(queries[seeds[0]]):
            per_seed = []
            with mlflow.start_run(experiment_id=exp, run_name=f"bench-{label}", nested=True,
                                  tags=tags | {"tans.dataset": label}):
                for seed in seeds:
                    ds = queries[seed][pos][1]
                    settings = FinetuneSettings(epochs=cfg.epochs, seed=seed, device=cfg.device, head_first=cfg.head_first)
                    key = R.seed_key(cfg, seed, ds, champ.version, idx, settings, zoo["base_run"])
                    done = R.finished_seed(exp, key) if cfg.resume else None
                    if done is not None:
                        resumed.append(f"{label} seed {seed}")
                        per_seed.append(done | {"seed": seed})
                        continue
                    with mlflow.start_run(experiment_id=exp, run_name=f"bench-{label}-seed{seed}", nested=True,
                                          tags=tags | {"tans.dataset": label, "tans.seed": str(seed),
                                                       "tans.fingerprint": ds.fingerprint()}) as seed_run:
                        res, curves = _bench_dataset(label, ds, cfg, seed, settings, champ, idx, zoo, uri)
                        mlflow.log_metrics(F.flat_metrics(res))
                        R.log_curves(exp, seed_run.info.run_id, curves, tags | {"tans.dataset": label,
                                                                              "tans.seed": str(seed)})
                        mlflow.log_text(json.dumps(res, indent=1, default=float), R.SEED_ARTIFACT)
                        mlflow.set_tag(R.SEED_KEY_TAG, key)  # a seed run with its key is complete
                    # its fine-tunings join the transfer table (written once the seed is complete; the records'
                    # keys make a rerun's copies one)
                    record_bench(ds, queries[seed][pos][2], seed, (cfg.max_train, cfg.max_test), curves, idx,
                                 asdict(settings) | {"patience": 10 ** 6, "keep_probe": False}, cfg.work_dir)
                    per_seed.append(res | {"seed": seed})
                res = S.aggregate(per_seed)
                out[label] = res
                mlflow.log_metrics(F.flat_metrics(res))
                png = plot_dataset(label, res, Path(tmp) / f"epochs-{label}.png")
                mlflow.log_artifact(str(png), "plots")
                (Path(tmp) / f"bench-{label}.json").write_text(json.dumps(res, indent=1, default=float))
                mlflow.log_artifact(str(Path(tmp) / f"bench-{label}.json"))
        intervals = S.pooled_intervals(out, seed=cfg.seed)
        summary = {"datasets": out, "intervals": intervals, "zoo": _zoo_summary(zoo, idx, champ)}
        (Path(tmp) / "bench.json").write_text(json.dumps(summary, indent=1, default=float))
        mlflow.log_artifact(str(Path(tmp) / "bench.json"))
        for name, iv in intervals.items():
            if iv.get("mean") is not None:
                mlflow.log_metrics({f"interval_{name}_mean": iv["mean"], f"interval_{name}_low": iv["low"],
                                    f"interval_{name}_high": iv["high"]})
        pngs = [Path(tmp) / f"epochs-{label}.png" for label in out] + [plot_regrets(out, Path(tmp) / "regret.png"),
                                                                       plot_forest(intervals, Path(tmp) / "forest.png")]
        for p in pngs[-2:]:
            mlflow.log_artifact(str(p), "plots")
        if cfg.plots:
            dest = Path(cfg.plots)
            dest.mkdir(parents=True, exist_ok=True)
            for p in pngs:
                target = dest / f"bench-{p.name}"
                target.write_bytes(p.read_bytes())
                plots.append(str(target))
        mlflow.log_metric("seconds", time.time() - t0)
        if resumed:
            mlflow.set_tag("tans.resumed", ", ".join(resumed))
        run_id = parent.info.run_id
    return BenchRecord(run_id=run_id, datasets=out, settings=asdict(cfg) | {"finetune": asdict(settings0),
                                                                           "seeds": seeds},
                       zoo=summary["zoo"], seconds=time.time() - t0, plots=tuple(plots), intervals=intervals)


# ----------------------------------------------------------------------------- the zoo and the queries

def _zoo_facts(wd: Path, indexed_groups: set[str]) -> dict:
    """What the registered zoo was built from: its groups' datasets, fingerprints and image hashes, the
    build's recorded holdout, the shared base supernet (if the build had one)."""
    runs = store.finished_group_runs(tracking.experiment_id("zoo", wd))
    groups = {g: r for g, r in runs.items() if g in indexed_groups}
    if not groups:
        raise TansError("the index holds no group of this work directory's zoo: run `tans zoo build`, "
                        "`tans zoo register` and `tans index build` here", code="NO_ZOO")
    holdout = sorted({h for r in groups.values() for h in (r.data.tags.get(store.HOLDOUT_TAG) or "").split(",") if h})
    hashes, unchecked = [], []
    for g, r in groups.items():
        h = store.read_image_hashes(r.info.run_id)
        (unchecked.append(g) if h is None else hashes.append(h))
    base = runs.get("__base__")
    base_start = None
    if base is not None:  # its weights, fetched once for every query dataset's best-average start
        folder = store.group_dir(base.info.run_id)
        base_start = {"weights": str(folder / "supernet.safetensors"), "base_run": base.info.run_id,
                      "supernet": json.loads((folder / "zoo.json").read_text())["header"]["supernet"]}
    return {"datasets": sorted({r.data.tags.get("tans.dataset", g) for g, r in groups.items()}),
            "fingerprints": {r.data.tags.get("tans.fingerprint") for r in groups.values()} - {None},
            "hashes": np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.int64),
            "unchecked_groups": sorted(unchecked), "holdout": holdout,
            "base_run": base.info.run_id if base is not None else None, "base_start": base_start}


def _queries(cfg: BenchConfig, zoo: dict, seed: int) -> list[tuple[str, object, str]]:
    """The query datasets, loaded with the benchmark's caps, each checked to be new to the zoo."""
    if cfg.selection:  # training datasets of the zoo, each without its own groups (_bench_dataset): for choices only
        missing = [n for n in SELECTION_DATASETS if n not in zoo["datasets"]]
        if missing:
            raise ConfigError(f"--selection: the selection dataset(s) {', '.join(missing)} are not training datasets of "
                              f"this zoo (its datasets: {', '.join(zoo['datasets'])}); build the zoo on a data "
                              "directory that holds them (../shared/datasets)")
        data_dir = resolve_data_dir(cfg.data_dir)
        return [(n, load_dataset(n, data_dir=data_dir, seed=seed, max_train=cfg.max_train, max_test=cfg.max_test), n)
                for n in SELECTION_DATASETS]
    names = list(cfg.holdout) if cfg.holdout is not None else ([] if cfg.query_data else list(zoo["holdout"]))
    if not names and not cfg.query_data:
        raise ConfigError("nothing to benchmark on: this zoo was built without a holdout (`tans zoo build "
                          "--holdout`); pass --holdout NAMES (datasets of --data-dir not in the zoo) or --query-data PATH")
    clash = [n for n in names if n in zoo["datasets"]]
    if clash:
        raise ConfigError(f"{', '.join(map(repr, clash))}: a training dataset of this zoo, not a new one; hold out "
                          f"datasets the zoo was not built on (it holds out: {', '.join(zoo['holdout']) or 'none'})")
    data_dir = resolve_data_dir(cfg.data_dir)
    out: list[tuple[str, object, str]] = []
    for spec in names + list(cfg.query_data):
        ds = load_dataset(spec, data_dir=data_dir, seed=seed, max_train=cfg.max_train, max_test=cfg.max_test)
        _check_new(spec, ds, zoo)
        label = ds.name
        while label in {have for have, _, _ in out}:
            label += "+"
        out.append((label, ds, spec))
    return out


def _check_new(spec: str, ds, zoo: dict) -> None:
    if ds.fingerprint() in zoo["fingerprints"]:
        raise ConfigError(f"{spec}: the same data as a group of the zoo (fingerprint {ds.fingerprint()}); the benchmark "
                          "needs datasets the zoo was not trained on")
    if len(zoo["hashes"]):
        mine = image_hashes(np.concatenate([ds.x_train, ds.x_test]))
        seen = int(np.isin(mine, zoo["hashes"]).sum())
        if seen > OVERLAP_LIMIT * len(mine):
            raise ConfigError(f"{spec}: {seen} of its {len(mine)} images are images the zoo was trained or tested on; "
                              "the benchmark needs datasets the zoo has not seen (hold them out of `tans zoo build`)")


# ----------------------------------------------------------------------------- one query dataset

def _bench_dataset(label, ds, cfg: BenchConfig, seed: int, settings: FinetuneSettings, champ, idx, zoo: dict,
                   uri: str) -> tuple[dict, list[dict]]:
    """One query dataset at one seed: every method's picks, every start prepared alike, probed and
    fine-tuned at both budgets; the figures, and the fine-tuning curves to log."""
    # no method's candidate is a network of the query's own dataset: in selection mode its groups (the query is a
    # training dataset of the zoo); otherwise networks added from it (`tans zoo add`; the build's groups never are)
    own = (ds.name,)
    rows = np.flatnonzero(idx.mask(max_params=cfg.max_params, exclude_datasets=list(own) or None))
    if rows.size == 0:
        raise TansError(f"no zoo network has at most {cfg.max_params:,} parameters; loosen --max-params",
                        code="NO_CANDIDATES")
    enc = champ.encoders
    t = time.perf_counter()
    q = embed_dataset(champ, ds, enc.cfg.k_per_class, seed)
    embed_s = time.perf_counter() - t
    row_of = {(str(idx.names[r]), int(idx.versions[r])): int(r) for r in rows}
    methods: dict[str, dict] = {}
    for method, rerank in RANKED.items():
        rc = RankConfig(data=str(label), top_k=3, rerank=rerank, max_params=cfg.max_params, seed=seed, log_run=False,
                        device=cfg.device, exclude_datasets=own)
        cands, passes, secs = rank_candidates(champ, idx, q, rc, ds)
        methods[method] = {"picks": [row_of[(c.model, c.version)] for c in cands],
                           "query_seconds": embed_s + secs["search"] + secs["rerank"], "forward_passes": 1 + passes}
    hits = idx.search(q, k=int(rows.size), dataset_weight=enc.cfg.dataset_weight, max_params=cfg.max_params,
                      exclude_datasets=list(own) or None)
    order = [h["row"] for h in hits]
    retrieval = {h["row"]: h["score"] for h in hits}
    predicted = _predicted(enc, idx, q, order)
    t = time.perf_counter()
    transfer = _logme_all(idx, order, ds, cfg, seed, settings, uri, desc=f"LogME {label} seed {seed}")
    logme = transfer["logme"]
    methods["logme_all"] = {"picks": sorted(order, key=lambda r: -logme[r])[:3],
                            "query_seconds": time.perf_counter() - t, "forward_passes": len(order)}
    rng = np.random.default_rng([seed, 11])
    methods["random"] = {"picks": [int(r) for r in rng.choice(order, min(cfg.random_draws, len(order)), replace=False)],
                         "query_seconds": 0.0, "forward_passes": 0, "draws": True}
    place = {r: i for i, r in enumerate(order)}
    methods["top_source"] = {"picks": sorted(order, key=lambda r: (-float(idx.accuracy[r]), place[r]))[:1],
                             "query_seconds": 0.0, "forward_passes": 0}
    methods["largest"] = {"picks": sorted(order, key=lambda r: (-int(idx.n_params[r]), -float(idx.accuracy[r])))[:1],
                          "query_seconds": 0.0, "forward_passes": 0}
    picked = [r for m in methods.values() for r in m["picks"]]
    truth = M.spread_sample(order, {r: int(idx.n_params[r]) for r in order}, cfg.ground_truth, [])
    zoo_rows = list(dict.fromkeys(truth + picked))

    starts: dict[str, dict] = {f"row{r}": {"kind": "zoo", "uri": model_uri(str(idx.names[r]), int(idx.versions[r]))}
                               for r in zoo_rows}
    top = methods["tans"]["picks"][0]
    spec = _spec_of(idx, top, ds.n_classes)
    starts["scratch"] = {"kind": "scratch", "supernet": spec, "arch": json.loads(str(idx.archs[top])), "seed": seed}
    avg = _best_average(idx, rows, zoo)
    if avg is not None:
        starts["best_average"] = avg
    budgets = [1.0, float(cfg.epochs)] if cfg.epochs != 1 else [1.0]
    results = _finetune_all(starts, ds, settings, budgets, uri, cfg, desc=f"fine-tune {label} seed {seed}")
    tr, _ = split_train_val(ds.y_train, settings.val_fraction, seed)
    floor = logreg_pixels(ds.x_train[tr], ds.y_train[tr], ds.x_test, ds.y_test, seed=seed)
    scorers = transfer | {"hybrid": _hybrid_scores(idx, order, predicted, transfer)}
    figures = F.figures(label, ds, methods, results, budgets, retrieval, predicted, scorers, truth, zoo_rows, idx, avg)
    figures["floors"] = {"logreg_pixels": floor["test_accuracy"], "logreg_seconds": floor["seconds"]}
    curves = [{"start": k, "kind": st["kind"], "uri": st.get("uri"), "budget": float(b),
               "history": results[k]["budgets"][str(b)]["history"],
               "test_accuracy": results[k]["budgets"][str(b)]["test_accuracy"],
               "kept_val_accuracy": results[k]["budgets"][str(b)]["val_accuracy"],
               "probe_test_acc": results[k]["probe"]["test_accuracy"],
               "seconds": results[k]["budgets"][str(b)]["seconds"], "prep": results[k]["preparation"]}
              for k, st in starts.items() for b in budgets]
    return figures, curves


def _hybrid_scores(idx, order: list[int], predicted: dict[int, float] | None,
                   transfer: dict[str, dict[int, float]]) -> dict[int, float]:
    """The hybrid policy's ranking of every row of ``order`` (retrieval's order), as scores (higher first), for
    its weighted tau: what `--rerank hybrid` ranks (retrieval/search.py), over the whole zoo. The shortlist (the
    learned ranking's first HYBRID_K across HYBRID_MIN_GROUPS groups, the generalist's best kept) ordered by
    HYBRID_SCORE, then the other rows in the learned order."""
    learned = sorted(order, key=lambda r: -predicted[r]) if predicted is not None else list(order)  # stable
    groups = [str(idx.groups[r]) for r in learned]
    generalist = [r for r, g in zip(learned, groups) if is_generalist(g)][:1]
    short = hybrid_shortlist(learned, groups, HYBRID_K, HYBRID_MIN_GROUPS, must_include=generalist)
    values = transfer[HYBRID_SCORE]
    chosen = set(short)
    # NaN last, as np.argsort puts it in the query's re-ranking
    ranking = sorted(short, key=lambda r: (bool(np.isnan(values[r])), -values[r])) + [r for r in learned if r not in chosen]
    return {r: float(len(ranking) - i) for i, r in enumerate(ranking)}


def _predicted(enc, idx, q: np.ndarray, order: list[int]) -> dict[int, float] | None:
    """The learned ranking's scores (the transfer predictor's, else the accuracy predictor's) of ``order``."""
    out = learned_scores(enc, idx, q, order)
    return None if out is None else dict(zip(order, out.tolist()))


def _logme_all(idx, order: list[int], ds, cfg: BenchConfig, seed: int, settings: FinetuneSettings, uri: str,
               desc: str) -> dict[str, dict[int, float]]:
    """LogME (and LEEP and NCE, from the same forward pass) of every network, by score and row, one group per
    job (one supernet in memory per worker), in parallel; each network prepared as its fine-tuning starts
    (batch norm on the same calibration images)."""
    x_calib = calibration_set(ds.x_train, ds.y_train, settings.val_fraction, seed)
    by_group: dict[str, list[int]] = {}
    for r in order:
        by_group.setdefault(str(idx.groups[r]), []).append(r)
    workers, threads = _workers(cfg)
    jobs = [{"uris": [model_uri(str(idx.names[r]), int(idx.versions[r])) for r in rs], "dataset": ds,
             "seed": seed, "tracking_uri": uri, "threads": threads, "device": cfg.device, "x_calib": x_calib}
            for rs in by_group.values()]
    out: dict[str, dict[int, float]] = {}
    with tqdm(total=len(order), desc=desc, unit="net", leave=False, disable=not cfg.progress) as bar:
        for rs, scores in zip(by_group.values(), _map(logme_group, jobs, workers, cfg)):
            for kind, values in scores.items():
                out.setdefault(kind, {}).update(zip(rs, values))
            bar.update(len(rs))
    return out


def _workers(cfg: BenchConfig) -> tuple[int, int]:
    """Processes and threads each: ``cfg.workers`` (default: one per core), the cores shared out; Ray tasks
    get one thread each (the cluster's CPUs decide how many run)."""
    if cfg.executor == "ray":
        return cfg.workers or 1, 1
    cores = os.cpu_count() or 1
    workers = cfg.workers or cores
    return workers, (max(1, cores // workers) if workers > 1 else torch.get_num_threads())


def _map(fn, jobs: list[dict], workers: int, cfg: BenchConfig):
    """``fn`` over ``jobs`` in order: in ``workers`` spawned processes (in this one for 1), or as Ray tasks."""
    executor = Executor(cfg.executor, cfg.ray_address)
    if not executor.is_ray:
        yield from parallel_map(fn, jobs, workers, executor, threads=jobs[0]["threads"] if jobs else 1)
        return
    jobs, gpus = on_task_device(jobs, cfg.device)  # Ray hides GPUs from tasks that ask for none
    yield from parallel_map(fn, jobs, cfg.workers or len(jobs), executor, threads=jobs[0]["threads"] if jobs else 1,
                            gpus=gpus)


def _spec_of(idx, row: int, n_classes: int) -> dict:
    from ..registry.pyfunc import load_network_info

    return load_network_info(model_uri(str(idx.names[row]), int(idx.versions[row])))["supernet"] | {"n_classes": n_classes}


def _best_average(idx, rows: np.ndarray, zoo: dict) -> dict | None:
    """The architecture with the best mean source accuracy over the groups that hold it (those holding it
    most often first), as a subnet of the shared base supernet; None when the zoo has no base supernet."""
    if zoo["base_start"] is None:
        return None
    stats: dict[str, list[float]] = {}
    for r in rows:
        if is_generalist(str(idx.groups[r])):  # the groups' mean: the generalist's own networks are not a group's
            continue
        stats.setdefault(str(idx.arch_hashes[r]), []).append(float(idx.accuracy[r]))
    if not stats:  # every candidate is the generalist's (a tight --max-params): no group's mean to take
        return None
    best = max(stats, key=lambda h: (len(stats[h]), float(np.mean(stats[h]))))
    row = next(int(r) for r in rows if str(idx.arch_hashes[r]) == best)
    return {"kind": "base", **zoo["base_start"], "arch": json.loads(str(idx.archs[row])), "arch_hash": best,
            "groups": len(stats[best]),
            "mean_source_accuracy": float(np.mean(stats[best])), "n_params": int(idx.n_params[row])}


def _finetune_all(starts: dict[str, dict], ds, settings, budgets, uri: str, cfg: BenchConfig, desc: str) -> dict:
    workers, threads = _workers(cfg)
    keys = list(starts)
    jobs = [{"start": starts[k], "classes": list(ds.classes), "x_train": ds.x_train, "y_train": ds.y_train,
             "x_test": ds.x_test, "y_test": ds.y_test, "settings": asdict(settings), "budgets": budgets,
             "tracking_uri": uri, "threads": threads} for k in keys]
    out: dict[str, dict] = {}
    with tqdm(total=len(jobs), desc=desc, unit="start", leave=False, disable=not cfg.progress) as bar:
        for key, res in zip(keys, _map(finetune_start, jobs, workers, cfg)):
            out[key] = res
            bar.update(1)
    return out


def _zoo_summary(zoo: dict, idx, champ) -> dict:
    return {"networks": int(len(idx)), "groups": int(len(set(idx.groups.tolist()))), "datasets": zoo["datasets"],
            "holdout": zoo["holdout"], "base_supernet": zoo["base_run"] is not None,
            "encoder_version": champ.version, "image_check_missing_for": zoo["unchecked_groups"]}
