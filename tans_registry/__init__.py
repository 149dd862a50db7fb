"""tans-registry: search a model zoo held in MLflow for the network to start from on a new dataset.

The stages, one function each (a frozen, validated config in, a frozen record out)::

    from tans_registry import (ZooConfig, build_zoo, RegisterConfig, register_zoo, EncoderTrainConfig,
                               train_encoders, IndexConfig, build_index, QueryConfig, query)

Imported on first use, so ``import tans_registry`` stays light (no torch, no MLflow).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it (the one-way layers: data, zoo, registry, encoders, retrieval,
# validation, training, export, finetune, serve; see README "Layout")
_EXPORTS = {
    "ZooConfig": "tans_registry.zoo.config", "ZooBuildRecord": "tans_registry.zoo.config",
    "ZooListConfig": "tans_registry.zoo.config",
    "build_zoo": "tans_registry.zoo.build", "list_zoo": "tans_registry.zoo.store",
    "RegisterConfig": "tans_registry.registry.config", "RegisterRecord": "tans_registry.registry.config",
    "register_zoo": "tans_registry.registry.register",
    "EncoderConfig": "tans_registry.encoders.config",
    "EncoderTrainConfig": "tans_registry.training.config", "EncoderTrainRecord": "tans_registry.training.config",
    "AblationConfig": "tans_registry.training.config", "AblationRecord": "tans_registry.training.config",
    "train_encoders": "tans_registry.training.stage", "run_ablation": "tans_registry.training.ablation",
    "IndexConfig": "tans_registry.retrieval.config", "IndexRecord": "tans_registry.retrieval.config",
    "RankConfig": "tans_registry.retrieval.config", "RankRecord": "tans_registry.retrieval.config",
    "build_index": "tans_registry.retrieval.indexing", "rank": "tans_registry.retrieval.search",
    "QueryConfig": "tans_registry.finetune.config", "QueryRecord": "tans_registry.finetune.config",
    "FinetuneSettings": "tans_registry.finetune.config", "query": "tans_registry.transfer.feedback",
    "TransferConfig": "tans_registry.transfer.config", "TransferRecord": "tans_registry.transfer.config",
    "build_table": "tans_registry.transfer.stage",
    "ExportConfig": "tans_registry.export.config", "ExportRecord": "tans_registry.export.config",
    "export_model": "tans_registry.export.stage",
    "BenchConfig": "tans_registry.bench.config", "BenchRecord": "tans_registry.bench.config",
    "run_bench": "tans_registry.bench.stage",
    "load_dataset": "tans_registry.data.loading", "load_module": "tans_registry.registry.pyfunc",
    "decode_embedding": "tans_registry.registry.codec",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tans_registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
