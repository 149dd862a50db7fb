"""The transfer predictor, learnt from the transfer table after the encoders' contrastive training.

The contrastive encoders and the accuracy predictor learn *source* accuracy (how well a network does on the
data it was trained on); what a query needs is accuracy *after fine-tuning on a new dataset*. The transfer
table (`tans zoo transfer`, and every `tans query --finetune`) holds exactly that. Each record becomes one
example: the task's query embedding (its images re-derived from the data directory and checked against the
record's fingerprint; a task that cannot be re-derived is left out and counted), the start's model embedding,
topology, size, source dataset embedding and source accuracy (all through the frozen, just-trained encoders,
as the index will hold them), and as target the start's test accuracy after the full budget.

The loss and inputs are chosen on the selection datasets (:data:`~tans_registry.data.manifest.SELECTION_DATASETS`)
only: every variant of :data:`VARIANTS` is trained on the records of the other tasks and scored by its mean
weighted tau on the selection tasks' records; the best is kept (trained on the other tasks' records only, so
that `tans bench --selection` still measures it on tasks it never saw), and the training run records the
variants' figures and the choice. Benchmark records (source ``bench``: reported
datasets) are never used unless asked for (an ablation), so the benchmark's datasets stay unseen.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..data import load_dataset
from ..data.manifest import SELECTION_DATASETS
from ..encoders.backbone import extract_features, sample_per_class
from ..encoders.models import TansEncoders, TransferPredictor
from ..validation.metrics import weighted_tau

log = logging.getLogger("tans_registry")
# variant -> (loss, sees the source dataset and accuracy)
VARIANTS = {"pairwise": ("pairwise", True), "pairwise-nosource": ("pairwise", False), "mse": ("mse", True),
            "mse-nosource": ("mse", False)}
STEPS, LR = 300, 1e-3


@dataclass
class Examples:
    """One row per usable record; per task its query embedding and dataset."""

    task: np.ndarray          # [R] task index
    q: torch.Tensor           # [T, D] task query embeddings
    datasets: list[str]       # [T] the dataset each task was loaded from
    m: torch.Tensor           # [R, D] model embeddings
    topology: torch.Tensor    # [R, 45]
    log_params: torch.Tensor  # [R]
    source: torch.Tensor      # [R, D] source dataset embeddings
    source_acc: torch.Tensor  # [R]
    target: np.ndarray        # [R] fine-tuned test accuracy (full budget)
    skipped: int = 0          # records whose task or start could not be found again

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, keep: np.ndarray) -> "Examples":
        k = torch.from_numpy(keep)
        return replace(self, task=self.task[keep], m=self.m[k], topology=self.topology[k],
                       log_params=self.log_params[k], source=self.source[k], source_acc=self.source_acc[k],
                       target=self.target[keep])


@torch.no_grad()
def gather(enc: TansEncoders, records: list[dict], starts: dict[str, dict], backbone, data_dir, k: int,
           seed: int) -> Examples | None:
    """The examples of ``records``: of each task, its records at its full budget (the largest it was fine-tuned
    at), fine-tuned networks only (a query that kept its linear probe says nothing of fine-tuning). ``starts``:
    model URI -> the start's ``topology``, ``functional``, ``n_params``, ``accuracy`` and its group's query-set
    ``features`` (what the index embeds)."""
    full: dict[str, float] = {}
    for r in records:
        full[r["task_fingerprint"]] = max(full.get(r["task_fingerprint"], 0.0), r["budget"])
    rows = [r for r in records if r["budget"] == full[r["task_fingerprint"]] and r["test_accuracy"] is not None
            and r.get("kept", "finetuned") != "probe"]
    tasks: dict[str, int] = {}
    q, datasets, keep, skipped = [], [], [], 0
    cache: dict[str, object] = {}
    for r in rows:
        fp = r["task_fingerprint"]
        if fp not in tasks and fp not in cache:
            cache[fp] = _task_data(r, data_dir)
        ds = cache.get(fp)
        if ds is None or r["start"] not in starts:
            skipped += 1
            continue
        if fp not in tasks:
            tasks[fp] = len(q)
            feats = extract_features(backbone, ds.x_train[sample_per_class(ds, k, seed)])
            q.append(enc.query(torch.from_numpy(feats)[None])[0])
            datasets.append(r["task_dataset"])
        keep.append((tasks[fp], r))
    if not keep:
        return None
    info = [starts[r["start"]] for _, r in keep]
    topo = torch.from_numpy(np.stack([s["topology"] for s in info]).astype(np.float32))
    func = torch.from_numpy(np.stack([s["functional"] for s in info]).astype(np.float32))
    groups = {id(s["features"]): s["features"] for s in info}
    source = {g: enc.query(torch.from_numpy(f)[None])[0] for g, f in groups.items()}
    return Examples(task=np.array([t for t, _ in keep]), q=torch.stack(q), datasets=datasets,
                    m=enc.model(topo, func if enc.cfg.use_functional else None), topology=topo,
                    log_params=torch.tensor([np.log10(max(s["n_params"], 1)) for s in info], dtype=torch.float32),
                    source=torch.stack([source[id(s["features"])] for s in info]),
                    source_acc=torch.tensor([s["accuracy"] for s in info], dtype=torch.float32),
                    target=np.array([r["test_accuracy"] for _, r in keep], dtype=np.float64), skipped=skipped)


def _task_data(record: dict, data_dir):
    """The record's task loaded again as it was (``task_data``: the spec, seed and caps it was loaded with), or
    None when it cannot be found or its data changed (its fingerprint no longer matches)."""
    d = record.get("task_data") or {}
    if not d.get("spec"):
        return None
    try:
        ds = load_dataset(d["spec"], data_dir=data_dir, seed=int(d.get("seed") or 0), max_train=d.get("max_train"),
                          max_test=d.get("max_test"))
    except Exception:  # noqa: BLE001 - a dataset that is gone or unreadable: the record is skipped
        return None
    return ds if ds.fingerprint() == record["task_fingerprint"] else None


def _scores(model: TransferPredictor, ex: Examples) -> torch.Tensor:
    return model(ex.q[torch.from_numpy(ex.task)], ex.m, ex.topology, ex.log_params, ex.source, ex.source_acc)


def _loss(kind: str, s: torch.Tensor, ex: Examples) -> torch.Tensor:
    target = torch.from_numpy(ex.target).float()
    task = torch.from_numpy(ex.task)
    same = task[:, None] == task[None, :]
    if kind == "pairwise":  # every ordered pair of one task's starts: logistic loss on the score difference
        better = same & (target[:, None] > target[None, :] + 1e-9)
        if not better.any():
            return s.sum() * 0.0
        diff = (s[:, None] - s[None, :])[better]
        return torch.nn.functional.softplus(-diff).mean()
    # mse on each task's centred accuracies (the levels of different tasks are not comparable)
    mean = (same.float() @ target) / same.float().sum(1)
    return ((s - (target - mean) * 10.0) ** 2).mean()


def train_variant(cfg, variant: str, ex: Examples, seed: int) -> TransferPredictor:
    loss, source = VARIANTS[variant]
    torch.manual_seed(seed)
    model = TransferPredictor(replace(cfg, transfer_loss=loss, transfer_source=source))
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=1e-4)
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        _loss(loss, _scores(model, ex), ex).backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def mean_tau(model: TransferPredictor, ex: Examples) -> float:
    """Mean weighted tau, over the tasks of ``ex``, of the model's scores against the fine-tuned accuracies."""
    s = _scores(model, ex).numpy()
    taus = [weighted_tau(s[ex.task == t], ex.target[ex.task == t]) for t in np.unique(ex.task)]
    taus = [t for t in taus if np.isfinite(t)]
    return float(np.mean(taus)) if taus else float("nan")


