"""`tans bench`: for each query dataset no training and no choice has seen, which start wins after the
same fine-tuning? Every method picks from the registered zoo under the same constraint; each picked start
is fine-tuned once per budget (one epoch; the full budget) and reused by every method that picks it.

Methods: ``tans`` (retrieval top-1), ``tans_predictor`` (predictor re-rank), ``tans_logme`` (LogME re-rank of
the re-ranked pool), ``logme_all`` (LogME of every network: one forward pass each), ``random`` (mean and
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
from ..data.stats import image_hashes
from ..errors import ConfigError, TansError
from ..device import resolve as resolve_device
from ..executor import Executor, parallel_map, ray_session, task_device
from ..finetune.config import FinetuneSettings
from ..registry.index import load_index
from ..registry.names import model_uri
from ..retrieval.config import RankConfig
from ..retrieval.embed import embed_dataset, load_champion
from ..retrieval.search import rank_candidates, searchable
from ..zoo import store
from . import metrics as M
from .config import BenchConfig, BenchRecord
from .report import plot_dataset, plot_regrets
from .starts import finetune_start, logme_group

RANKED = {"tans": "none", "tans_predictor": "predictor", "tans_logme": "logme"}  # method -> re-ranking
OVERLAP_LIMIT = 0.01  # a query dataset with more of its images than this in the zoo's groups is not new


def run_bench(cfg: BenchConfig) -> BenchRecord:
    import mlflow

    t0 = time.time()
    device = str(resolve_device(cfg.device))  # cuda asked for and absent: refused before anything is read
    wd, uri = tracking.setup(cfg.work_dir)
    champ = load_champion()
    idx = searchable(load_index(wd, latency=False)[0], champ.version, champ.encoders.cfg.embed_dim)
    zoo = _zoo_facts(wd, set(idx.groups.tolist()))
    queries = _queries(cfg, zoo)
    settings = FinetuneSettings(epochs=cfg.epochs, seed=cfg.seed, device=cfg.device)
    exp = tracking.experiment_id("bench", wd)
    tags = {"tans.kind": "finetune-bench", "tans.encoder_version": champ.version, "tans.device": device,
            "tans.executor": cfg.executor}
    out: dict[str, dict] = {}
    plots: list[str] = []
    ray = ray_session(cfg.ray_address) if cfg.executor == "ray" else contextlib.nullcontext()
    with ray, mlflow.start_run(experiment_id=exp, run_name="finetune-bench", tags=tags) as parent, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({k: (",".join(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                           if k not in ("work_dir", "data_dir", "progress", "plots")}
                          | {f"finetune_{k}": v for k, v in asdict(settings).items() if k != "patience"}
                          | {"zoo_networks": len(idx), "zoo_holdout": ",".join(zoo["holdout"]) or "none"})
        for label, ds in queries:
            with mlflow.start_run(experiment_id=exp, run_name=f"bench-{label}", nested=True,
                                  tags=tags | {"tans.dataset": label, "tans.fingerprint": ds.fingerprint()}):
                res = _bench_dataset(label, ds, cfg, settings, champ, idx, zoo, uri)
                out[label] = res
                mlflow.log_metrics(_flat_metrics(res))
                png = plot_dataset(label, res, Path(tmp) / f"epochs-{label}.png")
                mlflow.log_artifact(str(png), "plots")
                (Path(tmp) / f"bench-{label}.json").write_text(json.dumps(res, indent=1))
                mlflow.log_artifact(str(Path(tmp) / f"bench-{label}.json"))
        summary = {"datasets": out, "zoo": _zoo_summary(zoo, idx, champ)}
        (Path(tmp) / "bench.json").write_text(json.dumps(summary, indent=1))
        mlflow.log_artifact(str(Path(tmp) / "bench.json"))
        pngs = [Path(tmp) / f"epochs-{label}.png" for label in out] + [plot_regrets(out, Path(tmp) / "regret.png")]
        for p in pngs[-1:]:
            mlflow.log_artifact(str(p), "plots")
        if cfg.plots:
            dest = Path(cfg.plots)
            dest.mkdir(parents=True, exist_ok=True)
            for p in pngs:
                target = dest / f"bench-{p.name}"
                target.write_bytes(p.read_bytes())
                plots.append(str(target))
        mlflow.log_metric("seconds", time.time() - t0)
        run_id = parent.info.run_id
    return BenchRecord(run_id=run_id, datasets=out, settings=asdict(cfg) | {"finetune": asdict(settings)},
                       zoo=summary["zoo"], seconds=time.time() - t0, plots=tuple(plots))


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


def _queries(cfg: BenchConfig, zoo: dict) -> list[tuple[str, object]]:
    """The query datasets, loaded with the benchmark's caps, each checked to be new to the zoo."""
    names = list(cfg.holdout) if cfg.holdout is not None else ([] if cfg.query_data else list(zoo["holdout"]))
    if not names and not cfg.query_data:
        raise ConfigError("nothing to benchmark on: this zoo was built without a holdout (`tans zoo build "
                          "--holdout`); pass --holdout NAMES (datasets of --data-dir not in the zoo) or --query-data PATH")
    clash = [n for n in names if n in zoo["datasets"]]
    if clash:
        raise ConfigError(f"{', '.join(map(repr, clash))}: a training dataset of this zoo, not a new one; hold out "
                          f"datasets the zoo was not built on (it holds out: {', '.join(zoo['holdout']) or 'none'})")
    data_dir = resolve_data_dir(cfg.data_dir)
    out: list[tuple[str, object]] = []
    for spec in names + list(cfg.query_data):
        ds = load_dataset(spec, data_dir=data_dir, seed=cfg.seed, max_train=cfg.max_train, max_test=cfg.max_test)
        _check_new(spec, ds, zoo)
        label = ds.name
        while label in dict(out):
            label += "+"
        out.append((label, ds))
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

