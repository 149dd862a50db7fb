"""Encoder training: learning on a seeded synthetic meta-dataset, save/load, the real pipeline on a tiny zoo."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tans_registry.encoders.config import EncoderConfig
from tans_registry.encoders.models import TansEncoders
from tans_registry.training.config import EncoderTrainConfig
from tans_registry.training.loop import fit
from tans_registry.validation.evaluate import evaluate
from tans_registry.zoo.meta import MetaGroup, split_by_dataset


def synthetic_groups(n_groups=24, nets=8, feat_dim=32, func_dim=48, seed=0):
    """Each dataset has a latent vector; its images' features and its networks' functional embeddings
    are two different noisy linear views of it, so a dataset can be matched to its own networks."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(6, feat_dim)), rng.normal(size=(6, func_dim))
    groups = []
    for g in range(n_groups):
        z = rng.normal(size=6)
        acc = rng.uniform(0.3, 0.9, nets).astype(np.float32)
        groups.append(MetaGroup(
            name=f"d{g}", dataset=f"d{g}", run_id="r", topology=rng.integers(0, 8, (nets, 45)).astype(np.float32),
            functional=(z @ b + 0.3 * rng.normal(size=(nets, func_dim))).astype(np.float32),
            accuracy=acc, descriptor=np.zeros(22, np.float32),
            features=(z @ a + 0.5 * rng.normal(size=(30, feat_dim))).astype(np.float32)))
    return groups


@pytest.mark.parametrize("loss,pooling", [("hinge", "mean"), ("infonce", "attention")])
def test_seeded_training_raises_validation_recall(loss, pooling):
    groups = synthetic_groups()
    train, val, names = split_by_dataset(groups, [f"d{i}" for i in range(18, 24)])
    assert len(train) == 18 and len(val) == 6 and names == [f"d{i}" for i in range(18, 24)]
    torch.manual_seed(0)
    # dataset_weight 0: the cross-modal space alone (with it, a group's own networks are found through
    # its own dataset embedding, trivially)
    enc = TansEncoders(EncoderConfig(feature_dim=32, functional_dim=48, embed_dim=16, hidden=32, pooling=pooling,
                                     dataset_weight=0.0, use_functional=True))
    before = evaluate(enc, val, train)
    cfg = EncoderTrainConfig(steps=150, eval_every=25, patience=10, loss=loss, lr=3e-3, progress=False)
    best = fit(enc, train, val, cfg)
    assert best["val_mean_rank"] < before["val_mean_rank"]
    assert best["val_recall_at_5"] > before["val_recall_at_5"]
    # the loop leaves the encoders at the best checkpoint: evaluating again gives its report
    again = evaluate(enc, val, train)
    assert again["val_recall_at_5"] == pytest.approx(best["val_recall_at_5"])


def test_predictor_learns_the_order_within_held_out_datasets():
    """Accuracy = the dataset's level + a share of the topology's first feature (bigger is better, as
    in the zoo): the predictor, trained with the ranking term, must order held-out datasets' networks."""
    groups = synthetic_groups(seed=1)
    rng = np.random.default_rng(3)
    for g in groups:
        g.topology[:, 0] = rng.uniform(1, 7, len(g.accuracy))
        g.accuracy = (rng.uniform(0.2, 0.7) + 0.03 * g.topology[:, 0]).astype(np.float32)
    train, val, _ = split_by_dataset(groups, [f"d{i}" for i in range(18, 24)])
    torch.manual_seed(0)
    enc = TansEncoders(EncoderConfig(feature_dim=32, functional_dim=48, embed_dim=16, hidden=32, use_functional=True))
    before = evaluate(enc, val, train)
    best = fit(enc, train, val, EncoderTrainConfig(steps=150, eval_every=25, patience=10, lr=3e-3, progress=False))
    assert best["val_weighted_tau"] > max(0.4, before["val_weighted_tau"] + 0.2)


def _group(name, dataset, acc, descriptor, topology=None, n_params=None):
    acc = np.asarray(acc, np.float32)
    topo = topology if topology is not None else np.arange(len(acc) * 45, dtype=np.float32).reshape(len(acc), 45)
    return MetaGroup(name=name, dataset=dataset, run_id="r", topology=topo,
                     functional=np.zeros((len(acc), 4), np.float32), accuracy=acc,
                     descriptor=np.asarray(descriptor, np.float32),
                     n_params=None if n_params is None else np.asarray(n_params, np.float64))


