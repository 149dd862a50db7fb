"""The zoo in the MLflow Model Registry: naming, tag codecs, registration, pyfunc loading, the index."""
from __future__ import annotations

import shutil
import os

import mlflow
import numpy as np
import pytest
import torch

from tans_registry import tracking
from tans_registry.errors import ConfigError
from tans_registry.registry.codec import decode_embedding, encode_embedding
from tans_registry.registry.config import RegisterConfig
from tans_registry.registry.index import ZooIndex, load_index
from tans_registry.registry.names import quote, zoo_model_name
from tans_registry.registry.pyfunc import load_module
from tans_registry.registry.register import register_zoo as _register_zoo
from tans_registry.registry.register import version_tags
from tans_registry.zoo.build import build_zoo
from tans_registry.zoo.config import ZooConfig
from tans_registry.zoo.store import list_networks, load_network
from tans_registry.zoo.tensors import DEFAULT_MEAN, DEFAULT_STD, to_tensor

TAGS = ["dataset", "dataset_embedding", "model_embedding", "encoder_version", "accuracy", "n_params", "flops",
        "arch", "input_size", "mean", "std", "classes", "supernet_run"]
WEIRD = "x' OR name LIKE '%"


def register_zoo(work, progress=False):
    return _register_zoo(RegisterConfig(work_dir=str(work), progress=progress))


def build_index(work):
    """The index of the work dir's registry (cached or rebuilt) and its record."""
    wd, _ = tracking.setup(work)
    return load_index(wd)


def registry_dump(client):
    """Everything a registration could change, as comparable data."""
    out = {}
    for m in client.search_registered_models(max_results=1000):
        versions = client.search_model_versions(f"name = {quote(m.name)}")
        out[m.name] = (m.description, dict(m.tags), m.last_updated_timestamp,
                       sorted((v.version, v.source, v.description, tuple(sorted(v.tags.items()))) for v in versions))
    return out


@pytest.fixture(scope="module")
def registered(tiny_data_dir, tmp_path_factory):
    """A tiny zoo (digits, cells, and a dataset named like an injection) built and registered."""
    data = tmp_path_factory.mktemp("reg-data")
    for f in tiny_data_dir.glob("*.npz"):
        shutil.copy(f, data / f.name)
    shutil.copy(tiny_data_dir / "cells.npz", data / f"{WEIRD}.npz")
    work = tmp_path_factory.mktemp("reg-work")
    build_zoo(ZooConfig(profile="quick", base_epochs=0, datasets=("digits", "cells", WEIRD), subnets=3, epochs=1,
                        data_dir=str(data), work_dir=str(work), progress=False))
    first = register_zoo(str(work), progress=False)
    return work, first, data


def test_model_names_are_safe_and_distinct():
    assert zoo_model_name("mnist-t3") == "zoo.mnist-t3"
    weird = zoo_model_name(WEIRD)
    assert weird.startswith("zoo.x-OR-name-LIKE") and "'" not in weird and "%" not in weird
    assert zoo_model_name("a b") != zoo_model_name("a/b")  # same slug, different hash
    with pytest.raises(ValueError, match="refusing"):
        quote(WEIRD)


def test_embedding_codec_round_trips_compactly():
    vec = np.random.default_rng(0).normal(size=1325).astype(np.float32)
    tag = encode_embedding(vec)
    assert tag.startswith("f16:") and len(tag) < 5000
    np.testing.assert_allclose(decode_embedding(tag), vec, rtol=1e-3, atol=1e-3)
    assert decode_embedding(encode_embedding([])).size == 0
    with pytest.raises(ValueError, match="prefix"):
        decode_embedding("abc")
    with pytest.raises(ValueError, match="tags hold"):
        encode_embedding(np.zeros(4000))


def test_every_network_is_a_version_with_all_tags(registered):
    work, first, _ = registered
    assert first.created == 9 and first.existing == 0
    tracking.setup(work)
    client = mlflow.MlflowClient()
    nets = list_networks(tracking.experiment_id("zoo", work))
    assert len(nets) == 9
    for net in nets:
        name = zoo_model_name(net.group)
        versions = {int(v.tags["tans.index"]): v for v in client.search_model_versions(f"name = {quote(name)}")}
        v = versions[net.index]
        for t in TAGS:
            assert f"tans.{t}" in v.tags, t
        assert float(v.tags["tans.accuracy"]) == pytest.approx(net.accuracy, abs=1e-6)
        assert int(v.tags["tans.n_params"]) == net.n_params and int(v.tags["tans.flops"]) == net.flops
        emb = decode_embedding(v.tags["tans.model_embedding"])
        assert emb.shape == (45 + 1280,) and list(emb[:45]) == net.topology
        assert decode_embedding(v.tags["tans.dataset_embedding"]).shape == (22,)
        assert "How" not in v.description and "mlflow.pyfunc.load_model" in v.description
        assert all(len(val) <= 5000 for val in v.tags.values())


