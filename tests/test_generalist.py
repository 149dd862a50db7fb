"""The generalist (the base supernet's own subnets) as a zoo group: registered, embedded, indexed, searched,
shown by `tans query`, never trained on by the encoders, and not counted in the benchmark's best-average."""
from __future__ import annotations

import json
from types import SimpleNamespace

import mlflow
import numpy as np
from click.testing import CliRunner

from tans_registry import (EncoderConfig, EncoderTrainConfig, IndexConfig, RegisterConfig, build_index, register_zoo,
                           train_encoders, tracking)
from tans_registry.bench.stage import _best_average
from tans_registry.cli import main
from tans_registry.registry import client as C
from tans_registry.registry.index import load_index
from tans_registry.registry.names import zoo_model_name
from tans_registry.retrieval.embed import query_sets
from tans_registry.zoo.generalist import DATASET as POOLED
from tans_registry.zoo.generalist import GROUP as GENERALIST
from tans_registry.zoo.meta import load_generalist_data, load_meta_groups


def test_the_generalist_is_registered_embedded_searched_and_shown(tiny_data_dir, tiny_base_zoo, tmp_path):
    from conftest import clone_work_dir

    work = clone_work_dir(tiny_base_zoo, tmp_path / "w")  # built with a base supernet (0.5 epochs), 3 subnets, 4 groups
    reg = register_zoo(RegisterConfig(work_dir=str(work), progress=False))
    name = zoo_model_name(GENERALIST)
    assert reg.models[name] == 3 and len(reg.models) == 5  # 4 groups and the generalist
    tracking.setup(work)
    model = C.get_model(name)
    assert "generalist" in model.description and "digits, cells" in model.description
    versions = C.versions(name)
    assert {v.tags["tans.dataset"] for v in versions} == {POOLED} and all("tans.sha256" in v.tags for v in versions)

    # the encoders learn from the 4 groups only; their run keeps the generalist's query set for the index
    exp_zoo = tracking.experiment_id("zoo", work)
    groups = load_meta_groups(exp_zoo, str(tiny_data_dir))
    assert sorted(g.name for g in groups) == ["cells", "digits-t0", "digits-t1", "digits-t2"]
    data = load_generalist_data(exp_zoo, groups)
    assert data is not None and data.n_classes == 13
    rec = train_encoders(EncoderTrainConfig(encoder=EncoderConfig(k_per_class=4), steps=4, eval_every=2,
                                            val_datasets=("cells",), backbone_epochs=0.5, work_dir=str(work),
                                            data_dir=str(tiny_data_dir), progress=False))
    params = mlflow.get_run(rec.run_id).data.params
    assert params["n_train_groups"] == "3" and params["n_val_groups"] == "1"
    sets = query_sets(rec.run_id)
    per_class = np.bincount(data.y_train, minlength=13)
    assert sets[GENERALIST].shape[0] == int(np.minimum(per_class, 4).sum())

    build_index(IndexConfig(work_dir=str(work), progress=False))
    idx, _ = load_index(work, latency=False)
    mine = idx.groups == GENERALIST
    assert mine.sum() == 3 and set(idx.datasets[mine].tolist()) == {POOLED}
    assert set(idx.encoders[mine].tolist()) == {str(rec.encoders_version)}
    assert np.all(np.linalg.norm(idx.dataset_emb[mine], axis=1) > 0)  # embedded from its query set

    out = CliRunner().invoke(main, ["query", "digits", "--top-k", "15", "--rerank", "none", "--finetune", "0", "--work-dir", str(work), "--data-dir",
                                    str(tiny_data_dir)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    shown = [line for line in out.output.splitlines() if name in line]
    assert len(shown) == 3 and all("generalist (pooled)" in line for line in shown)


def test_best_average_is_the_groups_mean_without_the_generalist():
    arch = {"a": {"d": [2]}, "b": {"d": [3]}}
    # over the groups, b (0.81) beats a (0.80); counting the generalist's networks, a would win (0.86 to 0.57)
    groups = np.array(["g1", "g2", "g1", "g2", GENERALIST, GENERALIST])
    hashes = np.array(["a", "a", "b", "b", "a", "b"])
    acc = np.array([0.80, 0.80, 0.70, 0.92, 0.99, 0.10], dtype=np.float32)
    idx = SimpleNamespace(groups=groups, arch_hashes=hashes, accuracy=acc,
                          archs=np.array([json.dumps(arch[h]) for h in hashes]), n_params=np.arange(6) + 100)
    zoo = {"base_start": {"weights": "w", "base_run": "r", "supernet": {}}}
    picked = _best_average(idx, np.arange(6), zoo)
    assert picked["arch_hash"] == "b" and picked["groups"] == 2
    assert abs(picked["mean_source_accuracy"] - 0.81) < 1e-6  # (0.70 + 0.92) / 2: the generalist's 0.10 not in it