def test_cross_task_protocol_removes_own_networks_and_scores_siblings():
    from tans_registry.validation.protocols import own_and_sibling_positives as _own_and_sibling_positives
    from tans_registry.validation.protocols import retrieval_reports as _retrieval_reports

    # validation dataset "a" has two tasks; "b" is a training dataset; "c" a single-group dataset
    a0, a1, b, c = (_group("a-t0", "a", [.5, .6], [0]), _group("a-t1", "a", [.5, .6], [0]),
                    _group("b", "b", [.5, .6], [0]), _group("c", "c", [.5, .6], [0]))
    everyone, val = [b, a0, a1, c], [a0, a1, c]
    owner = np.repeat(np.arange(4), 2)
    own, sib = _own_and_sibling_positives(val, everyone, owner)
    assert [o.tolist() for o in own] == [[2, 3], [4, 5], [6, 7]]
    assert sib[0].tolist() == [4, 5] and sib[1].tolist() == [2, 3] and sib[2] is None
    # columns: b b a0 a0 a1 a1 c c. a-t0 ranks itself first, then b, then its sibling a-t1
    scores = np.array([[5, 5, 9, 9, 1, 1, 0, 0],   # a-t0
                       [0, 0, 8, 8, 9, 9, 0, 0],   # a-t1: sibling a-t0 right after itself
                       [0, 0, 0, 0, 0, 0, 9, 9]], float)
    rep = _retrieval_reports(scores, own, sib)
    assert rep["val_recall_at_1"] == 1.0                  # every group finds its own networks first
    assert rep["val_xtask_recall_at_1"] == 0.5            # a-t0's sibling comes after b's networks
    assert rep["val_xtask_mean_rank"] == pytest.approx((3 + 1) / 2)  # c has no sibling: not counted


def test_good_sibling_protocol_and_reranking():
    from tans_registry.retrieval.rerank import RerankPolicy, rerank_scores
    from tans_registry.validation.protocols import good_siblings as _good_siblings
    from tans_registry.validation.protocols import retrieval_reports as _retrieval_reports

    def _reranked(scores, predicted, own, top, owner=None, groups=0):
        return rerank_scores(scores, predicted, np.repeat(np.arange(3), 2) if owner is None else owner, own,
                             RerankPolicy(shortlist=top, groups=groups))

    # columns: b b | a0 a0 | a1 a1 (a1's accuracies .9 and .1: only column 4 is a "good" network)
    groups = [_group("b", "b", [.5, .6], [0]), _group("a-t0", "a", [.5, .6], [0]), _group("a-t1", "a", [.9, .1], [0])]
    owner = np.repeat(np.arange(3), 2)
    own, sib = [np.array([2, 3])], [np.array([4, 5])]
    good = _good_siblings(groups[1:2], groups, owner, sib)
    assert good[0].tolist() == [4]
    scores = np.array([[3.0, 2.0, 9.0, 9.0, 1.0, 1.5]])        # retrieval: b first, then the bad sibling
    assert _retrieval_reports(scores, own, sib, good)["val_xgood_recall_at_1"] == 0.0
    predicted = np.array([[.2, .3, .99, .99, .8, .1]])
    # the predictor re-ranks the top 4 (own networks excluded): the good sibling goes first
    final = _reranked(scores, predicted, own, top=4)
    rep = _retrieval_reports(scores, own, sib, good, final)
    assert rep["val_xgood_recall_at_1"] == 1.0 and rep["val_xtask_recall_at_1"] == 0.0
    # re-ranking only the top 2 leaves the siblings below b's networks
    assert _retrieval_reports(scores, own, sib, good, _reranked(scores, predicted, own, top=2))["val_xgood_mean_rank"] == 4.0
    # re-ranking within the first group retrieved (b): the siblings stay below it, in retrieval order
    one = _reranked(scores, predicted, own, top=4, owner=owner, groups=1)
    assert one[0, [0, 1]].min() > one[0, [4, 5]].max() and one[0, 5] > one[0, 4]
    assert _retrieval_reports(scores, own, sib, good, one)["val_xgood_mean_rank"] == 4.0
    two = _reranked(scores, predicted, own, top=4, owner=owner, groups=2)  # b and a-t1: as all four
    np.testing.assert_array_equal(two, final)


