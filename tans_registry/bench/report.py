"""The benchmark's plots (PNG, matplotlib's Agg backend) and its table (text, as BENCHMARKS.md shows it)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .config import METHODS

TABLE_METHODS = METHODS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dataset(label: str, res: dict, path: Path) -> Path:
    """Validation accuracy after each epoch (the full budget) of every method's start on one dataset."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name in TABLE_METHODS:
        m = res["methods"].get(name)
        if m is None or not m.get("val_history"):
            continue
        h = m["val_history"]
        ax.plot(range(1, len(h) + 1), h, marker="o", markersize=3, label=name,
                linestyle="--" if name in ("scratch", "oracle") else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{label}: fine-tuning from each method's start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_regrets(datasets: dict, path: Path) -> Path:
    """Mean top-1 regret (points below the oracle) of each method over the datasets, at both budgets."""
    plt = _plt()
    names = [n for n in TABLE_METHODS if n != "oracle" and all(n in d["methods"] for d in datasets.values())]
    full = [np.mean([d["methods"][n]["regret_top1"] for d in datasets.values()]) for n in names]
    one = [np.mean([d["methods"][n]["regret_top1_one_epoch"] for d in datasets.values()]) for n in names]
    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=110)
    x = np.arange(len(names))
    ax.bar(x - 0.2, one, 0.4, label="one epoch")
    ax.bar(x + 0.2, full, 0.4, label="full budget")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("top-1 regret (points below the oracle)")
    ax.set_title(f"regret over {len(datasets)} query datasets")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_forest(intervals: dict, path: Path) -> Path:
    """The pooled paired differences (points) with their 95% bootstrap intervals, one row each."""
    plt = _plt()
    rows = [(k, v) for k, v in intervals.items() if v.get("mean") is not None]
    fig, ax = plt.subplots(figsize=(7.0, 0.32 * max(len(rows), 3) + 1.2), dpi=110)
    for i, (k, v) in enumerate(rows):
        ax.plot([v["low"], v["high"]], [i, i], color="tab:blue")
        ax.plot([v["mean"]], [i], "o", color="tab:blue", markersize=4)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [k for k, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ns = sorted({v["n"] for _, v in rows})
    ax.set_xlabel("points (mean and 95% paired bootstrap interval)")
    ax.set_title(f"pooled over {'/'.join(map(str, ns)) or 0} (dataset, seed) pairs")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _acc_cell(m: dict, key: str) -> str:
    v = m.get(key)
    if v is None:
        return "-"
    spread = (m.get("spread") or {}).get(key)
    return f"{v:.3f}" + (f"±{spread:.3f}" if spread is not None and len(m.get("seeds", {}).get(key, [])) > 1 else "")


def table(rec) -> str:
    """The text table `tans bench` prints: one block per dataset, one row per method, then the means."""
    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    lines = []
    for label, d in rec.datasets.items():
        lines.append(f"{label} ({d['dataset']['classes']} classes, {d['dataset']['n_train']} training + "
                     f"{d['dataset']['n_val']} validation images, {d['dataset']['test_images']} test; "
                     f"ground truth {d['ground_truth']['networks']} networks; seeds {', '.join(map(str, d['seeds']))}; "
                     f"mean±sd over seeds)")
        lines.append(f"  {'method':<16}{'acc 1ep':>14}{'acc':>14}{'probe':>8}{'answer':>8}{'regret1':>9}{'regret3':>9}"
                     f"{'ep>=scr':>8}{'seconds':>9}{'passes':>8}")
        for name in TABLE_METHODS:
            m = d["methods"].get(name)
            if m is None:
                continue
            passes = m["forward_passes"]
            lines.append(f"  {name:<16}{_acc_cell(m, 'test_acc_one_epoch'):>14}{_acc_cell(m, 'test_acc'):>14}"
                         f"{f(m.get('probe_test_acc')):>8}{f(m.get('answer_test_acc')):>8}{f(m['regret_top1'], '.1f'):>9}"
                         f"{f(m['regret_top3'], '.1f'):>9}{f(m['epochs_to_scratch'], 'g'):>8}"
                         f"{f(m['query_seconds'], '.2f'):>9}{f(passes, 'g'):>8}")
        tau = d["weighted_tau"]
        lines.append(f"  oracle (best validation) {f(d['oracle']['full'])}; best test (upper bound) "
                     f"{f(d['upper_bound']['full'])}; logistic regression on pixels {f(d['floors']['logreg_pixels'])}")
        lines.append(f"  weighted tau vs fine-tuned accuracy: retrieval {f(tau['tans'])}, predictor "
                     f"{f(tau['predictor'])}, hybrid {f(tau.get('hybrid'))}, LogME {f(tau['logme'])}, LEEP "
                     f"{f(tau.get('leep'))}, NCE {f(tau.get('nce'))}; scratch reaches {d['scratch_target']['val_accuracy']:.3f}"
                     f" (validation) at epoch {f(d['scratch_target']['scratch_epochs'], 'g')}")
    iv = getattr(rec, "intervals", None) or {}
    method = default_method()
    for k in (f"{method}_minus_best_average", f"{method}_minus_random", f"regret_{method}"):
        v = iv.get(k)
        if v and v.get("mean") is not None:
            lines.append(f"{k}: {v['mean']:+.1f} points, 95% interval [{v['low']:+.1f}, {v['high']:+.1f}] over "
                         f"{v['n']} (dataset, seed) pairs")
    lines.append(f"answer: the product's answer ({method}'s first three picks, each its probe or its fine-tuned "
                 "network, whichever validates better; the best validating); regret1/3 against the oracle")
    lines.append(f"{len(rec.datasets)} datasets in {rec.seconds / 60:.1f} min; run {rec.run_id} in tans/bench"
                 + (f"; plots: {', '.join(rec.plots)}" if rec.plots else ""))
    return "\n".join(lines)


GOALS = (
    ("beats_random_and_best_average", "the default policy's fine-tuned accuracy >= random's (mean draw) and "
                                      "best_average's, on at least three quarters of the datasets"),
    ("interval_vs_best_average", "the pooled paired 95% interval of the default policy minus best_average (full "
                                 "budget) not entirely below 0"),
    ("mean_regret", "the default policy's mean top-1 regret (full budget) under 2 points"),
    ("tau_vs_logme", "the default ranking's weighted tau >= LogME-all's (mean over datasets)"),
    ("forward_passes", "at least 100x fewer forward passes than LogME-all (re-ranking passes counted)"),
    ("answer_vs_logreg", "the product's answer (the default policy's picks, each kept as its probe or fine-tuned "
                         "network, the best validating) >= logistic regression on pixels, on every dataset"),
    ("epochs_vs_scratch", "the default policy's start reaches scratch's final validation accuracy in at most a "
                          "third of scratch's epochs (every dataset)"),
)
# the benchmark method of each `tans query --rerank` policy, and the weighted-tau scorer of its ranking
POLICY_METHOD = {"none": "tans", "predictor": "tans_predictor", "logme": "tans_logme", "hybrid": "tans_hybrid"}
# (LogME's re-rank of a retrieved shortlist has no full ranking of its own here: its tau is not LogME-all's)
METHOD_SCORER = {"tans": "tans", "tans_predictor": "predictor", "tans_logme": None, "tans_hybrid": "hybrid"}


def default_method() -> str:
    """The benchmark method that is `tans query`'s default policy (its ``--rerank`` default)."""
    from ..finetune.config import QueryConfig

    return POLICY_METHOD[QueryConfig.__dataclass_fields__["rerank"].default]


def goals(datasets: dict, intervals: dict | None = None, method: str | None = None) -> list[dict]:
    """The goals (issue 23's, with issue 13's epochs goal), each ``{"goal", "text", "met", "value", "method"}``,
    for ``method`` (default: :func:`default_method`), from ``datasets`` (name -> one dataset's figures, as `tans
    bench --json` writes them under ``datasets``) and the pooled ``intervals``. ``met`` is None where a figure
    is missing."""
    method = method or default_method()

    def m(d, name, key):
        return d["methods"].get(name, {}).get(key)

    n = len(datasets)
    out = []
    wins = [all(m(d, method, "test_acc") is not None and m(d, o, "test_acc") is not None
                and m(d, method, "test_acc") >= m(d, o, "test_acc") for o in ("random", "best_average"))
            for d in datasets.values()]
    need = math.ceil(0.75 * n)
    out.append({"value": f"{sum(wins)} of {n} (need {need})", "met": sum(wins) >= need if n else None})
    iv = (intervals or {}).get(f"{method}_minus_best_average")
    if iv and iv.get("mean") is not None:
        out.append({"value": f"{iv['mean']:+.1f} [{iv['low']:+.1f}, {iv['high']:+.1f}] points", "met": iv["high"] >= 0})
    else:
        out.append({"value": None, "met": None})
    regrets = [m(d, method, "regret_top1") for d in datasets.values()]
    mean_regret = float(np.mean(regrets)) if regrets and None not in regrets else None
    out.append({"value": None if mean_regret is None else f"{mean_regret:.2f} points",
                "met": None if mean_regret is None else mean_regret < 2.0})
    scorer = METHOD_SCORER.get(method, method)
    taus = [(d["weighted_tau"].get(scorer) if scorer else None, d["weighted_tau"].get("logme")) for d in datasets.values()]
    taus = [(a, b) for a, b in taus if a is not None and b is not None]
    if taus:
        ta, tb = float(np.mean([a for a, _ in taus])), float(np.mean([b for _, b in taus]))
        out.append({"value": f"{ta:.3f} vs {tb:.3f} ({sum(a >= b for a, b in taus)} of {len(taus)} datasets)",
                    "met": ta >= tb})
    else:
        out.append({"value": None, "met": None})
    ratios = [m(d, "logme_all", "forward_passes") / max(m(d, method, "forward_passes"), 1) for d in datasets.values()
              if m(d, "logme_all", "forward_passes") is not None and m(d, method, "forward_passes") is not None]
    out.append({"value": f"{min(ratios):.0f}x fewer (least)" if ratios else None,
                "met": min(ratios) >= 100 if ratios else None})
    floors = [(m(d, method, "answer_test_acc"), (d.get("floors") or {}).get("logreg_pixels")) for d in datasets.values()]
    if floors and all(a is not None and b is not None for a, b in floors):
        below = [(name, a, b) for name, (a, b) in zip(datasets, floors) if a < b]
        out.append({"value": f"{n - len(below)} of {n}" + ("" if not below else "; below: " + ", ".join(
            f"{name} {a:.3f} < {b:.3f}" for name, a, b in below)), "met": not below})
    else:
        out.append({"value": None, "met": None})
    per = []
    for d in datasets.values():
        scratch = d["scratch_target"]["scratch_epochs"]
        mine = m(d, method, "epochs_to_scratch")
        per.append(None if scratch is None or mine is None else (mine, scratch))
    if per and None not in per:
        out.append({"value": ", ".join(f"{a} vs {b}" for a, b in per), "met": all(3 * a <= b for a, b in per)})
    else:
        out.append({"value": ", ".join("never" if p is None else f"{p[0]} vs {p[1]}" for p in per) or None,
                    "met": False if per else None})
    return [{"goal": g, "text": t, "method": method} | o for (g, t), o in zip(GOALS, out)]


def markdown(datasets: dict, intervals: dict | None = None, method: str | None = None) -> str:
    """BENCHMARKS.md's tables: one row per dataset, one column per method (mean ±sd over seeds) at the full
    budget and at one epoch, with the validation-picked oracle, the best test accuracy (upper bound) and
    logistic regression on pixels beside them; the mean regrets; the scorers' weighted tau; the pooled
    intervals (when given); the goals."""
    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    meths = [m for m in TABLE_METHODS if any(m in d["methods"] for d in datasets.values())]

    def cell(d: dict, meth: str, key: str) -> str:
        r = d["methods"].get(meth)
        if r is None or r.get(key) is None:
            return "-"
        sd = (r.get("spread") or {}).get(key)
        if sd is None and key == "test_acc" and "test_acc_std" in r:
            sd = r["test_acc_std"]
        return f(r[key]) + ("" if sd is None else f" ±{sd:.3f}")

    lines = []
    for title, key, bkey in (("full budget", "test_acc", "full"), ("one epoch", "test_acc_one_epoch", "one_epoch")):
        lines.append(f"Test accuracy, {title} (mean ±sd over seeds):")
        lines.append("")
        lines.append("| dataset | " + " | ".join(meths) + " | best test (upper bound) | logreg pixels |")
        lines.append("|" + "---|" * (len(meths) + 3))
        for n, d in datasets.items():
            ub = (d.get("upper_bound") or {}).get(bkey)
            lr = (d.get("floors") or {}).get("logreg_pixels")
            lines.append(f"| {n} | " + " | ".join(cell(d, m, key) for m in meths) + f" | {f(ub)} | {f(lr)} |")
        lines.append("")
    lines.append("| method | mean regret 1 ep / full (points) | mean linear probe | passes |")
    lines.append("|---|---|---|---|")
    for meth in meths:
        rows = [d["methods"][meth] for d in datasets.values() if meth in d["methods"]]
        reg1 = [r["regret_top1_one_epoch"] for r in rows if r.get("regret_top1_one_epoch") is not None]
        reg = [r["regret_top1"] for r in rows if r.get("regret_top1") is not None]
        probe = [r["probe_test_acc"] for r in rows if r.get("probe_test_acc") is not None]
        passes = sorted({r["forward_passes"] for r in rows if r.get("forward_passes") is not None})
        lines.append(f"| {meth} | {f(np.mean(reg1) if reg1 else None, '.1f')} / {f(np.mean(reg) if reg else None, '.1f')}"
                     f" | {f(np.mean(probe) if probe else None)} | {'-' if not passes else '/'.join(format(p, 'g') for p in passes)} |")
    lines.append("")
    method = method or default_method()
    extra = [k for k in ("hybrid", "leep", "nce") if any(k in d["weighted_tau"] for d in datasets.values())]
    lines.append("| dataset | classes | train + val / test | ground truth | tau retrieval | tau predictor | tau LogME "
                 + "".join(f"| tau {k if k == 'hybrid' else k.upper()} " for k in extra)
                 + f"| scratch epochs | {method} epochs to scratch's |")
    lines.append("|---|---|---|---|---|---|---|" + "---|" * len(extra) + "---|---|")
    for n, d in datasets.items():
        ds, tau = d["dataset"], d["weighted_tau"]
        lines.append(f"| {n} | {ds['classes']} | {ds['n_train']} + {ds['n_val']} / {ds['test_images']} | "
                     f"{d['ground_truth']['networks']} | {f(tau.get('tans'))} | {f(tau.get('predictor'))} | "
                     f"{f(tau.get('logme'))} | " + "".join(f"{f(tau.get(k))} | " for k in extra)
                     + f"{f(d['scratch_target']['scratch_epochs'], 'g')} | "
                     f"{f(d['methods'].get(method, {}).get('epochs_to_scratch'), 'g')} |")
    if intervals:
        lines.append("")
        lines.append("| paired difference (points) | mean | 95% interval | pairs |")
        lines.append("|---|---|---|---|")
        for k, v in intervals.items():
            if v.get("mean") is not None:
                lines.append(f"| {k} | {v['mean']:+.1f} | [{v['low']:+.1f}, {v['high']:+.1f}] | {v['n']} |")
    lines.append("")
    lines.append(f"Goals for `{method}`" + (" (`tans query`'s default policy)" if method == default_method() else "")
                 + ":")
    lines.append("")
    lines.append("| goal | measured | met |")
    lines.append("|---|---|---|")
    for g in goals(datasets, intervals, method):
        lines.append(f"| {g['text']} | {g['value'] or '-'} | {'-' if g['met'] is None else ('yes' if g['met'] else 'no')} |")
    return "\n".join(lines)
