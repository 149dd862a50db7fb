"""``tans encoders train``: meta-contrastive training of the encoders on the zoo, tracked in MLflow.

Each step takes every training group once: a random half of its query set (instance dropout, so the
encoder sees many sets per dataset) and one positive network, sampled among the group's networks with
probability rising with measured accuracy (``positive_sharpness``: 0 = uniform, as TANS; the default
prefers the better networks, since "near the dataset" should mean "does well on it"). The loss is the
contrastive term (hinge over all in-batch negatives in both directions, or InfoNCE) plus the
predictor's MSE on the positive and on ``rank_pairs`` pairs of random networks of the same group, plus
a pairwise ranking term on those pairs (``rank_weight``): the predictor must order networks *within* a
dataset, which the MSE alone, dominated by each dataset's accuracy level, did not teach it (weighted
tau on held-out datasets below zero). Validation holds out whole datasets.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import tracking
from ..errors import ConfigError
from .backbone import extract_features, sample_per_class, save_backbone, train_backbone
from .losses import hinge_loss, info_nce_loss, pairwise_rank_loss, predictor_loss
from .meta import MetaGroup, load_meta_groups, load_meta_snapshot, split_by_dataset
from .metrics import mean_weighted_tau, predictor_errors, retrieval_report
from .models import EncoderConfig, TansEncoders, retrieval_scores
from ..registry.index import ENCODERS_MODEL

log = logging.getLogger("tans_registry")
BACKBONE_MODEL = "tans-backbone"
SCORE_TAG = "tans.val_score"  # selection_score() of the version's best checkpoint


@dataclass(frozen=True)
class EncoderTrainConfig:
    steps: int = 300
    lr: float = 1e-3                 # Adam (the reference's 1e-2 diverged in our runs' early checks)
    k_per_class: int = 20            # images per class in a query set (MetaD2A: 20)
    pooling: str = "mean"
    loss: str = "hinge"              # or "infonce"
    margin: float = 0.2              # TANS
    temperature: float = 0.1
    predictor_weight: float = 1.0    # TANS: 1:1
    # The functional embedding (penultimate activation on noise probes) is off by default: on held-out
    # datasets it made retrieval and ranking worse in both measured snapshots of the bench zoo
    # (BENCHMARKS.md, "Encoders"); `--functional` turns it on.
    use_functional: bool = False
    use_predictor: bool = True
    predictor_topology: bool = True  # the predictor also sees the topology (EncoderConfig)
    rank_weight: float = 1.0         # pairwise ranking term of the predictor (0: MSE only)
    rank_pairs: int = 4              # random same-group pairs per group per step for the predictor
    dataset_weight: float = 1.0      # retrieval: + weight * cos(query, network's source dataset)
    rerank_top: int = 100            # the predictor re-ranks this many retrieved networks
    # ... of the first group among them (0: all; EncoderConfig). The whole shortlist mixed other datasets'
    # networks into the top: xgood Recall@1 0.6 vs 1.0 on the bench zoo (BENCHMARKS.md, "Encoders").
    rerank_groups: int = 1
    positive_sharpness: float = 5.0  # positive sampling ~ exp(sharpness * accuracy)
    val_datasets: tuple[str, ...] | None = None
    eval_every: int = 20
    patience: int = 5                # evaluations without improvement before stopping
    backbone_epochs: float = 2.0
    seed: int = 777                  # TANS's seed
    work_dir: str | None = None
    data_dir: str | None = None
    snapshot: str | None = None      # learn from a zoo snapshot file instead of the work dir's zoo
    register: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"--steps must be an int >= 1; got {self.steps}")
        if self.loss not in ("hinge", "infonce"):
            raise ConfigError(f"--loss must be 'hinge' or 'infonce'; got {self.loss!r}")
        if self.pooling not in ("mean", "attention"):
            raise ConfigError(f"--pooling must be 'mean' or 'attention'; got {self.pooling!r}")
        if self.k_per_class < 1:
            raise ConfigError(f"--k-per-class must be >= 1; got {self.k_per_class}")
        if self.rank_pairs < 1 or self.rerank_top < 1:
            raise ConfigError("rank_pairs and rerank_top must be >= 1")
        if self.rerank_groups < 0:
            raise ConfigError(f"--rerank-groups must be >= 0 (0: every retrieved network); got {self.rerank_groups}")
        if self.dataset_weight < 0 or self.rank_weight < 0:
            raise ConfigError("dataset_weight and rank_weight must be >= 0")


def prepare(cfg: EncoderTrainConfig, exp_zoo: str):
    """Groups with their query-set features, the backbone, and the train/val split."""
    groups = load_meta_snapshot(cfg.snapshot, cfg.data_dir) if cfg.snapshot else load_meta_groups(exp_zoo, cfg.data_dir)
    train, val, val_names = split_by_dataset(groups, list(cfg.val_datasets) if cfg.val_datasets else None, cfg.seed)
    # the backbone learns from the training groups' whole source datasets, never the validation ones
    sources = {g.dataset: g.source if g.source is not None else g.data for g in train}
    backbone = train_backbone(list(sources.values()), epochs=cfg.backbone_epochs, seed=cfg.seed)
    for g in groups:
        g.features = extract_features(backbone, g.data.x_train[sample_per_class(g.data, cfg.k_per_class, cfg.seed)])
    return train, val, val_names, backbone


def _set_batch(groups: list[MetaGroup], rng: np.random.Generator | None, frac: float = 0.5):
    """Padded [B, N, F] features and mask; with ``rng``, a random ``frac`` of each set."""
    sets = []
    for g in groups:
        f = g.features
        if rng is not None and len(f) > 2:
            f = f[rng.permutation(len(f))[: max(2, int(len(f) * frac))]]
        sets.append(f)
    n = max(len(s) for s in sets)
    x = np.zeros((len(sets), n, sets[0].shape[1]), np.float32)
    mask = np.zeros((len(sets), n), bool)
    for i, s in enumerate(sets):
        x[i, : len(s)] = s
        mask[i, : len(s)] = True
    return torch.from_numpy(x), torch.from_numpy(mask)


def embed_models(enc: TansEncoders, groups: list[MetaGroup]) -> tuple[torch.Tensor, np.ndarray]:
    """Model embeddings of every network of ``groups`` and the group index of each."""
    topo = torch.from_numpy(np.concatenate([g.topology for g in groups]))
    func = torch.from_numpy(np.concatenate([g.functional for g in groups]))
    return enc.model(topo, func if enc.cfg.use_functional else None), _owners(groups)


def _owners(groups: list[MetaGroup]) -> np.ndarray:
    """The group index of every network of ``groups``, in order."""
    return np.concatenate([[i] * len(g.accuracy) for i, g in enumerate(groups)])


def _candidates(val: list[MetaGroup], zoo: list[MetaGroup]) -> list[MetaGroup]:
    """What a validation query searches: the zoo and the validation groups' own networks."""
    return zoo + [g for g in val if g not in zoo]


