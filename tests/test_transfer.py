"""The transfer table: tasks of the zoo's own datasets, leave-one-dataset-out starts (the generalist among them),
records in `tans/transfer` written as starts finish and kept on --resume; a query's fine-tunings appended."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from tans_registry import (EncoderConfig, EncoderTrainConfig, IndexConfig, RegisterConfig, build_index, register_zoo,
                           train_encoders, tracking)
from tans_registry.cli import main
from tans_registry.errors import ConfigError
from tans_registry.registry.codec import decode_embedding
from tans_registry.transfer.config import TransferConfig
from tans_registry.transfer.records import KEY_TAG, read_records
from tans_registry.transfer.stage import build_table, pick_starts
from tans_registry.zoo.generalist import GROUP as GENERALIST


def test_pick_starts_leaves_the_task_dataset_out_and_takes_one_generalist():
    groups = np.array(["a-t0", "a-t1", "b", "c-t0", "c-t1", GENERALIST, GENERALIST] * 2)
    datasets = np.array(["a", "a", "b", "c", "c", "__pooled__", "__pooled__"] * 2)
    rows = pick_starts(groups, datasets, "a", 4, seed=0)
    assert len(rows) == 4 == len(set(rows))
    assert all(datasets[r] != "a" for r in rows)
    assert sum(groups[r] == GENERALIST for r in rows) == 1
    assert {str(groups[r]) for r in rows if groups[r] != GENERALIST} == {"b", "c-t0", "c-t1"}  # a group each first
    assert pick_starts(groups, datasets, "a", 4, seed=0) == rows                          # seeded
    assert len(pick_starts(groups, datasets, "a", 50, seed=0)) == 7  # every eligible row and one generalist, no more
    assert all(groups[r] != GENERALIST for r in pick_starts(groups, datasets, "a", 1, seed=0))


@pytest.fixture(scope="module")
def work(tiny_data_dir, tiny_base_zoo, tmp_path_factory):
    """A tiny pipeline with a base supernet (so a generalist; the session's zoo, copied), encoders and index."""
    from conftest import clone_work_dir

    work = clone_work_dir(tiny_base_zoo, tmp_path_factory.mktemp("transfer-work") / "work")
    register_zoo(RegisterConfig(work_dir=str(work), progress=False))
    train_encoders(EncoderTrainConfig(encoder=EncoderConfig(k_per_class=4), steps=4, eval_every=2,
                                      val_datasets=("cells",), backbone_epochs=0.5, work_dir=str(work),
                                      data_dir=str(tiny_data_dir), progress=False))
    build_index(IndexConfig(work_dir=str(work), progress=False))
    return work


def test_the_table_writes_a_record_per_task_start_and_budget_and_resumes(work, tiny_data_dir):
    cfg = dict(starts=2, epochs=1, max_train=60, max_test=30, workers=1, work_dir=str(work), data_dir=str(tiny_data_dir),
               progress=False)
    rec = build_table(TransferConfig(**cfg))
    assert rec.tasks == ("cells", "digits") and rec.records == 4 and rec.written == 4 and rec.kept == 0
    tracking.setup(work)
    records = read_records(rec.experiment_id)
    assert len(records) == 4 and {r["source"] for r in records} == {"table"}
    for task in ("cells", "digits"):
        mine = [r for r in records if r["task"] == task]
        assert len(mine) == 2 and all(r["start_dataset"] != task for r in mine)  # leave-one-dataset-out
        assert sum(r["start_group"] == GENERALIST for r in mine) == 1
        for r in mine:
            assert r["budget"] == 1.0 and len(r["val_history"]) == 1 and 0.0 <= r["test_accuracy"] <= 1.0
            assert r["val_accuracy"] == r["val_history"][0] and len(r["task_descriptor"]) == 22
            assert r["start"].startswith("models:/zoo.") and r["task_classes"] > 1
    history = mlflow.MlflowClient().get_metric_history(records[0]["run_id"], "val_accuracy")
    assert [m.step for m in history] == [1]  # the UI draws the curve
    # --resume keeps every record; without it the table is written again
    again = build_table(TransferConfig(**cfg, resume=True))
    assert again.written == 0 and again.kept == 4 and len(read_records(rec.experiment_id)) == 4
    # a record cut short before its key is never read
    client = mlflow.MlflowClient()
    run = client.get_run(records[0]["run_id"])
    client.delete_tag(run.info.run_id, KEY_TAG)
    assert len(read_records(rec.experiment_id)) == 3
    assert build_table(TransferConfig(**cfg, resume=True)).written == 1
    with pytest.raises(ConfigError, match="not a training dataset of this zoo"):
        build_table(TransferConfig(**cfg, datasets=("glyphs",)))


def test_a_query_appends_its_finetunings_to_the_table(work, tiny_data_dir):
    out = CliRunner().invoke(main, ["query", "digits", "--finetune", "1", "--top-k", "2", "--epochs", "1",
                                    "--no-export", "--work-dir", str(work), "--data-dir", str(tiny_data_dir), "--json"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    tracking.setup(work)
    exp = tracking.experiment_id("transfer", work)
    mine = read_records(exp, "query")
    assert len(mine) == 1 and mine[0]["start"] == res["finetuned"][0]["parent"]
    assert mine[0]["test_accuracy"] == pytest.approx(res["finetuned"][0]["test_accuracy"])
    assert mine[0]["task_encoder"] == res["query"]["encoder_version"]
    assert decode_embedding(mine[0]["task_embedding"]).shape[0] > 0
    assert mine[0]["task_fingerprint"] == res["query"]["fingerprint"]
    # encoder training reads it with the table's records (the predictor learns from every record)
    build_table(TransferConfig(starts=2, epochs=1, max_train=60, max_test=30, workers=1, work_dir=str(work),
                               data_dir=str(tiny_data_dir), progress=False, resume=True))  # kept when written above
    table = read_records(exp, "table")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("tans-encoders", "champion").version
    rec = train_encoders(EncoderTrainConfig(encoder=EncoderConfig(k_per_class=4), steps=2, eval_every=2,
                                            val_datasets=("cells",), backbone_epochs=0.5, work_dir=str(work),
                                            data_dir=str(tiny_data_dir), progress=False))
    params = mlflow.get_run(rec.run_id).data.params
    # (a query that kept its linear probe says nothing of fine-tuning: read, but not an example)
    used = 0 if mine[0].get("kept") == "probe" else 1
    assert table and int(params["transfer_records"]) == len(table) + used, (params, mine[0].get("kept"))
    client.set_registered_model_alias("tans-encoders", "champion", champion)  # the index stays the champion's


def test_a_finetuned_winner_joins_the_zoo_and_is_searched(work, tiny_data_dir, monkeypatch):
    """`tans zoo add`: the query's registered winner becomes a standalone zoo version (its own weights), loads
    as the same network, is embedded and indexed (its dataset embedding from its dataset), scored by LogME like
    any version; adding it again changes nothing; a zoo version is refused."""
    from tans_registry.registry import client as C
    from tans_registry.registry.index import load_index
    from tans_registry.registry.pyfunc import load_module
    from tans_registry.retrieval.search import transfer_scores
    from tans_registry.data import load_dataset

    out = CliRunner().invoke(main, ["query", "cells", "--finetune", "1", "--top-k", "1", "--epochs", "1", "--no-export",
                                    "--work-dir", str(work), "--data-dir", str(tiny_data_dir), "--json"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    winner = json.loads(out.stdout)["winner"]["model_uri"]
    # the registry failing at the last step (the version) leaves nothing: no empty model, no run
    import mlflow.pyfunc  # (binds this function's `mlflow`, imported again below)
    from mlflow.exceptions import MlflowException

    tracking.setup(work)
    zoo_runs = lambda: len(mlflow.search_runs(experiment_ids=[tracking.experiment_id("zoo", work)],  # noqa: E731
                                              output_format="list"))
    runs_before = zoo_runs()

    def refuse(*_a, **_k):
        raise MlflowException("the registry went away")

    with monkeypatch.context() as m:
        m.setattr(mlflow.MlflowClient, "create_model_version", refuse)
        failed = CliRunner().invoke(main, ["zoo", "add", winner, "--work-dir", str(work)])
    assert failed.exit_code != 0 and "the registry went away" in failed.output + repr(failed.exception), failed.output
    assert C.get_model("zoo.added.cells") is None and zoo_runs() == runs_before
    res = CliRunner().invoke(main, ["zoo", "add", winner, "--work-dir", str(work), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["created"] and rec["model_uri"].startswith("models:/zoo.added.cells/") and rec["dataset"] == "cells"
    tracking.setup(work)
    name, number = rec["model_uri"][len("models:/"):].split("/")
    v = C.client().get_model_version(name, number)
    assert v.tags["tans.standalone"] == "true" and v.tags["tans.added_from"] == rec["added_from"]
    assert "tans.sha256" in v.tags and v.tags["tans.dataset"] == "cells"
    again = json.loads(CliRunner().invoke(main, ["zoo", "add", winner, "--work-dir", str(work), "--json"]).stdout)
    assert not again["created"] and again["model_uri"] == rec["model_uri"] and len(C.versions(name)) == 1
    # the same network as the fine-tuned winner
    ds = load_dataset("cells", data_dir=tiny_data_dir)
    import mlflow.pyfunc

    fine = mlflow.pyfunc.load_model(winner).predict(ds.x_test[:8])["logits"]
    added = mlflow.pyfunc.load_model(rec["model_uri"]).predict(ds.x_test[:8])["logits"]
    np.testing.assert_allclose(added, fine, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in load_module(rec["model_uri"]).parameters()) == rec["n_params"]
    # indexed, with its dataset embedding, and scored by LogME like any version
    CliRunner().invoke(main, ["index", "build", "--work-dir", str(work)], catch_exceptions=False)
    idx, _ = load_index(work, latency=False)
    row = [i for i in range(len(idx)) if idx.names[i] == name]
    assert len(row) == 1 and np.linalg.norm(idx.dataset_emb[row[0]]) > 0 and idx.encoders[row[0]] != "raw"
    scores = transfer_scores([rec["model_uri"]], ds, seed=0, device="cpu", kinds=("logme", "leep", "nce"))
    assert all(np.isfinite(v[0]) for v in scores.values())
    zoo_version = f"models:/{idx.names[0]}/{idx.versions[0]}" if idx.names[0] != name else f"models:/{idx.names[1]}/{idx.versions[1]}"
    refused = CliRunner().invoke(main, ["zoo", "add", zoo_version, "--work-dir", str(work)])
    assert refused.exit_code == 1 and "is a zoo version already" in refused.output
    # a fine-tuned version of another input size (its network.json says 64) is refused, naming it; nothing changes
    local = Path(mlflow.artifacts.download_artifacts(winner))
    meta = next(local.rglob("network.json"))
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"input_size": 64}))
    with mlflow.start_run(experiment_id=tracking.experiment_id("queries", work)) as run:
        mlflow.log_artifacts(str(local), "finetuned")
    other = C.client().create_model_version(winner.split("/")[1], f"{run.info.artifact_uri}/finetuned", run.info.run_id)
    before = ({m.name: len(C.versions(m.name)) for m in C.client().search_registered_models()},
              len(mlflow.search_runs(experiment_ids=[tracking.experiment_id("zoo", work)], output_format="list")))
    refused = CliRunner().invoke(main, ["zoo", "add", f"models:/{other.name}/{other.version}", "--work-dir", str(work)])
    assert refused.exit_code == 1 and "takes 64x64 images, the zoo's networks 32x32" in refused.output, refused.output
    assert before == ({m.name: len(C.versions(m.name)) for m in C.client().search_registered_models()},
                      len(mlflow.search_runs(experiment_ids=[tracking.experiment_id("zoo", work)], output_format="list")))
