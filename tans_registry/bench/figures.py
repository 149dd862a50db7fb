"""One seed's figures of one query dataset, from its starts' fine-tuning results (no torch): every method's
accuracy, probe and regrets against the validation-picked oracle, the upper bound, the scorers' weighted tau."""
from __future__ import annotations

import numpy as np

from ..registry.names import model_uri
from . import metrics as M


def figures(label, ds, methods, results, budgets, retrieval, predicted, transfer, truth, zoo_rows, idx, avg) -> dict:
    """One seed's figures (``transfer``: each transferability score by row, LogME, LEEP, NCE). The oracle is the ground-truth network with the best *validation* accuracy, scored
    by its test accuracy (top-3 likewise: of a method's first three picks, the one validating best); the best
    test accuracy of the ground truth is kept as an upper bound, named as such."""
    full, one = str(budgets[-1]), str(budgets[0])

    def acc(key: str, budget: str, which: str = "test_accuracy") -> float:
        return float(results[key]["budgets"][budget][which])

    keys = [f"row{r}" for r in zoo_rows]
    oracle, oracle_key, upper = {}, {}, {}
    for b in (one, full):
        test = {k: acc(k, b) for k in keys}
        oracle_key[b] = M.oracle_pick({k: acc(k, b, "val_accuracy") for k in keys}, test, 1)[0]
        oracle[b] = test[oracle_key[b]]
        upper[b] = M.upper_bound(test)
    scratch_hist = results["scratch"]["budgets"][full]["history"]
    target = scratch_hist[-1]
    scratch_epochs = M.epochs_to(scratch_hist, target)
    out_methods: dict[str, dict] = {}
    for name, m in methods.items():
        mkeys = [f"row{r}" for r in m["picks"]]
        out_methods[name] = method_figures(m, mkeys, results, budgets, oracle, target, draws=m.get("draws", False))
        out_methods[name]["picks"] = [describe(idx, r) for r in m["picks"]]
    for name in ("scratch", "best_average"):
        if name in results:
            out_methods[name] = method_figures({"query_seconds": 0.0, "forward_passes": 0}, [name], results, budgets, oracle,
                                        target)
    out_methods["oracle"] = method_figures({"query_seconds": None, "forward_passes": None}, [oracle_key[full]], results,
                                    budgets, oracle, target)
    out_methods["oracle"]["test_acc_one_epoch"] = oracle[one]  # each budget's oracle is picked at that budget
    out_methods["oracle"]["regret_top1_one_epoch"] = 0.0
    out_methods["oracle"]["regret_top3_one_epoch"] = 0.0
    out_methods["oracle"]["picks"] = [describe(idx, int(oracle_key[full][3:]))]
    if avg is not None:
        out_methods["best_average"]["picks"] = [{k: avg[k] for k in ("arch_hash", "groups", "mean_source_accuracy",
                                                                    "n_params")} | {"weights": "base supernet"}]
    out_methods["scratch"]["picks"] = [{"arch_hash": str(idx.arch_hashes[methods["tans"]["picks"][0]]),
                                        "weights": "random"}]
    fine = {r: acc(f"row{r}", full) for r in zoo_rows}
    truth_acc = [fine[r] for r in zoo_rows]
    tau = {"tans": M.weighted_tau([retrieval[r] for r in zoo_rows], truth_acc),
           "predictor": None if predicted is None else M.weighted_tau([predicted[r] for r in zoo_rows], truth_acc),
           **{kind: M.weighted_tau([scores[r] for r in zoo_rows], truth_acc) for kind, scores in transfer.items()}}
    return {"dataset": {"name": label, "classes": int(ds.n_classes), "train_images": int(len(ds.x_train)),
                        "test_images": int(len(ds.x_test)), "fingerprint": ds.fingerprint(),
                        "n_train": results["scratch"]["n_train"], "n_val": results["scratch"]["n_val"]},
            "budgets": {"one_epoch": budgets[0], "full": budgets[-1]},
            "methods": out_methods, "weighted_tau": tau,
            "oracle": {"one_epoch": oracle[one], "full": oracle[full]},
            "upper_bound": {"one_epoch": upper[one], "full": upper[full]},
            "preparation": results["scratch"]["preparation"],
            "scratch_target": {"val_accuracy": target, "scratch_epochs": scratch_epochs},
            "ground_truth": {"networks": len(zoo_rows), "spread_sample": len(truth),
                             "test_acc": {model_uri(str(idx.names[r]), int(idx.versions[r])): fine[r]
                                          for r in zoo_rows},
                             "val_acc": {model_uri(str(idx.names[r]), int(idx.versions[r])): acc(f"row{r}", full,
                                                                                                   "val_accuracy")
                                         for r in zoo_rows}}}


