"""The three learned parts: query (dataset) encoder, model encoder, accuracy predictor.

- Query encoder: backbone features of K images per class -> ``Linear`` -> pooled over the set (mean,
  as TANS, or attention pooling with a learned seed query, as MetaD2A's set encoder) -> L2-normalised.
- Model encoder: the 45-value depth-masked topology and the functional embedding, each L2-normalised
  on its own (the reference normalised them jointly, so the functional part drowned the topology),
  concatenated, then a two-layer MLP -> L2-normalised.
- Predictor: an MLP on both embeddings (and, by default, the normalised topology itself: the model
  embedding is shaped by the contrastive loss to say *which dataset* a network suits, and loses the
  capacity information the predictor needs to order networks within a dataset) -> sigmoid -> predicted
  accuracy.

Retrieval scores a network by ``cos(query, model embedding) + dataset_weight * cos(query, embedding of
the network's source dataset)``: the registry tags every network with its dataset's embedding, and a
network trained on a dataset like the query's is a good start (see ``retrieval_scores``).

Everything needed to rebuild the modules is in :class:`~.config.EncoderConfig` (saved beside the
safetensors).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..zoo.space import TOPOLOGY_DIM
from .config import EncoderConfig


def retrieval_scores(q, model_emb, dataset_emb, dataset_weight: float):
    """``[n_queries, n_networks]`` retrieval scores from unit-length embeddings (torch or numpy):
    ``q @ model_emb.T + dataset_weight * q @ dataset_emb.T`` (``dataset_emb``: row ``j`` is the
    embedding of network ``j``'s source dataset)."""
    s = q @ model_emb.T
    if dataset_weight:
        s = s + dataset_weight * (q @ dataset_emb.T)
    return s


def pad_sets(sets: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature sets of different sizes (``[n_i, F]`` arrays) as a padded ``[B, N, F]`` batch and its
    ``[B, N]`` mask (True where an instance is real)."""
    n = max(len(s) for s in sets)
    x = np.zeros((len(sets), n, sets[0].shape[1]), np.float32)
    mask = np.zeros((len(sets), n), bool)
    for i, s in enumerate(sets):
        x[i, : len(s)] = s
        mask[i, : len(s)] = True
    return torch.from_numpy(x), torch.from_numpy(mask)


class QueryEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention'; got {cfg.pooling!r}")
        self.pooling = cfg.pooling
        self.proj = nn.Linear(cfg.feature_dim, cfg.embed_dim)
        if cfg.pooling == "attention":
            self.seed = nn.Parameter(torch.randn(1, 1, cfg.embed_dim) * 0.02)
            self.attn = nn.MultiheadAttention(cfg.embed_dim, num_heads=4, batch_first=True)
            self.out = nn.Sequential(nn.LayerNorm(cfg.embed_dim), nn.Linear(cfg.embed_dim, cfg.embed_dim))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``feats`` [B, N, F] (N instances per dataset), ``mask`` [B, N] True where an instance is
        real (sets of different sizes are padded); returns [B, D], unit length."""
        h = self.proj(feats)
        if mask is None:
            mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        if self.pooling == "mean":
            w = mask.unsqueeze(-1).float()
            pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        else:
            seed = self.seed.expand(h.shape[0], -1, -1)
            pooled, _ = self.attn(seed, h, h, key_padding_mask=~mask)
            pooled = self.out(pooled.squeeze(1))
        return F.normalize(pooled, dim=-1)


class ModelEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.use_functional = cfg.use_functional
        d_in = TOPOLOGY_DIM + (cfg.functional_dim if cfg.use_functional else 0)
        self.mlp = nn.Sequential(nn.Linear(d_in, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.embed_dim))

    def forward(self, topology: torch.Tensor, functional: torch.Tensor | None = None) -> torch.Tensor:
        parts = [F.normalize(topology.float(), dim=-1)]
        if self.use_functional:
            if functional is None:
                raise ValueError("this model encoder uses the functional embedding; pass it")
            parts.append(F.normalize(functional.float(), dim=-1))
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)


class Predictor(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.use_topology = cfg.predictor_topology
        d_in = 2 * cfg.embed_dim + (TOPOLOGY_DIM if cfg.predictor_topology else 0)
        self.mlp = nn.Sequential(nn.Linear(d_in, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))

    def forward(self, q: torch.Tensor, m: torch.Tensor, topology: torch.Tensor | None = None) -> torch.Tensor:
        parts = [q, m]
        if self.use_topology:
            if topology is None:
                raise ValueError("this predictor uses the topology; pass it")
            parts.append(F.normalize(topology.float(), dim=-1))
        return torch.sigmoid(self.mlp(torch.cat(parts, dim=-1))).squeeze(-1)


class TransferPredictor(nn.Module):
    """A ranking score of how well a network fine-tunes on a query dataset, learnt from the transfer table.

    Its inputs tell two networks of one architecture apart: the query embedding, the network's model embedding,
    its normalised topology, its size (log10 parameters) and, with ``transfer_source``, its source dataset's
    embedding and its source accuracy. The score orders networks for one query (its scale is the loss's, not
    an accuracy)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.use_source = cfg.transfer_source
        d_in = 2 * cfg.embed_dim + TOPOLOGY_DIM + 1 + (cfg.embed_dim + 1 if cfg.transfer_source else 0)
        self.mlp = nn.Sequential(nn.Linear(d_in, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))

    def forward(self, q, m, topology, log_params, source=None, source_accuracy=None) -> torch.Tensor:
        parts = [q, m, F.normalize(topology.float(), dim=-1), (log_params.float() - 6.0)[:, None]]
        if self.use_source:
            if source is None or source_accuracy is None:
                raise ValueError("this transfer predictor sees the source dataset and accuracy; pass them")
            parts += [source, source_accuracy.float()[:, None]]
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


class TansEncoders(nn.Module):
    """Query encoder + model encoder (+ predictor, + transfer predictor), rebuilt from their config alone."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.query = QueryEncoder(cfg)
        self.model = ModelEncoder(cfg)
        self.predictor = Predictor(cfg) if cfg.use_predictor else None
        self.transfer = TransferPredictor(cfg) if cfg.transfer_loss else None

    def save(self, folder: Path) -> Path:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "encoders.safetensors"))
        (folder / "config.json").write_text(self.cfg.to_json())
        return folder

    @classmethod
    def load(cls, folder: Path) -> "TansEncoders":
        from safetensors.torch import load_file

        enc = cls(EncoderConfig.from_json((folder / "config.json").read_text()))
        enc.load_state_dict(load_file(str(folder / "encoders.safetensors")))
        return enc.eval()