def _bench_dataset(label, ds, cfg: BenchConfig, settings: FinetuneSettings, champ, idx, zoo: dict, uri: str) -> dict:
    rows = np.flatnonzero(idx.mask(max_params=cfg.max_params))
    if rows.size == 0:
        raise TansError(f"no zoo network has at most {cfg.max_params:,} parameters; loosen --max-params",
                        code="NO_CANDIDATES")
    enc = champ.encoders
    t = time.perf_counter()
    q = embed_dataset(champ, ds, enc.cfg.k_per_class, cfg.seed)
    embed_s = time.perf_counter() - t
    row_of = {(str(idx.names[r]), int(idx.versions[r])): int(r) for r in rows}
    methods: dict[str, dict] = {}
    for method, rerank in RANKED.items():
        rc = RankConfig(data=str(label), top_k=3, rerank=rerank, max_params=cfg.max_params, seed=cfg.seed, log_run=False,
                        device=cfg.device)
        cands, passes, secs = rank_candidates(champ, idx, q, rc, ds)
        methods[method] = {"picks": [row_of[(c.model, c.version)] for c in cands],
                           "query_seconds": embed_s + secs["search"] + secs["rerank"], "forward_passes": 1 + passes}
    hits = idx.search(q, k=int(rows.size), dataset_weight=enc.cfg.dataset_weight, max_params=cfg.max_params)
    order = [h["row"] for h in hits]
    retrieval = {h["row"]: h["score"] for h in hits}
    predicted = _predicted(enc, idx, q, order)
    t = time.perf_counter()
    logme = _logme_all(idx, order, ds, cfg, uri, desc=f"LogME {label}")
    methods["logme_all"] = {"picks": sorted(order, key=lambda r: -logme[r])[:3],
                            "query_seconds": time.perf_counter() - t, "forward_passes": len(order)}
    rng = np.random.default_rng([cfg.seed, 11])
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
    starts["scratch"] = {"kind": "scratch", "supernet": spec, "arch": json.loads(str(idx.archs[top])), "seed": cfg.seed}
    avg = _best_average(idx, rows, zoo)
    if avg is not None:
        starts["best_average"] = avg
    budgets = [1.0, float(cfg.epochs)] if cfg.epochs != 1 else [1.0]
    results = _finetune_all(starts, ds, settings, budgets, uri, cfg, desc=f"fine-tune {label}")
    return _figures(label, ds, methods, results, budgets, retrieval, predicted, logme, truth, zoo_rows, idx, avg)