def _good_siblings(val: list[MetaGroup], everyone: list[MetaGroup], owner: np.ndarray, siblings: list,
                   quantile: float = 0.75) -> list:
    """Per validation group: the columns of its siblings' *good* networks (accuracy at or above the
    ``quantile`` of their own group), or None without siblings."""
    cut = np.array([np.quantile(g.accuracy, quantile) for g in everyone])
    acc = np.concatenate([g.accuracy for g in everyone])
    good = acc >= cut[owner]
    return [None if s is None else s[good[s]] for s in siblings]


def _own_and_sibling_positives(val: list[MetaGroup], everyone: list[MetaGroup], owner: np.ndarray):
    """Per validation group: its own networks' columns, and its siblings' (the other groups of the
    same source dataset), or None when the dataset has a single group."""
    own, siblings = [], []
    for g in val:
        own.append(np.flatnonzero(owner == everyone.index(g)))
        sib = [i for i, h in enumerate(everyone) if h.dataset == g.dataset and h is not g]
        siblings.append(np.flatnonzero(np.isin(owner, sib)) if sib else None)
    return own, siblings


def _without_own(scores: np.ndarray, own: list, rows: list[int]) -> np.ndarray:
    """``scores[rows]`` with each row's own networks ranked below every other candidate."""
    x = scores[rows].copy()
    low = x.min() - 1.0
    for r, i in enumerate(rows):
        x[r, own[i]] = low
    return x


