"""The benchmark's plots (PNG, matplotlib's Agg backend) and its table (text, as BENCHMARKS.md shows it)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

TABLE_METHODS = ("tans", "tans_predictor", "tans_logme", "logme_all", "random", "best_average", "top_source",
                 "largest", "scratch", "oracle")


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


def table(rec) -> str:
    """The text table `tans bench` prints: one block per dataset, one row per method, then the means."""
    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    lines = []
    for label, d in rec.datasets.items():
        lines.append(f"{label} ({d['dataset']['classes']} classes, {d['dataset']['n_train']} training + "
                     f"{d['dataset']['n_val']} validation images, {d['dataset']['test_images']} test; "
                     f"ground truth {d['ground_truth']['networks']} networks)")
        lines.append(f"  {'method':<16}{'acc 1ep':>8}{'acc':>13}{'regret1':>9}{'regret3':>9}{'ep>=scr':>8}"
                     f"{'seconds':>9}{'passes':>8}")
        for name in TABLE_METHODS:
            m = d["methods"].get(name)
            if m is None:
                continue
            acc = f(m["test_acc"]) + (f"±{m['test_acc_std']:.3f}" if "test_acc_std" in m else "")
            lines.append(f"  {name:<16}{f(m['test_acc_one_epoch']):>8}{acc:>13}{f(m['regret_top1'], '.1f'):>9}"
                         f"{f(m['regret_top3'], '.1f'):>9}{f(m['epochs_to_scratch'], 'g'):>8}"
                         f"{f(m['query_seconds'], '.2f'):>9}{f(m['forward_passes'], 'd'):>8}")
        tau = d["weighted_tau"]
        lines.append(f"  weighted tau vs fine-tuned accuracy: retrieval {f(tau['tans'])}, predictor "
                     f"{f(tau['predictor'])}, LogME {f(tau['logme'])}; scratch reaches {d['scratch_target']['val_accuracy']:.3f}"
                     f" (validation) at epoch {f(d['scratch_target']['scratch_epochs'], 'g')}")
    lines.append(f"{len(rec.datasets)} datasets in {rec.seconds / 60:.1f} min; run {rec.run_id} in tans/bench"
                 + (f"; plots: {', '.join(rec.plots)}" if rec.plots else ""))
    return "\n".join(lines)


GOALS = (
    ("beats_random_and_best_average", "tans's fine-tuned accuracy >= random's (mean draw) and best_average's, "
                                      "on at least 3 of 4 datasets"),
    ("mean_regret", "tans's mean top-1 regret (full budget) under 2 points"),
    ("tau_vs_logme", "retrieval's weighted tau >= LogME-all's (mean over datasets)"),
    ("forward_passes", "at least 100x fewer forward passes than LogME-all"),
    ("epochs_vs_scratch", "tans's start reaches scratch's final validation accuracy in at most a third of "
                          "scratch's epochs (every dataset)"),
)


def goals(datasets: dict) -> list[dict]:
    """Issue 13's goals, each ``{"goal", "text", "met", "value"}``, from ``datasets`` (name -> one dataset's
    figures, as `tans bench --json` writes them under ``datasets``). ``met`` is None where a figure is missing."""
    def m(d, name, key):
        return d["methods"].get(name, {}).get(key)

    n = len(datasets)
    out = []
    wins = [all(m(d, "tans", "test_acc") is not None and m(d, o, "test_acc") is not None
                and m(d, "tans", "test_acc") >= m(d, o, "test_acc") for o in ("random", "best_average"))
            for d in datasets.values()]
    need = math.ceil(0.75 * n)
    out.append({"value": f"{sum(wins)} of {n}", "met": sum(wins) >= need if n else None})
    regrets = [m(d, "tans", "regret_top1") for d in datasets.values()]
    mean_regret = float(np.mean(regrets)) if regrets and None not in regrets else None
    out.append({"value": None if mean_regret is None else f"{mean_regret:.2f} points",
                "met": None if mean_regret is None else mean_regret < 2.0})
    taus = [(d["weighted_tau"].get("tans"), d["weighted_tau"].get("logme")) for d in datasets.values()]
    taus = [(a, b) for a, b in taus if a is not None and b is not None]
    if taus:
        ta, tb = float(np.mean([a for a, _ in taus])), float(np.mean([b for _, b in taus]))
        out.append({"value": f"{ta:.3f} vs {tb:.3f} ({sum(a >= b for a, b in taus)} of {len(taus)} datasets)",
                    "met": ta >= tb})
    else:
        out.append({"value": None, "met": None})
    ratios = [m(d, "logme_all", "forward_passes") / max(m(d, "tans", "forward_passes"), 1) for d in datasets.values()
              if m(d, "logme_all", "forward_passes") is not None and m(d, "tans", "forward_passes") is not None]
    out.append({"value": f"{min(ratios):.0f}x fewer (least)" if ratios else None,
                "met": min(ratios) >= 100 if ratios else None})
    per = []
    for d in datasets.values():
        scratch = d["scratch_target"]["scratch_epochs"]
        mine = m(d, "tans", "epochs_to_scratch")
        per.append(None if scratch is None or mine is None else (mine, scratch))
    if per and None not in per:
        out.append({"value": ", ".join(f"{a} vs {b}" for a, b in per), "met": all(3 * a <= b for a, b in per)})
    else:
        out.append({"value": ", ".join("never" if p is None else f"{p[0]} vs {p[1]}" for p in per) or None,
                    "met": False if per else None})
    return [{"goal": g, "text": t} | o for (g, t), o in zip(GOALS, out)]


def markdown(datasets: dict) -> str:
    """BENCHMARKS.md's table: one row per method, one column pair (one epoch / full budget) per dataset, then
    the regrets, the scorers' weighted tau and the goals."""
    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    names = list(datasets)
    head = "| method | " + " | ".join(f"{n} 1 ep / full" for n in names) + " | mean regret 1 ep / full | passes |"
    lines = [head, "|" + "---|" * (len(names) + 3)]
    for meth in TABLE_METHODS:
        rows = [d["methods"].get(meth) for d in datasets.values()]
        if all(r is None for r in rows):
            continue
        cells = []
        for r in rows:
            if r is None:
                cells.append("-")
                continue
            std = f" ±{r['test_acc_std']:.3f}" if "test_acc_std" in r else ""
            cells.append(f"{f(r['test_acc_one_epoch'])} / {f(r['test_acc'])}{std}")
        reg1 = [r["regret_top1_one_epoch"] for r in rows if r is not None and r.get("regret_top1_one_epoch") is not None]
        reg = [r["regret_top1"] for r in rows if r is not None and r.get("regret_top1") is not None]
        passes = sorted({r["forward_passes"] for r in rows if r is not None and r.get("forward_passes") is not None})
        lines.append(f"| {meth} | " + " | ".join(cells)
                     + f" | {f(np.mean(reg1) if reg1 else None, '.1f')} / {f(np.mean(reg) if reg else None, '.1f')}"
                     + f" | {'-' if not passes else '/'.join(str(p) for p in passes)} |")
    lines.append("")
    lines.append("| dataset | classes | train + val / test | ground truth | tau retrieval | tau predictor | tau LogME "
                 "| scratch epochs | tans epochs to scratch's |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for n, d in datasets.items():
        ds, tau = d["dataset"], d["weighted_tau"]
        lines.append(f"| {n} | {ds['classes']} | {ds['n_train']} + {ds['n_val']} / {ds['test_images']} | "
                     f"{d['ground_truth']['networks']} | {f(tau.get('tans'))} | {f(tau.get('predictor'))} | "
                     f"{f(tau.get('logme'))} | {f(d['scratch_target']['scratch_epochs'], 'g')} | "
                     f"{f(d['methods']['tans'].get('epochs_to_scratch'), 'g')} |")
    lines.append("")
    lines.append("| goal | measured | met |")
    lines.append("|---|---|---|")
    for g in goals(datasets):
        lines.append(f"| {g['text']} | {g['value'] or '-'} | {'-' if g['met'] is None else ('yes' if g['met'] else 'no')} |")
    return "\n".join(lines)