def _predicted(enc, idx, q: np.ndarray, order: list[int]) -> dict[int, float] | None:
    if enc.predictor is None:
        return None
    with torch.no_grad():
        qt = torch.from_numpy(q).float()[None].expand(len(order), -1)
        out = enc.predictor(qt, torch.from_numpy(idx.model_emb[order]).float(),
                            torch.from_numpy(idx.topology[order]).float()).numpy()
    return dict(zip(order, out.tolist()))


def _logme_all(idx, order: list[int], ds, cfg: BenchConfig, uri: str, desc: str) -> dict[int, float]:
    """LogME of every network, one group per job (one supernet in memory per worker), in parallel."""
    by_group: dict[str, list[int]] = {}
    for r in order:
        by_group.setdefault(str(idx.groups[r]), []).append(r)
    workers, threads = _workers(cfg)
    jobs = [{"uris": [model_uri(str(idx.names[r]), int(idx.versions[r])) for r in rs], "dataset": ds,
             "seed": cfg.seed, "tracking_uri": uri, "threads": threads, "device": cfg.device} for rs in by_group.values()]
    out: dict[int, float] = {}
    with tqdm(total=len(order), desc=desc, unit="net", leave=False, disable=not cfg.progress) as bar:
        for rs, scores in zip(by_group.values(), _map(logme_group, jobs, workers, cfg)):
            out.update(zip(rs, scores))
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
    device, gpus = task_device(cfg.device)  # Ray hides GPUs from tasks that ask for none
    jobs = [j | {"device": device} | ({"settings": j["settings"] | {"device": device}} if "settings" in j else {})
            for j in jobs]
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
        stats.setdefault(str(idx.arch_hashes[r]), []).append(float(idx.accuracy[r]))
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


# ----------------------------------------------------------------------------- figures

def _figures(label, ds, methods, results, budgets, retrieval, predicted, logme, truth, zoo_rows, idx, avg) -> dict:
    full, one = str(budgets[-1]), str(budgets[0])

    def acc(key: str, budget: str) -> float:
        return float(results[key]["budgets"][budget]["test_accuracy"])

    fine = {r: acc(f"row{r}", full) for r in zoo_rows}
    oracle = {b: max(acc(f"row{r}", b) for r in zoo_rows) for b in (one, full)}
    scratch_hist = results["scratch"]["budgets"][full]["history"]
    target = scratch_hist[-1]
    scratch_epochs = M.epochs_to(scratch_hist, target)
    out_methods: dict[str, dict] = {}
    for name, m in methods.items():
        keys = [f"row{r}" for r in m["picks"]]
        out_methods[name] = _method(m, keys, results, budgets, oracle, target, draws=m.get("draws", False))
        out_methods[name]["picks"] = [_describe(idx, r) for r in m["picks"]]
    for name, key in (("scratch", "scratch"), ("best_average", "best_average")):
        if key in results:
            out_methods[name] = _method({"query_seconds": 0.0, "forward_passes": 0}, [key], results, budgets, oracle,
                                        target)
    best_row = max(zoo_rows, key=lambda r: fine[r])
    out_methods["oracle"] = _method({"query_seconds": None, "forward_passes": None}, [f"row{best_row}"], results,
                                    budgets, oracle, target)
    out_methods["oracle"]["picks"] = [_describe(idx, best_row)]
    if avg is not None:
        out_methods["best_average"]["picks"] = [{k: avg[k] for k in ("arch_hash", "groups", "mean_source_accuracy",
                                                                    "n_params")} | {"weights": "base supernet"}]
    out_methods["scratch"]["picks"] = [{"arch_hash": str(idx.arch_hashes[methods["tans"]["picks"][0]]),
                                        "weights": "random"}]
    truth_acc = [fine[r] for r in zoo_rows]
    tau = {"tans": M.weighted_tau([retrieval[r] for r in zoo_rows], truth_acc),
           "predictor": None if predicted is None else M.weighted_tau([predicted[r] for r in zoo_rows], truth_acc),
           "logme": M.weighted_tau([logme[r] for r in zoo_rows], truth_acc)}
    return {"dataset": {"name": label, "classes": int(ds.n_classes), "train_images": int(len(ds.x_train)),
                        "test_images": int(len(ds.x_test)), "fingerprint": ds.fingerprint(),
                        "n_train": results["scratch"]["n_train"], "n_val": results["scratch"]["n_val"]},
            "budgets": {"one_epoch": budgets[0], "full": budgets[-1]},
            "methods": out_methods, "weighted_tau": tau,
            "oracle": {"one_epoch": oracle[one], "full": oracle[full]},
            "scratch_target": {"val_accuracy": target, "scratch_epochs": scratch_epochs},
            "ground_truth": {"networks": len(zoo_rows), "spread_sample": len(truth),
                             "test_acc": {model_uri(str(idx.names[r]), int(idx.versions[r])): fine[r]
                                          for r in zoo_rows}}}