def _retrieval_reports(scores: np.ndarray, own: list, siblings: list, good: list | None = None,
                       final: np.ndarray | None = None) -> dict:
    """Three retrieval protocols on ``[n_val, n_items]`` scores.

    * ``val_recall_at_k`` (TANS's): the group's own networks among every network.
    * ``val_xtask_recall_at_k`` (cross-task, the case of a new dataset): the group's own networks are
      removed from the candidates; the positives are the networks of the other tasks of its dataset
      (other classes, same domain). Groups of single-group datasets do not count here.
    * ``val_xgood_recall_at_k``: as cross-task, but only the siblings' *good* networks (top quarter of
      their group by accuracy, ``good``) are positives, ranked by ``final`` (retrieval then re-ranking;
      ``scores`` when None): finding the right domain is not enough, the network must also be one of
      its best."""
    report = {f"val_{k.replace('@', '_at_')}": v
              for k, v in retrieval_report(scores, [set(o.tolist()) for o in own]).items()}
    rows = [i for i, s in enumerate(siblings) if s is not None]
    if rows:
        x = _without_own(scores, own, rows)
        report |= {f"val_xtask_{k.replace('@', '_at_')}": v
                   for k, v in retrieval_report(x, [set(siblings[i].tolist()) for i in rows]).items()}
        if good is not None:
            x = _without_own(scores if final is None else final, own, rows)
            report |= {f"val_xgood_{k.replace('@', '_at_')}": v
                       for k, v in retrieval_report(x, [set(good[i].tolist()) for i in rows]).items()}
    return report


def _reranked(scores: np.ndarray, predicted: np.ndarray, own: list, top: int, owner: np.ndarray | None = None,
              groups: int = 0) -> np.ndarray:
    """Final ranking scores: each row's ``top`` best retrieved networks (its own excluded), narrowed to
    those of the first ``groups`` groups they come from (by ``owner``; 0: all), ordered by the predicted
    accuracy, above the rest (which keep their retrieval order)."""
    out = scores.astype(np.float64).copy()
    lift = np.abs(out).max() + 2.0
    for i in range(len(out)):
        s = out[i].copy()
        s[own[i]] = -np.inf
        k = min(top, s.size)
        best = np.argpartition(-s, k - 1)[:k]
        if groups and owner is not None:
            best = best[np.isin(owner[best], first_groups(owner[best[np.argsort(-s[best], kind="stable")]], groups))]
        out[i, best] = lift + predicted[i, best]
    return out


def first_groups(owners_in_order, n: int) -> list:
    """The first ``n`` distinct values of ``owners_in_order`` (the groups of networks in retrieval order)."""
    seen: list = []
    for g in owners_in_order:
        if g not in seen:
            seen.append(g)
            if len(seen) == n:
                break
    return seen


@torch.no_grad()
def evaluate(enc: TansEncoders, val: list[MetaGroup], zoo: list[MetaGroup], rerank_top: int = 100) -> dict:
    """Retrieval (the protocols of :func:`_retrieval_reports`) over every zoo and validation network,
    and the predictor's ranking of each validation group's networks (weighted Kendall tau against
    measured accuracy)."""
    enc.eval()
    everyone = _candidates(val, zoo)
    m, owner = embed_models(enc, everyone)
    d = enc.query(*_set_batch(everyone, None))            # every candidate group's dataset embedding
    q = d[[everyone.index(g) for g in val]]
    scores = retrieval_scores(q, m, d[owner], enc.cfg.dataset_weight).numpy()
    own, siblings = _own_and_sibling_positives(val, everyone, owner)
    good = _good_siblings(val, everyone, owner, siblings)
    final = None
    if enc.predictor is not None:
        topo = torch.from_numpy(np.concatenate([g.topology for g in everyone]))
        predicted = np.stack([enc.predictor(q[i].expand(len(m), -1), m, topo).numpy() for i in range(len(val))])
        final = _reranked(scores, predicted, own, rerank_top, owner, enc.cfg.rerank_groups)
    report = _retrieval_reports(scores, own, siblings, good, final)
    if enc.predictor is not None:
        taus = [(predicted[i, own[i]], g.accuracy) for i, g in enumerate(val)]
        report["val_weighted_tau"] = mean_weighted_tau(taus)
        report.update({f"val_pred_{k}": v for k, v in predictor_errors(
            np.concatenate([p for p, _ in taus]), np.concatenate([a for _, a in taus])).items()})
    enc.train()
    return report