def test_validation_and_queries_rerank_alike():
    """The one policy: validation's matrix form ranks each row's shortlist exactly as a query's list form."""
    from tans_registry.registry.index import top_k
    from tans_registry.retrieval.rerank import RerankPolicy, rerank_list, rerank_scores

    rng = np.random.default_rng(0)
    owner = np.repeat(np.arange(12), 5)                       # 12 groups of 5 networks
    scores, predicted = rng.normal(size=(6, 60)), rng.uniform(0.2, 0.9, (6, 60))
    own = [np.flatnonzero(owner == i) for i in range(6)]      # row i may not retrieve group i
    for policy in (RerankPolicy(shortlist=20, groups=1), RerankPolicy(shortlist=20, groups=2),
                   RerankPolicy(shortlist=7, groups=0)):
        final = rerank_scores(scores, predicted, owner, own, policy)
        for i in range(6):
            s = scores[i].copy()
            s[own[i]] = -np.inf
            shortlist = top_k(s, policy.shortlist)
            order, _ = rerank_list(owner[shortlist], lambda p: predicted[i, shortlist[p]], policy)
            ranked = final[i].copy()
            ranked[own[i]] = -np.inf  # as the protocols do (without_own)
            assert np.argsort(-ranked, kind="stable")[: policy.shortlist].tolist() == shortlist[order].tolist()
            assert not set(own[i]) & set(shortlist.tolist())


def test_first_groups_keeps_retrieval_order():
    from tans_registry.retrieval.rerank import first_groups, pool

    assert first_groups(["b", "b", "a", "c", "a", "d"], 2) == ["b", "a"]
    assert first_groups(["b", "b"], 3) == ["b"]
    assert pool(["b", "b", "a", "c", "a", "d"], 2).tolist() == [0, 1, 2, 4]
    assert pool(["b", "a"], 0).tolist() == [0, 1]


def test_pixel_and_size_heuristics():
    from tans_registry.validation.baselines import pixel_heuristic, size_heuristic

    topo = np.eye(3, 45, dtype=np.float32)
    near = _group("near", "n", [.9, .5, .1], [1, 1], topo)      # same pixel statistics as the query
    far = _group("far", "f", [.1, .5, .9], [9, 9], topo)        # opposite accuracy order
    q = _group("q-t0", "q", [.8, .4, .2], [1, 1.1], topo[[0, 1, 2]], n_params=[1, 2, 3])
    sib = _group("q-t1", "q", [.8, .4, .2], [1.2, 1.1], topo)
    rep = pixel_heuristic([q, sib], [near, far])
    # the same architectures on the nearest training group ("near") rank q's networks perfectly
    assert rep["val_weighted_tau"] == pytest.approx(1.0)
    assert rep["val_recall_at_1"] == 1.0
    # bigger is better: n_params rise while accuracy falls
    assert size_heuristic([q])["val_weighted_tau"] == pytest.approx(-1.0)
    assert size_heuristic([sib]) == {}


def test_encoders_round_trip_through_safetensors(tmp_path):
    enc = TansEncoders(EncoderConfig(feature_dim=32, functional_dim=48, embed_dim=16, hidden=32, pooling="attention",
                                     use_functional=True))
    back = TansEncoders.load(enc.save(tmp_path / "enc"))
    x = torch.randn(3, 7, 32)
    topo, func = torch.randn(5, 45), torch.randn(5, 48)
    enc.eval()
    torch.testing.assert_close(back.query(x), enc.query(x))
    torch.testing.assert_close(back.model(topo, func), enc.model(topo, func))
    assert back.cfg == enc.cfg


def test_model_encoder_normalises_each_part_on_its_own():
    enc = TansEncoders(EncoderConfig(functional_dim=48, feature_dim=32, embed_dim=16, hidden=32,
                                     use_functional=True)).eval()
    topo, func = torch.rand(2, 45) * 7, torch.randn(2, 48)
    # scaling the functional part by 1000 changes nothing: it cannot drown the topology
    torch.testing.assert_close(enc.model(topo, func * 1000), enc.model(topo, func))
    assert not torch.allclose(enc.model(topo * 0 + 3, func), enc.model(topo, func))


def test_split_rejects_unknown_validation_datasets():
    from tans_registry.errors import TansError

    with pytest.raises(TansError, match="not in the zoo"):
        split_by_dataset(synthetic_groups(4), ["nope"])