@torch.no_grad()
def mean_regret(model: TransferPredictor, ex: Examples) -> float:
    """Mean top-1 regret in points, over the tasks of ``ex``: a task's best fine-tuned test accuracy among its
    records minus that of the record the model scores highest (ties: the first)."""
    s = _scores(model, ex).numpy()
    out = []
    for t in np.unique(ex.task):
        sel = ex.task == t
        out.append(100.0 * (ex.target[sel].max() - ex.target[sel][int(np.argmax(s[sel]))]))
    return float(np.mean(out)) if out else float("nan")


def fit_transfer(enc: TansEncoders, ex: Examples, seed: int) -> dict:
    """Choose the variant on the selection datasets' tasks, train it on every example, attach it to ``enc``
    (``enc.transfer``, ``enc.cfg.transfer_*``); returns what the run records."""
    selection = np.array([ex.datasets[t] in SELECTION_DATASETS for t in ex.task])
    figures: dict[str, float] = {}
    if selection.any() and (~selection).any():
        train, held = ex.subset(~selection), ex.subset(selection)
        for name in VARIANTS:
            figures[name] = mean_tau(train_variant(enc.cfg, name, train, seed), held)
        finite = {k: v for k, v in figures.items() if np.isfinite(v)}
        chosen = max(finite, key=finite.get) if finite else "pairwise"
        why = "best mean weighted tau on the selection datasets' tasks" if finite else \
            "the first variant (the selection tasks' figures are undefined)"
        # the kept predictor never learns the selection tasks: `tans bench --selection` stays a fair check of it
        ex = train
    else:
        chosen, why = "pairwise", "the first variant (no records of both selection and other datasets)"
    model = train_variant(enc.cfg, chosen, ex, seed)
    loss, source = VARIANTS[chosen]
    enc.cfg = replace(enc.cfg, transfer_loss=loss, transfer_source=source)
    enc.transfer = model
    return {"variant": chosen, "why": why, "selection_tau": figures, "records": len(ex), "tasks": len(ex.q),
            "skipped": ex.skipped, "train_tau": mean_tau(model, ex)}