def selection_score(report: dict) -> float:
    """What picks the best checkpoint and moves the champion: Recall@5 of the strictest retrieval
    protocol the validation datasets allow (good sibling networks, else any sibling network, else the
    group's own: TANS's) plus the predictor's weighted tau (0 without a predictor)."""
    r5 = report.get("val_xgood_recall_at_5",
                    report.get("val_xtask_recall_at_5", report.get("val_recall_at_5", 0.0)))
    return float(r5) + float(np.nan_to_num(report.get("val_weighted_tau", 0.0)))


def pixel_heuristic(val: list[MetaGroup], zoo: list[MetaGroup]) -> dict:
    """Baseline: "the nearest dataset by pixel statistics" (22 per-channel moments and histogram values
    of the training images, :func:`~tans_registry.data.stats.pixel_descriptor`).

    Retrieval ranks networks by their source group's descriptor distance to the query's (a group's
    networks tie; no accuracy oracle breaks the tie; for the good-siblings protocol the bigger network
    goes first). Under TANS's protocol this is trivially perfect (the
    query's own group is a candidate with the same descriptor); the cross-task protocol is the fair one.
    Ranking (weighted tau): a validation network's predicted accuracy is the measured accuracy of the
    same architecture in the nearest *training* group."""
    everyone = _candidates(val, zoo)
    owner = _owners(everyone)
    desc = np.stack([g.descriptor for g in everyone])
    scale = desc.std(0) + 1e-6  # each statistic on its own scale
    scores = np.stack([-np.linalg.norm((desc - g.descriptor) / scale, axis=1)[owner] for g in val])
    own, siblings = _own_and_sibling_positives(val, everyone, owner)
    good = _good_siblings(val, everyone, owner, siblings)
    final = None
    if all(g.n_params is not None for g in everyone):
        # "nearest dataset, then its biggest network": size breaks the ties within a group
        size = np.concatenate([g.n_params for g in everyone])
        final = scores + 1e-9 * size / size.max()
    report = _retrieval_reports(scores, own, siblings, good, final)
    zdesc = np.stack([h.descriptor for h in zoo])
    taus = []
    for g in val:
        near = zoo[int(np.argmin(np.linalg.norm((zdesc - g.descriptor) / scale, axis=1)))]
        acc_of = {tuple(t): a for t, a in zip(near.topology.tolist(), near.accuracy.tolist())}
        fallback = float(near.accuracy.mean())
        taus.append((np.array([acc_of.get(tuple(t), fallback) for t in g.topology.tolist()]), g.accuracy))
    report["val_weighted_tau"] = mean_weighted_tau(taus)
    return report


def size_heuristic(val: list[MetaGroup]) -> dict:
    """Baseline for ranking only: the bigger network (more parameters) is predicted to be the better."""
    if any(g.n_params is None for g in val):
        return {}
    return {"val_weighted_tau": mean_weighted_tau([(g.n_params, g.accuracy) for g in val])}