# ------------------------------------------------------------------------------ the real pipeline
@pytest.fixture(scope="module")
def trained(tiny_templates, tmp_path_factory):
    """A copy of the session's tiny pipeline: registered, encoders trained, no index yet."""
    from conftest import tiny_work, trained_record

    work = tiny_work(tiny_templates, "trained", tmp_path_factory.mktemp("enc-work") / "work")
    return work, trained_record(tiny_templates)


def test_training_is_tracked_and_registered(trained):
    import mlflow

    from tans_registry import tracking

    work, rec = trained
    tracking.setup(work)
    client = mlflow.MlflowClient()
    run = client.get_run(rec.run_id)
    assert run.data.params["loss"] == "hinge" and run.data.params["val_datasets_used"] == "cells"
    assert run.data.params["n_train_groups"] == "3" and run.data.params["n_val_groups"] == "1"
    assert "best_val_recall_at_5" in run.data.metrics and "pixel_heuristic_val_recall_at_5" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_recall_at_5")] == [3, 6]
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"encoders", "backbone", "embedding_map.png", "query_sets.npz"} <= names
    assert rec.encoders_version == 1 and rec.champion is True
    assert str(client.get_model_version_by_alias("tans-encoders", "champion").version) == "1"
    assert client.get_registered_model("tans-backbone").latest_versions


def test_champion_moves_only_when_validation_improves(trained):
    """Only a better score computed the same way (same selection datasets, same metric) moves the champion;
    a score from other datasets or another metric does not compare (--promote replaces it anyway)."""
    import mlflow

    from tans_registry import tracking
    from tans_registry.registry.models import register_encoders

    work, rec = trained
    tracking.setup(work)
    client = mlflow.MlflowClient()
    first = client.get_model_version("tans-encoders", "1").tags
    current, metric, val = float(first["tans.val_score"]), first["tans.val_metric"], tuple(first["tans.val_datasets"].split(","))
    assert val == rec.val_datasets

    def champion() -> str:
        return str(client.get_model_version_by_alias("tans-encoders", "champion").version)

    worse = register_encoders(rec.run_id, current - 0.5, metric, val)
    assert worse["champion"] is False and worse["champion_comparable"] is True and champion() == "1"
    other_data = register_encoders(rec.run_id, current + 5.0, metric, ("digits",))
    assert other_data["champion"] is False and other_data["champion_comparable"] is False and champion() == "1"
    other_metric = register_encoders(rec.run_id, current + 5.0, "val_recall_at_5" if metric != "val_recall_at_5"
                                     else "val_xtask_recall_at_5", val)
    assert other_metric["champion"] is False and champion() == "1"
    better = register_encoders(rec.run_id, current + 0.5, metric, val)
    assert better["champion"] is True and champion() == str(better["encoders_version"])
    forced = register_encoders(rec.run_id, -10.0, metric, ("digits",), promote=True)
    assert forced["champion"] is True and champion() == str(forced["encoders_version"])
    again = register_encoders(rec.run_id, current + 0.5, metric, val)  # back on the original datasets
    assert again["champion"] is False and again["champion_comparable"] is False


def test_index_build_writes_decodable_learned_embeddings(trained):
    import mlflow

    from tans_registry import tracking
    from tans_registry.registry.codec import decode_embedding
    from tans_registry.registry.index import load_index
    from tans_registry.registry.register import current_zoo_versions
    from tans_registry.retrieval.embed import embed_zoo

    work, _ = trained
    tracking.setup(work)
    client = mlflow.MlflowClient()
    raw_idx, raw_rec = load_index(work)
    champion = str(client.get_model_version_by_alias("tans-encoders", "champion").version)
    first = embed_zoo(progress=False)
    assert first["updated"] == 12 and first["encoder_version"] == champion
    assert embed_zoo(progress=False)["updated"] == 0  # idempotent
    for v in current_zoo_versions():
        assert v.tags["tans.encoder_version"] == champion
        assert decode_embedding(v.tags["tans.model_embedding"]).shape == (128,)
        assert decode_embedding(v.tags["tans.dataset_embedding"]).shape == (128,)
    idx, rec = load_index(work)
    assert rec["cache"] == "built" and rec["key"] != raw_rec["key"]
    assert idx.model_emb.shape == (12, 128) and idx.encoder_version == champion
    np.testing.assert_allclose(np.linalg.norm(idx.model_emb, axis=1), 1.0, atol=2e-3)