def test_registering_twice_changes_nothing(registered):
    work, _, _ = registered
    tracking.setup(work)
    client = mlflow.MlflowClient()
    before = registry_dump(client)
    again = register_zoo(str(work), progress=False)
    assert again.created == 0 and again.existing == 9
    assert registry_dump(client) == before


def test_pyfunc_predicts_what_the_materialized_module_predicts(registered):
    work, _, data = registered
    tracking.setup(work)
    from tans_registry.data import load_dataset

    ds = load_dataset("digits", data_dir=data)
    net = [n for n in list_networks(tracking.experiment_id("zoo", work)) if n.group == "digits"][1]
    uri = f"models:/zoo.digits/{net.index + 1}"
    out = mlflow.pyfunc.load_model(uri).predict(ds.x_test[:20])
    probs = out["probabilities"]
    module = load_network(net.run_id, net.index)
    with torch.no_grad():
        logits = module(to_tensor(ds.x_test[:20], DEFAULT_MEAN, DEFAULT_STD))
        expected = torch.softmax(logits, 1).numpy()
    assert probs.shape == (20, 10) and set(out) == {"logits", "probabilities"}
    np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    with torch.no_grad():
        got = load_module(uri)(to_tensor(ds.x_test[:20], DEFAULT_MEAN, DEFAULT_STD))
    np.testing.assert_allclose(torch.softmax(got, 1).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_weird_dataset_name_neither_breaks_nor_widens(registered):
    work, _, _ = registered
    idx, _ = build_index(str(work))
    assert len(idx) == 9
    hits = idx.search(idx.model_emb[0], k=50, include_datasets=[WEIRD])
    assert len(hits) == 3 and {h["dataset"] for h in hits} == {WEIRD}
    assert {h["model"] for h in hits} == {zoo_model_name(WEIRD)}
    assert idx.search(idx.model_emb[0], k=50, include_datasets=["x"]) == []


def test_index_cache_follows_the_registry(registered):
    work, _, _ = registered
    idx, rec = build_index(str(work))
    idx2, rec2 = build_index(str(work))
    assert rec2["cache"] == "hit" and rec2["key"] == rec["key"] and len(idx2) == len(idx)
    tracking.setup(work)
    client = mlflow.MlflowClient()
    # the registry changes: one version is deleted -> a new key, a rebuilt index without it
    name = zoo_model_name("cells")
    client.delete_model_version(name, "3")
    idx3, rec3 = build_index(str(work))
    assert rec3["cache"] == "built" and rec3["key"] != rec["key"] and len(idx3) == len(idx) - 1
    # a group whose networks were all registered is skipped as a whole: a deleted version stays deleted
    assert register_zoo(str(work), progress=False).created == 0
    assert build_index(str(work))[1]["cache"] == "hit"
    assert len(list((work / "tans-cache").glob("zoo-index-*.npz"))) == 1  # older caches pruned


def _synthetic_index(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return ZooIndex(
        names=np.array([f"zoo.g{i % 7}" for i in range(n)]), versions=np.arange(n, dtype=np.int64),
        groups=np.array([f"g{i % 7}" for i in range(n)]), datasets=np.array([f"d{i % 5}" for i in range(n)]),
        accuracy=rng.uniform(0, 1, n).astype(np.float32), n_params=rng.integers(1e6, 7e6, n),
        flops=rng.integers(5e6, 3e7, n), model_emb=rng.normal(size=(n, 16)).astype(np.float32),
        dataset_emb=np.zeros((n, 0), np.float32), topology=np.zeros((n, 45), np.float32),
        arch_hashes=np.array([f"a{i % 50}" for i in range(n)]), archs=np.full(n, "{}"), n_classes=np.full(n, 10),
        latency_ms=np.where(np.arange(n) % 17 == 0, np.nan, rng.uniform(2, 9, n)).astype(np.float32),
        encoders=np.full(n, "raw"), encoder_version="raw", key="k")


def test_constraint_filters_and_top_k_match_brute_force():
    idx = _synthetic_index()
    rng = np.random.default_rng(1)
    for trial in range(20):
        q = rng.normal(size=16).astype(np.float32)
        c = {"max_params": int(rng.integers(2e6, 7e6)), "max_flops": int(rng.integers(1e7, 3e7)),
             "max_latency_ms": float(rng.uniform(3, 9)) if trial % 4 else None,
             "min_accuracy": float(rng.uniform(0, 0.5)), "exclude_datasets": ["d1"] if trial % 2 else None,
             "include_datasets": ["d0", "d1", "d2"] if trial % 3 == 0 else None}
        ok = [i for i in range(len(idx))
              if idx.n_params[i] <= c["max_params"] and idx.flops[i] <= c["max_flops"]
              and (c["max_latency_ms"] is None or idx.latency_ms[i] <= c["max_latency_ms"])  # NaN: unmeasured, out
              and idx.accuracy[i] >= c["min_accuracy"]
              and (c["exclude_datasets"] is None or idx.datasets[i] not in c["exclude_datasets"])
              and (c["include_datasets"] is None or idx.datasets[i] in c["include_datasets"])]
        scores = {i: float(idx.model_emb[i] @ q / np.linalg.norm(idx.model_emb[i]) / np.linalg.norm(q)) for i in ok}
        expected = sorted(ok, key=lambda i: -scores[i])[:10]
        hits = idx.search(q, k=10, **c)
        assert [h["version"] for h in hits] == [int(idx.versions[i]) for i in expected]
        assert all(h["n_params"] <= c["max_params"] for h in hits)


def test_when_nothing_fits_the_closest_networks_are_named_with_what_they_exceed():
    idx = _synthetic_index()
    limits = {"max_params": 1_000_000, "max_latency_ms": 2.5}  # below every network's size
    assert not idx.mask(**limits).any()
    closest = idx.closest(3, **limits)
    measured = ~np.isnan(idx.latency_ms)
    excess = np.maximum(idx.n_params / 1e6 - 1, np.where(measured, idx.latency_ms / 2.5 - 1, np.inf))
    best = np.sort(excess)[:3]
    got = [max(e["value"] / e["limit"] - 1 for e in c["exceeds"].values()) for c in closest]
    np.testing.assert_allclose(got, best, rtol=1e-5)
    assert all("max_params" in c["exceeds"] and c["exceeds"]["max_params"]["unit"] == "parameters" for c in closest)


def test_search_rejects_bad_arguments():
    idx = _synthetic_index(20)
    with pytest.raises(ConfigError, match="'k' parameter"):
        idx.search(np.zeros(16), k=0)
    with pytest.raises(ConfigError, match="dimensions"):
        idx.search(np.zeros(3))
    with pytest.raises(ConfigError, match="max_params"):
        idx.search(np.ones(16), max_params=-5)


def test_index_survives_a_save_load_round_trip(tmp_path):
    idx = _synthetic_index(50)
    back = ZooIndex.load(idx.save(tmp_path / "i.npz"))
    np.testing.assert_array_equal(back.model_emb, idx.model_emb)
    assert list(back.names) == list(idx.names) and back.key == "k"


def test_version_tags_fit_postgres_for_many_classes():
    header = {"dataset": "omniglot", "group": "omniglot", "classes": [f"Alphabet_{i}/character{i:03d}" for i in range(242)],
              "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "descriptor": [0.1] * 22}
    row = {"index": 0, "arch_hash": "abc", "arch": {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5}, "topology": [3] * 45,
           "accuracy": 0.5, "n_params": 1, "flops": 2}
    tags = version_tags(header, row, "r" * 32, np.zeros(1280, np.float32))
    assert all(len(v) <= 5000 for v in tags.values())
    assert '"n":242' in tags["tans.classes"]


@pytest.mark.postgres
def test_register_and_index_on_postgresql(tiny_data_dir, tmp_path, monkeypatch, pg_database):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_database)
    work = tmp_path / "w"
    build_zoo(ZooConfig(profile="quick", base_epochs=0, datasets=("cells",), subnets=2, epochs=1, data_dir=str(tiny_data_dir),
                        work_dir=str(work), progress=False))
    assert register_zoo(str(work), progress=False).created == 2
    assert register_zoo(str(work), progress=False).created == 0
    idx, rec = build_index(str(work))
    assert len(idx) == 2 and rec["cache"] == "built"
    probs = mlflow.pyfunc.load_model("models:/zoo.cells/1").predict(np.zeros((2, 32, 32, 3), np.uint8))["probabilities"]
    assert probs.shape == (2, 3)


def test_a_rebuilt_group_supersedes_its_old_versions(tiny_data_dir, tmp_path):
    """Rebuild one group of a registered zoo and register again: its old versions stay in the registry,
    tagged superseded, and the index, `tans zoo list` and the encoders' meta-dataset hold only the
    current networks."""
    import json

    from click.testing import CliRunner

    from tans_registry.cli import main
    from tans_registry.registry.register import SUPERSEDED_TAG, current_zoo_versions
    from tans_registry.zoo.meta import load_meta_groups

    work = tmp_path / "w"
    cfg = dict(profile="quick", base_epochs=0, datasets=("digits", "cells"), subnets=2, epochs=1, data_dir=str(tiny_data_dir),
               work_dir=str(work), progress=False)
    first = build_zoo(ZooConfig(**cfg))
    assert register_zoo(work).created == 4
    old_cells = next(g.run_id for g in first.groups if g.group == "cells")
    rebuilt = build_zoo(ZooConfig(**cfg, only_groups=("cells",)))  # no --resume: built again
    new_cells = rebuilt.groups[0].run_id
    assert new_cells != old_cells
    rec = register_zoo(work)
    assert rec.created == 2 and rec.superseded == 2 and rec.models == {"zoo.cells": 2}
    tracking.setup(work)
    client = mlflow.MlflowClient()
    every = client.search_model_versions("name = 'zoo.cells'")
    assert len(every) == 4  # lineage: the old versions are still there
    old = [v for v in every if v.tags["tans.supernet_run"] == old_cells]
    assert len(old) == 2 and all(v.tags[SUPERSEDED_TAG] == new_cells for v in old)
    current = {(v.name, v.tags["tans.supernet_run"]) for v in current_zoo_versions()}
    assert ("zoo.cells", old_cells) not in current and ("zoo.cells", new_cells) in current
    idx, _ = build_index(work)
    assert len(idx) == 4 and sorted(idx.versions[idx.names == "zoo.cells"].tolist()) == [3, 4]
    listed = json.loads(CliRunner().invoke(main, ["zoo", "list", "--work-dir", str(work), "--json"]).stdout)
    assert {n["run_id"] for n in listed if n["group"] == "cells"} == {new_cells} and len(listed) == 4
    groups = load_meta_groups(tracking.experiment_id("zoo", work), str(tiny_data_dir))
    assert {g.run_id for g in groups if g.name == "cells"} == {new_cells}
    again = register_zoo(work)  # idempotent after a rebuild too
    assert again.created == 0 and again.superseded == 0
    # a store registered before superseded versions were tagged: no tags, but the model's registered build
    # still keeps the old versions out, and the next registration tags them
    from tans_registry.registry.register import CHECKED_TAG

    for v in old:
        client.delete_model_version_tag("zoo.cells", v.version, SUPERSEDED_TAG)
    client.delete_registered_model_tag("zoo.cells", CHECKED_TAG)
    assert len(build_index(work)[0]) == 4
    assert register_zoo(work).superseded == 2


def test_registry_errors_leave_the_boundary_as_tans_errors(registered):
    """An MlflowException inside registry/ leaves it as a RegistryError naming the store and the next step."""
    from tans_registry.errors import RegistryError
    from tans_registry.registry.models import champion, get_version, register_encoders

    work, _, _ = registered
    tracking.setup(work)
    with pytest.raises(RegistryError, match=r"cannot read a model version in the model registry at sqlite:///.*"
                                            r"MLFLOW_TRACKING_URI"):
        get_version("zoo.digits", "999")
    with pytest.raises(RegistryError, match="cannot register the encoders .* rerun `tans encoders train`"):
        register_encoders("0" * 32, 1.0, "val_recall_at_5", ("cells",))
    assert champion("tans-encoders") is None  # no such model: no champion, not an error
    assert "tans-encoders" not in {m.name for m in mlflow.MlflowClient().search_registered_models()}  # nothing half-made


def test_a_folder_digest_follows_the_bytes_and_names_not_the_place_or_the_time(tmp_path):
    import shutil

    from tans_registry.registry.integrity import TamperedModel, check, folder_digest

    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "MLmodel").write_text("flavors: {}\n")
    (a / "sub" / "model.onnx").write_bytes(bytes(range(256)) * 10)
    digest = folder_digest(a)
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    os.utime(b / "MLmodel", (0, 0))
    assert folder_digest(b) == digest and len(digest) == 64
    data = bytearray((b / "sub" / "model.onnx").read_bytes())
    data[100] ^= 1
    (b / "sub" / "model.onnx").write_bytes(bytes(data))
    assert folder_digest(b) != digest
    with pytest.raises(TamperedModel, match="version 3 of m"):
        check(b, digest, "models:/m/3 (version 3 of m)")
    check(b, None, "registered before digests: nothing to check")
    shutil.copytree(a, tmp_path / "c")
    (tmp_path / "c" / "MLmodel").rename(tmp_path / "c" / "MLmodel2")
    assert folder_digest(tmp_path / "c") != digest
    assert folder_digest(a, names=("MLmodel",)) != digest


def test_a_models_uri_that_names_no_registered_version_is_refused_before_any_download():
    from tans_registry.errors import RegistryError
    from tans_registry.registry.integrity import download

    for uri in ("models:/zoo.mnist/latest", "models:/zoo.mnist/Production", "models:/m-0123456789abcdef"):
        with pytest.raises(RegistryError, match="models:/<name>/<version> or models:/<name>@<alias>"):
            download(uri)