def train_encoders(cfg: EncoderTrainConfig, prepared=None) -> dict:
    """Train, validate, log and (when it improves) register the encoders; returns the record.

    ``prepared``: the result of :func:`prepare` for the same zoo, data, seed, K and validation datasets,
    to share the backbone and the query sets between runs (the ablations); its time is not counted."""
    import mlflow

    cfg.validate()
    if cfg.snapshot and cfg.register:
        raise ConfigError("encoders trained on a zoo snapshot are not registered (the index embeds the registry's "
                          "zoo); use `tans bench --snapshot`")
    wd, uri = tracking.setup(cfg.work_dir)
    exp_zoo = tracking.experiment_id("zoo", wd)
    exp_enc = tracking.experiment_id("encoders", wd)
    t0 = time.time()
    train, val, val_names, backbone = prepared if prepared is not None else prepare(cfg, exp_zoo)
    torch.manual_seed(cfg.seed)
    enc = TansEncoders(EncoderConfig(pooling=cfg.pooling, use_functional=cfg.use_functional,
                                     use_predictor=cfg.use_predictor, predictor_topology=cfg.predictor_topology,
                                     dataset_weight=cfg.dataset_weight, rerank_groups=cfg.rerank_groups,
                                     functional_dim=int(train[0].functional.shape[1])))
    untrained = evaluate(enc, val, train, cfg.rerank_top)
    baseline = pixel_heuristic(val, train)
    by_size = size_heuristic(val)
    tags = {"tans.kind": "encoders"} | ({"tans.project_run": tracking.PROJECT_RUN_ID} if tracking.PROJECT_RUN_ID else {})
    with mlflow.start_run(experiment_id=exp_enc, run_name=f"encoders-{cfg.loss}-{cfg.pooling}", tags=tags) as run:
        mlflow.log_params({k: (",".join(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                           if k not in ("work_dir", "data_dir", "progress")}
                          | {"val_datasets_used": ",".join(val_names), "n_train_groups": len(train),
                             "n_val_groups": len(val)})
        mlflow.log_metrics({f"untrained_{k}": v for k, v in untrained.items() if np.isfinite(v)}
                           | {f"pixel_heuristic_{k}": v for k, v in baseline.items() if np.isfinite(v)}
                           | {f"size_heuristic_{k}": v for k, v in by_size.items() if np.isfinite(v)}, step=0)
        best_report = fit(enc, train, val, cfg, on_eval=lambda step, m: mlflow.log_metrics(
            {k: v for k, v in m.items() if np.isfinite(v)}, step=step))
        mlflow.log_metrics({f"best_{k}": v for k, v in best_report.items() if np.isfinite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            enc.save(Path(tmp) / "encoders")
            save_backbone(backbone, Path(tmp) / "backbone")
            _save_query_sets(Path(tmp) / "query_sets.npz", train + val)
            _embedding_map(enc, train + val, Path(tmp) / "embedding_map.png")
            mlflow.log_artifacts(tmp)
        record = {"run_id": run.info.run_id, "best": best_report, "untrained": untrained,
                  "pixel_heuristic": baseline, "size_heuristic": by_size, "val_datasets": val_names, "seconds": time.time() - t0}
        if cfg.register:
            record |= _register(run.info.run_id, best_report)
    return record


def fit(enc: TansEncoders, train: list[MetaGroup], val: list[MetaGroup], cfg: EncoderTrainConfig,
        on_eval=None) -> dict:
    """The training loop: Adam, evaluation every ``eval_every`` steps, early stopping on the
    validation metric; leaves ``enc`` at its best checkpoint and returns that checkpoint's report."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr)
    best, best_state, best_report, since_best = -math.inf, None, {}, 0
    for step in tqdm(range(1, cfg.steps + 1), desc="encoders", unit="step", disable=not cfg.progress):
        loss = _train_step(enc, opt, train, cfg, rng)
        if step % cfg.eval_every and step != cfg.steps:
            continue
        report = evaluate(enc, val, train, cfg.rerank_top) | {"train_loss": loss}
        if on_eval:
            on_eval(step, report)
        score = selection_score(report)
        if score > best:
            best, since_best, best_report = score, 0, report | {"step": step}
            best_state = {k: v.detach().clone() for k, v in enc.state_dict().items()}
        else:
            since_best += 1
            if since_best >= cfg.patience:
                log.info("early stop at step %d (best at step %d)", step, best_report["step"])
                break
    enc.load_state_dict(best_state)
    enc.eval()
    return best_report


def _train_step(enc, opt, train, cfg, rng) -> float:
    x, mask = _set_batch(train, rng)
    pos = []
    for g in train:
        w = np.exp(cfg.positive_sharpness * (g.accuracy - g.accuracy.max()))
        pos.append(rng.choice(len(w), p=w / w.sum()))
    topo = torch.from_numpy(np.stack([g.topology[i] for g, i in zip(train, pos)]))
    func = torch.from_numpy(np.stack([g.functional[i] for g, i in zip(train, pos)]))
    q = enc.query(x, mask)
    m = enc.model(topo, func if enc.cfg.use_functional else None)
    loss = (hinge_loss(q, m, margin=cfg.margin) if cfg.loss == "hinge"
            else info_nce_loss(q, m, temperature=cfg.temperature))
    if enc.predictor is not None:
        # the positive, and rank_pairs pairs (a, b) of random networks of each group
        n_pairs = cfg.rank_pairs
        a = np.stack([rng.integers(len(g.accuracy), size=n_pairs) for g in train])   # [G, P]
        b = np.stack([rng.integers(len(g.accuracy), size=n_pairs) for g in train])
        picks = np.concatenate([np.asarray(pos)[:, None], a, b], axis=1)             # [G, 1 + 2P]
        gi = np.repeat(np.arange(len(train)), picks.shape[1])
        ni = picks.ravel()
        topo_p = torch.from_numpy(np.stack([train[g].topology[n] for g, n in zip(gi, ni)]))
        func_p = torch.from_numpy(np.stack([train[g].functional[n] for g, n in zip(gi, ni)]))
        m_p = enc.model(topo_p, func_p if enc.cfg.use_functional else None)
        pred = enc.predictor(q[torch.from_numpy(gi)], m_p, topo_p).view(len(train), -1)
        target = torch.from_numpy(np.stack([train[g].accuracy[picks[g]] for g in range(len(train))]).astype(np.float32))
        loss = loss + cfg.predictor_weight * predictor_loss(pred.ravel(), target.ravel())
        if cfg.rank_weight:
            pa, pb = pred[:, 1: 1 + n_pairs].ravel(), pred[:, 1 + n_pairs:].ravel()
            ta, tb = target[:, 1: 1 + n_pairs].ravel(), target[:, 1 + n_pairs:].ravel()
            loss = loss + cfg.rank_weight * pairwise_rank_loss(pa, pb, ta, tb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _save_query_sets(path: Path, groups: list[MetaGroup]) -> None:
    np.savez(path, **{f"features/{g.name}": g.features for g in groups})


def _embedding_map(enc: TansEncoders, groups: list[MetaGroup], path: Path) -> None:
    """2-D PCA map of dataset embeddings (stars) and model embeddings (dots), coloured by dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        m, owner = embed_models(enc, groups)
        x, mask = _set_batch(groups, None)
        q = enc.query(x, mask)
    pts = torch.cat([m, q]).numpy()
    pts = pts - pts.mean(0)
    _, _, vt = np.linalg.svd(pts, full_matrices=False)
    xy = pts @ vt[:2].T
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20")
    for i, g in enumerate(groups):
        sel = owner == i
        ax.scatter(xy[: len(owner)][sel, 0], xy[: len(owner)][sel, 1], s=8, color=cmap(i % 20), alpha=0.6)
        ax.scatter(*xy[len(owner) + i], marker="*", s=160, color=cmap(i % 20), edgecolor="k", label=g.name)
    ax.set_title("dataset (stars) and model (dots) embeddings, PCA")
    if len(groups) <= 20:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _register(run_id: str, report: dict) -> dict:
    """Register the encoders (and backbone); move `champion` only when validation improved."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    score = selection_score(report)
    for name in (ENCODERS_MODEL, BACKBONE_MODEL):
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
    run = client.get_run(run_id)
    bb = client.create_model_version(BACKBONE_MODEL, f"{run.info.artifact_uri}/backbone", run_id=run_id)
    v = client.create_model_version(ENCODERS_MODEL, f"{run.info.artifact_uri}/encoders", run_id=run_id,
                                    tags={SCORE_TAG: f"{score:.6f}",
                                          "tans.val_metric": ("val_xtask_recall_at_5" if "val_xtask_recall_at_5"
                                                              in report else "val_recall_at_5"),
                                          "tans.backbone_version": str(bb.version)})
    try:
        champ = client.get_model_version_by_alias(ENCODERS_MODEL, "champion")
        champ_score = float(champ.tags.get(SCORE_TAG, "-1"))
    except MlflowException:
        champ, champ_score = None, -math.inf
    promoted = score > champ_score
    if promoted:
        client.set_registered_model_alias(ENCODERS_MODEL, "champion", v.version)
    return {"encoders_version": int(v.version), "backbone_version": int(bb.version), "champion": promoted,
            "previous_champion": int(champ.version) if champ else None}