# ------------------------------------------------------------------------------ tans query
def run_query(cfg):
    """The ranking stage's record, as a dict."""
    from dataclasses import asdict

    from tans_registry import rank

    return asdict(rank(cfg))


def _ready_index(work):
    import mlflow

    from tans_registry import IndexConfig, build_index

    build_index(IndexConfig(work_dir=str(work), progress=False))
    return mlflow.MlflowClient()


def test_query_ranks_candidates_under_constraints_and_logs_the_run(trained, tiny_data_dir):
    import json as _json

    import mlflow

    from tans_registry import RankConfig as QueryConfig

    work, _ = trained
    client = _ready_index(work)
    every = run_query(QueryConfig(data="cells", top_k=12, rerank="predictor", rerank_groups=0, work_dir=str(work),
                                  data_dir=str(tiny_data_dir)))
    assert len(every["candidates"]) == 12 and every["dataset"]["classes"] == 3
    # the policy and the query-set size the champion was trained and validated with
    assert (every["shortlist"], every["rerank_groups"], every["k_per_class"]) == (100, 0, 4)
    preds = [c["predicted_accuracy"] for c in every["candidates"]]
    assert preds == sorted(preds, reverse=True) and all(0 < p < 1 for p in preds)
    limit = sorted(c["n_params"] for c in every["candidates"])[5]
    small = run_query(QueryConfig(data="cells", top_k=12, max_params=limit, exclude_datasets=("cells",),
                                  work_dir=str(work), data_dir=str(tiny_data_dir)))
    assert small["candidates"] and all(c["n_params"] <= limit and c["dataset"] != "cells" for c in small["candidates"])
    run = client.get_run(small["run_id"])
    assert run.data.tags["tans.kind"] == "query" and run.data.params["max_params"] == str(limit)
    assert run.data.tags["tans.fingerprint"] == small["dataset"]["fingerprint"]
    path = mlflow.artifacts.download_artifacts(run_id=small["run_id"], artifact_path="candidates.json")
    assert [c["version"] for c in _json.loads(open(path).read())] == [c["version"] for c in small["candidates"]]
    # without re-ranking: retrieval order, no predictions
    plain = run_query(QueryConfig(data="cells", top_k=3, rerank="none", log_run=False, work_dir=str(work),
                                  data_dir=str(tiny_data_dir)))
    assert len(plain["candidates"]) == 3 and plain["candidates"][0]["predicted_accuracy"] is None
    scores = [c["score"] for c in plain["candidates"]]
    assert scores == sorted(scores, reverse=True)


def test_query_reranks_within_the_first_groups_retrieved(trained, tiny_data_dir):
    from tans_registry import RankConfig as QueryConfig

    work, _ = trained
    _ready_index(work)
    plain = run_query(QueryConfig(data="digits", top_k=12, rerank="none", log_run=False, work_dir=str(work),
                                  data_dir=str(tiny_data_dir)))
    first = plain["candidates"][0]["group"]
    one = run_query(QueryConfig(data="digits", top_k=12, rerank="predictor", rerank_groups=1, log_run=False,
                                work_dir=str(work),
                                data_dir=str(tiny_data_dir)))
    assert one["rerank_groups"] == 1
    head = [c for c in one["candidates"] if c["predicted_accuracy"] is not None]
    tail = one["candidates"][len(head):]
    assert len(head) == 3 and {c["group"] for c in head} == {first}  # a group's 3 networks, re-ranked
    assert [c["predicted_accuracy"] for c in head] == sorted((c["predicted_accuracy"] for c in head), reverse=True)
    assert all(c["predicted_accuracy"] is None and c["group"] != first for c in tail)
    assert [c["version"] for c in tail] == [c["version"] for c in plain["candidates"] if c["group"] != first]