def method_figures(m: dict, keys: list[str], results: dict, budgets, oracle: dict, target: float, draws: bool = False) -> dict:
    """A method's figures from its picks' results: test accuracy (mean draw for ``random``), its pick's linear
    probe, regrets against the validation-picked ``oracle`` (points; negative where the pick beats it)."""
    full, one = str(budgets[-1]), str(budgets[0])
    accs = {b: [float(results[k]["budgets"][b]["test_accuracy"]) for k in keys] for b in (one, full)}
    vals = {b: [float(results[k]["budgets"][b]["val_accuracy"]) for k in keys] for b in (one, full)}
    probes = [float(results[k]["probe"]["test_accuracy"]) for k in keys]
    hist = [results[k]["budgets"][full]["history"] for k in keys]
    e2t = [M.epochs_to(h, target) for h in hist]

    def top3(b: str) -> float:  # of the first three picks, the one validating best, scored by test
        first = {i: vals[b][i] for i in range(min(3, len(keys)))}
        return accs[b][M.oracle_pick(first, {i: accs[b][i] for i in first}, 1)[0]]

    if draws:  # the mean draw: its accuracy, regret and epochs are the draws' means
        test = {b: float(np.mean(accs[b])) for b in accs}
        reached = [e for e in e2t if e is not None]
        out = {"test_acc": test[full], "test_acc_one_epoch": test[one], "test_acc_std": float(np.std(accs[full])),
               "test_acc_one_epoch_std": float(np.std(accs[one])), "draws": len(keys),
               "probe_test_acc": float(np.mean(probes)),
               "val_history": [float(v) for v in np.mean(hist, axis=0)],
               "epochs_to_scratch": float(np.mean(reached)) if len(reached) == len(e2t) else None}
    else:
        test = {b: accs[b][0] for b in accs}
        out = {"test_acc": test[full], "test_acc_one_epoch": test[one], "probe_test_acc": probes[0],
               "val_history": hist[0], "epochs_to_scratch": e2t[0]}
    out["answer_test_acc"] = answer(keys, results, full, draws)
    out |= {"regret_top1": 100.0 * (oracle[full] - test[full]), "regret_top1_one_epoch": 100.0 * (oracle[one] - test[one]),
            "regret_top3": 100.0 * (oracle[full] - top3(full)), "regret_top3_one_epoch": 100.0 * (oracle[one] - top3(one))}
    return out | {"query_seconds": m["query_seconds"], "forward_passes": m["forward_passes"]}


def answer(keys: list[str], results: dict, full: str, draws: bool = False) -> float | None:
    """The product's answer at the full budget, as `tans query` gives it: each of the first three picks keeps its
    linear probe where the probe validates at least as well as the fine-tuned network (the query's
    ``keep_probe``), and the pick validating best is the answer (the first on ties); its test accuracy. For the
    mean draw, the mean of each draw's kept network. None where the probe's validation accuracy is missing (a
    record made before it was measured). The fine-tuned network's figure is its best epoch of the whole budget
    (the benchmark trains without early stopping; a query stops after ``patience`` epochs without gain)."""
    kept = []
    for k in keys:
        probe, fit = results[k]["probe"], results[k]["budgets"][full]
        if probe.get("val_accuracy") is None:
            return None
        pv, fv = float(probe["val_accuracy"]), float(fit["val_accuracy"])
        # a training part of one class fits no probe (the query has none to keep): the fine-tuned network
        has_probe = probe.get("n_iter") is not None
        kept.append((pv, float(probe["test_accuracy"])) if has_probe and pv >= fv else (fv, float(fit["test_accuracy"])))
    if not kept:
        return None
    if draws:
        return float(np.mean([t for _, t in kept]))
    first = kept[:3]
    return max(first, key=lambda vt: vt[0])[1]  # max keeps the first of equal validation accuracies


def describe(idx, r: int) -> dict:
    return {"model_uri": model_uri(str(idx.names[r]), int(idx.versions[r])), "group": str(idx.groups[r]),
            "source_accuracy": float(idx.accuracy[r]), "n_params": int(idx.n_params[r]),
            "arch_hash": str(idx.arch_hashes[r])}


def flat_metrics(res: dict) -> dict:
    out = {}
    for name, m in res["methods"].items():
        for k in ("test_acc", "test_acc_one_epoch", "probe_test_acc", "answer_test_acc", "regret_top1", "regret_top3",
                  "epochs_to_scratch", "query_seconds", "forward_passes"):
            if isinstance(m.get(k), (int, float)):
                out[f"{name}_{k}"] = float(m[k])
    for k, v in res["weighted_tau"].items():
        if v is not None:
            out[f"weighted_tau_{k}"] = v
    out["floor_logreg_pixels"] = float(res["floors"]["logreg_pixels"])
    out |= {f"upper_bound_{b}": float(v) for b, v in res["upper_bound"].items() if v is not None}
    return out
