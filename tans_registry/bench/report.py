"""The benchmark's plots (PNG, matplotlib's Agg backend) and its table (text, as BENCHMARKS.md shows it)."""
from __future__ import annotations

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