def test_query_bad_input_fails_cleanly_and_logs_nothing(trained, tiny_data_dir):
    from click.testing import CliRunner

    from tans_registry.cli import main

    work, _ = trained
    client = _ready_index(work)

    def n_query_runs():
        exp = client.get_experiment_by_name("tans/queries")
        return 0 if exp is None else len(client.search_runs([exp.experiment_id]))

    before = n_query_runs()
    args = ["query", "--finetune", "0", "--work-dir", str(work), "--data-dir", str(tiny_data_dir)]
    res = CliRunner().invoke(main, args + ["no-such-dataset"])
    assert res.exit_code == 1 and "no-such-dataset" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, args + ["cells", "--max-params", "1"])
    assert res.exit_code == 1 and "no zoo network satisfies" in res.output and "--max-params" in res.output
    assert "the closest: models:/zoo." in res.output and "parameters > 1" in res.output  # named, with the excess
    res = CliRunner().invoke(main, args + ["cells", "--rerank", "oracle"])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, args + ["cells", "--rerank-groups", "-1"])
    assert res.exit_code == 2 and "--rerank-groups" in res.output
    assert n_query_runs() == before
    ok = CliRunner().invoke(main, args + ["cells", "--top-k", "2", "--json"])
    assert ok.exit_code == 0, ok.output
    import json as _json

    assert len(_json.loads(ok.stdout)["candidates"]) == 2 and n_query_runs() == before + 1


def test_query_refuses_a_stale_index(trained, tiny_data_dir):
    from tans_registry.registry.models import register_encoders
    from tans_registry.errors import TansError
    from tans_registry import RankConfig as QueryConfig

    work, rec = trained
    _ready_index(work)
    assert register_encoders(rec.run_id, 0.0, "val_recall_at_5", ("cells",), promote=True)["champion"]  # a new one
    with pytest.raises(TansError, match="tans index build") as err:
        run_query(QueryConfig(data="cells", work_dir=str(work), data_dir=str(tiny_data_dir)))
    assert err.value.code == "INDEX_STALE"


def test_bench_trains_the_chosen_variants_and_logs_the_table(trained, tiny_data_dir):
    import json as _json

    import mlflow
    from click.testing import CliRunner

    from tans_registry.cli import main

    work, _ = trained
    args = ["encoders", "bench", "--work-dir", str(work), "--data-dir", str(tiny_data_dir), "--holdout", "cells", "--steps", "3"]
    res = CliRunner().invoke(main, args + ["--variants", "default,no predictor", "--json"])
    assert res.exit_code == 0, res.output
    out = _json.loads(res.stdout)
    assert set(out["rows"]) == {"default", "no predictor", "untrained encoder", "pixel-statistics heuristic",
                                "bigger-is-better heuristic", "best-average architecture"}
    assert "val_weighted_tau" in out["rows"]["default"] and "val_weighted_tau" not in out["rows"]["no predictor"]
    for row in ("default", "best-average architecture", "bigger-is-better heuristic"):
        assert 0.0 <= out["rows"][row]["val_regret_top1"] <= 100.0, row
    client = mlflow.MlflowClient()
    run = client.get_run(out["run_id"])
    assert run.data.params["val_datasets"] == "cells"
    table = open(mlflow.artifacts.download_artifacts(run_id=out["run_id"], artifact_path="bench_encoders.md")).read()
    assert "| no predictor |" in table and "| pixel-statistics heuristic |" in table
    assert "| best-average architecture |" in table and "top-1 regret" in table
    bad = CliRunner().invoke(main, args + ["--variants", "default,nope"])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_bench_on_a_zoo_snapshot_matches_the_zoo(trained, tiny_data_dir, tmp_path):
    import json as _json

    from click.testing import CliRunner

    from tans_registry.cli import main
    from tans_registry.zoo.meta import load_meta_snapshot

    work, _ = trained
    snap = tmp_path / "zoo-snapshot.npz"
    args = ["encoders", "bench", "--work-dir", str(work), "--data-dir", str(tiny_data_dir), "--holdout", "cells", "--steps", "3",
            "--variants", "default", "--json"]
    first = CliRunner().invoke(main, args + ["--save-snapshot", str(snap)])
    assert first.exit_code == 0, first.output
    groups = load_meta_snapshot(snap, str(tiny_data_dir))
    assert len(groups) == 4 and all(len(g.accuracy) == 3 and g.functional.shape == (3, 1280) for g in groups)
    again = CliRunner().invoke(main, args + ["--snapshot", str(snap)])
    assert again.exit_code == 0, again.output
    a, b = _json.loads(first.stdout)["rows"], _json.loads(again.stdout)["rows"]
    assert a["pixel-statistics heuristic"] == b["pixel-statistics heuristic"]
    assert a["default"]["val_recall_at_5"] == pytest.approx(b["default"]["val_recall_at_5"])
    missing = CliRunner().invoke(main, args + ["--snapshot", str(tmp_path / "nope.npz")])
    assert missing.exit_code == 1 and "no zoo snapshot" in missing.output