def _method(m: dict, keys: list[str], results: dict, budgets, oracle: dict, target: float, draws: bool = False) -> dict:
    full, one = str(budgets[-1]), str(budgets[0])
    accs = {b: [float(results[k]["budgets"][b]["test_accuracy"]) for k in keys] for b in (one, full)}
    hist = [results[k]["budgets"][full]["history"] for k in keys]
    e2t = [M.epochs_to(h, target) for h in hist]
    if draws:  # the mean draw: its accuracy, regret and epochs are the draws' means
        test = {b: float(np.mean(accs[b])) for b in accs}
        reached = [e for e in e2t if e is not None]
        out = {"test_acc": test[full], "test_acc_one_epoch": test[one], "test_acc_std": float(np.std(accs[full])),
               "test_acc_one_epoch_std": float(np.std(accs[one])), "draws": len(keys),
               "regret_top1": 100.0 * (oracle[full] - test[full]),
               "regret_top1_one_epoch": 100.0 * (oracle[one] - test[one]),
               "regret_top3": M.regret(oracle[full], accs[full], 3),
               "val_history": [float(v) for v in np.mean(hist, axis=0)],
               "epochs_to_scratch": float(np.mean(reached)) if len(reached) == len(e2t) else None}
    else:
        out = {"test_acc": accs[full][0], "test_acc_one_epoch": accs[one][0],
               "regret_top1": M.regret(oracle[full], accs[full], 1),
               "regret_top1_one_epoch": M.regret(oracle[one], accs[one], 1),
               "regret_top3": M.regret(oracle[full], accs[full], 3),
               "regret_top3_one_epoch": M.regret(oracle[one], accs[one], 3),
               "val_history": hist[0], "epochs_to_scratch": e2t[0]}
    return out | {"query_seconds": m["query_seconds"], "forward_passes": m["forward_passes"]}


def _describe(idx, r: int) -> dict:
    return {"model_uri": model_uri(str(idx.names[r]), int(idx.versions[r])), "group": str(idx.groups[r]),
            "source_accuracy": float(idx.accuracy[r]), "n_params": int(idx.n_params[r]),
            "arch_hash": str(idx.arch_hashes[r])}


def _flat_metrics(res: dict) -> dict:
    out = {}
    for name, m in res["methods"].items():
        for k in ("test_acc", "test_acc_one_epoch", "regret_top1", "regret_top3", "epochs_to_scratch",
                  "query_seconds", "forward_passes"):
            if isinstance(m.get(k), (int, float)):
                out[f"{name}_{k}"] = float(m[k])
    for k, v in res["weighted_tau"].items():
        if v is not None:
            out[f"weighted_tau_{k}"] = v
    return out


def _zoo_summary(zoo: dict, idx, champ) -> dict:
    return {"networks": int(len(idx)), "groups": int(len(set(idx.groups.tolist()))), "datasets": zoo["datasets"],
            "holdout": zoo["holdout"], "base_supernet": zoo["base_run"] is not None,
            "encoder_version": champ.version, "image_check_missing_for": zoo["unchecked_groups"]}