def test_encoders_and_backbone_load_as_mlflow_pyfunc_models(trained, tiny_data_dir):
    """`mlflow.pyfunc.load_model` on the champions: the encoders turn a set of images into the dataset
    embedding the query path computes, the backbone into per-image features; signature, input example,
    safetensors, no pickle."""
    import mlflow
    from mlflow.models import Model

    from tans_registry import tracking
    from tans_registry.data import load_dataset
    from tans_registry.encoders.backbone import extract_features
    from tans_registry.retrieval.embed import load_champion

    work, _ = trained
    tracking.setup(work)
    x = load_dataset("cells", data_dir=tiny_data_dir).x_train[:12]
    emb = mlflow.pyfunc.load_model("models:/tans-encoders@champion").predict(x)
    feats = mlflow.pyfunc.load_model("models:/tans-backbone@champion").predict(x)
    assert emb.shape == (1, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb), 1.0, atol=1e-5)
    assert feats.shape == (12, 256) and np.isfinite(feats).all()
    champ = load_champion()
    np.testing.assert_allclose(feats, extract_features(champ.backbone, x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        expected = champ.encoders.query(torch.from_numpy(extract_features(champ.backbone, x))[None]).numpy()
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    client = mlflow.MlflowClient()
    for name in ("tans-encoders", "tans-backbone"):
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion"))
        model = Model.load(str(folder / "MLmodel"))
        assert model.signature is not None and model.saved_input_example_info is not None
        assert model.signature.inputs.inputs[0].type == np.dtype(np.uint8)
        files = [p.name for p in folder.rglob("*") if p.is_file()]
        assert any(f.endswith(".safetensors") for f in files)
        assert not any(f.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin")) for f in files), files
    # the folders load where tans-registry is not installed (their code path): a process without site's
    # .pth files (so no editable install), MLflow importable
    folder = Path(mlflow.artifacts.download_artifacts("models:/tans-encoders@champion"))
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    probe = (f"import sys; sys.path.append({site_packages!r}); import importlib.util as u; "
             "assert u.find_spec('tans_registry') is None; import mlflow, numpy as np; "
             f"m = mlflow.pyfunc.load_model({str(folder)!r}); x = np.load(sys.argv[1]); "
             "np.save(sys.argv[2], m.predict(x)); import tans_registry; print(tans_registry.__file__)")
    np.save(folder.parent / "x.npy", x)
    out = subprocess.run([sys.executable, "-S", "-c", probe, str(folder.parent / "x.npy"), str(folder.parent / "y.npy")],
                         cwd=folder.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert str(folder) in out.stdout  # the package came from the model's own code path
    np.testing.assert_allclose(np.load(folder.parent / "y.npy"), emb, rtol=1e-5, atol=1e-6)
    # the backbone's champion is the champion encoders' own backbone
    enc_v = client.get_model_version_by_alias("tans-encoders", "champion")
    assert str(client.get_model_version_by_alias("tans-backbone", "champion").version) == enc_v.tags["tans.backbone_version"]


def test_the_train_command_stores_its_retrieval_settings_with_the_encoders(trained, tiny_data_dir):
    """--shortlist, --rerank-groups and --k-per-class are kept in the registered encoders' config."""
    import json as _json

    import mlflow
    from click.testing import CliRunner

    from tans_registry import tracking
    from tans_registry.cli import main
    from tans_registry.encoders.flavour import load_encoders

    work, _ = trained
    res = CliRunner().invoke(main, ["encoders", "train", "--steps", "3", "--val-datasets", "cells", "--shortlist", "50",
                                    "--rerank-groups", "0", "--k-per-class", "3", "--work-dir", str(work),
                                    "--data-dir", str(tiny_data_dir), "--json"])
    assert res.exit_code == 0, res.output
    version = _json.loads(res.stdout)["encoders_version"]
    tracking.setup(work)
    enc, _ = load_encoders(Path(mlflow.artifacts.download_artifacts(f"models:/tans-encoders/{version}")))
    assert (enc.cfg.shortlist, enc.cfg.rerank_groups, enc.cfg.k_per_class) == (50, 0, 3)
