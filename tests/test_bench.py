"""The fine-tuning benchmark (`tans bench`): its figures against hand-computed values, the separation of
reported datasets from everything trained, and a real end-to-end run on a tiny zoo with a base supernet."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import _save
from tans_registry.bench import metrics as M
from tans_registry.bench.runs import SEED_KEY_TAG as SEED_KEY


# ----------------------------------------------------------------------------- figures by hand

def test_weighted_tau_matches_the_hand_computed_value():
    """Hyperbolic weights 1/(r+1) on the rank by x and by y, averaged (scipy's default), computed by hand."""
    x = [0.9, 0.7, 0.4, 0.1]
    y = [0.8, 0.9, 0.3, 0.2]

    def by_hand(a, b):
        order = np.argsort(-np.asarray(a))           # rank 0 = the largest of `a`
        rank = np.empty(len(a), int)
        rank[order] = np.arange(len(a))
        w = 1.0 / (rank + 1.0)
        num = den_a = den_b = 0.0
        for i in range(len(a)):
            for j in range(i + 1, len(a)):
                wij = w[i] + w[j]                       # additive weigher
                sa, sb = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
                num += wij * sa * sb
                den_a += wij * sa * sa
                den_b += wij * sb * sb
        return num / math.sqrt(den_a * den_b)

    expected = (by_hand(x, y) + by_hand(y, x)) / 2
    assert M.weighted_tau(x, y) == pytest.approx(expected, abs=1e-12)
    assert M.weighted_tau(x, x) == pytest.approx(1.0)
    assert M.weighted_tau(x, [-v for v in x]) == pytest.approx(-1.0)
    assert M.weighted_tau([1, 1, 1], [1, 2, 3]) is None     # a constant scorer ranks nothing
    assert M.weighted_tau([1, 2], [1, 2]) is None           # too few values


def test_regret_epochs_to_target_and_the_spread_sample():
    assert M.regret(0.90, [0.85, 0.88, 0.70]) == pytest.approx(5.0)
    assert M.regret(0.90, [0.85, 0.88, 0.70], k=3) == pytest.approx(2.0)
    assert M.regret(0.90, []) is None
    assert M.epochs_to([0.2, 0.5, 0.7, 0.6], 0.6) == 3
    assert M.epochs_to([0.2, 0.5], 0.6) is None
    order = list(range(100, 140))                          # retrieval order of 40 rows
    sizes = {r: (r * 37) % 41 for r in order}              # sizes unrelated to the order
    picked = M.spread_sample(order, sizes, 12, must=[139, 100])
    assert len(picked) == len(set(picked)) >= 12 and picked[:2] == [139, 100]
    assert order[0] in picked and order[-1] in picked        # both ends of the retrieval order
    by_size = sorted(order, key=lambda r: sizes[r])
    assert by_size[0] in picked and by_size[-1] in picked    # and of the size range
    assert sorted(M.spread_sample(order[:5], sizes, 12, [])) == order[:5]


def test_mean_regret_and_the_best_average_architecture_by_hand():
    """The encoders' table: points of measured accuracy lost by the predicted-best network; the best-average
    baseline scores each network by its architecture's mean accuracy over the training groups."""
    from types import SimpleNamespace

    from tans_registry.validation.baselines import best_average_heuristic
    from tans_registry.validation.metrics import mean_regret

    assert mean_regret([([0.1, 0.9, 0.5], [0.8, 0.6, 0.7]), ([3, 2, 1], [0.5, 0.4, 0.3])]) == pytest.approx(10.0)
    topo = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    train = [SimpleNamespace(topology=topo, accuracy=np.array([0.9, 0.5, 0.7])),
             SimpleNamespace(topology=topo[:2], accuracy=np.array([0.7, 0.6]))]
    val = [SimpleNamespace(topology=topo, accuracy=np.array([0.6, 0.8, 0.7]))]
    # means: arch0 0.8, arch1 0.55, arch2 0.7 -> picks arch0 (0.6) while arch1 scored 0.8: 20 points lost
    rep = best_average_heuristic(val, train)
    assert rep["val_regret_top1"] == pytest.approx(20.0)
    assert rep["val_weighted_tau"] == pytest.approx(M.weighted_tau([0.8, 0.55, 0.7], [0.6, 0.8, 0.7]))


def _figures(tans, rnd, avg, regret, tau, passes, epochs, scratch_epochs, answer=None, logreg=0.3):
    """One dataset's figures, as `tans bench --json` writes them, with only what the goals read."""
    return {"methods": {"tans": {"test_acc": tans, "test_acc_one_epoch": tans - 0.1, "regret_top1": regret,
                                 "regret_top1_one_epoch": regret + 1, "forward_passes": passes[0],
                                 "epochs_to_scratch": epochs, "answer_test_acc": tans if answer is None else answer},
                        "random": {"test_acc": rnd, "test_acc_one_epoch": rnd - 0.1, "test_acc_std": 0.01,
                                   "regret_top1": 3.0, "regret_top1_one_epoch": 4.0, "forward_passes": 0},
                        "best_average": {"test_acc": avg, "test_acc_one_epoch": avg - 0.1, "regret_top1": 2.0,
                                         "regret_top1_one_epoch": 3.0, "forward_passes": 0},
                        "logme_all": {"test_acc": 0.5, "test_acc_one_epoch": 0.4, "regret_top1": 1.0,
                                      "regret_top1_one_epoch": 2.0, "forward_passes": passes[1]}},
            "weighted_tau": {"tans": tau[0], "predictor": None, "logme": tau[1]},
            "scratch_target": {"val_accuracy": 0.5, "scratch_epochs": scratch_epochs},
            "floors": {"logreg_pixels": logreg},
            "dataset": {"name": "x", "classes": 3, "n_train": 80, "n_val": 20, "test_images": 50},
            "ground_truth": {"networks": 20}}


def test_the_goals_and_the_table_by_hand(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from tans_registry.bench.report import goals, markdown

    ds = {"a": _figures(0.90, 0.80, 0.85, 1.0, (0.2, 0.4), (1, 2250), 1, 5),
          "b": _figures(0.70, 0.75, 0.60, 4.0, (0.5, 0.1), (1, 2250), 2, 5),   # loses to random
          "c": _figures(0.80, 0.70, 0.79, 0.0, (0.3, 0.2), (2, 150), 1, 3),   # only 75x fewer passes
          "d": _figures(0.60, 0.50, 0.55, 2.0, (0.1, 0.3), (1, 2250), None, 5, answer=0.65, logreg=0.7)}
    # (d never reaches scratch's accuracy, and its answer, the probe kept, is below logistic regression)
    g = {x["goal"]: x for x in goals(ds, method="tans")}
    assert all(x["method"] == "tans" for x in g.values())
    assert g["beats_random_and_best_average"]["met"] and g["beats_random_and_best_average"]["value"] == "3 of 4 (need 3)"
    assert g["interval_vs_best_average"]["met"] is None        # no intervals given
    iv = {"tans_minus_best_average": {"mean": -1.0, "low": -3.0, "high": 0.5, "n": 8}}
    assert {x["goal"]: x for x in goals(ds, iv, method="tans")}["interval_vs_best_average"]["met"] is True
    iv["tans_minus_best_average"]["high"] = -0.1
    assert {x["goal"]: x for x in goals(ds, iv, method="tans")}["interval_vs_best_average"]["met"] is False
    assert g["answer_vs_logreg"]["met"] is False and g["answer_vs_logreg"]["value"] == "3 of 4; below: d 0.650 < 0.700"
    assert g["mean_regret"]["met"] is True and g["mean_regret"]["value"] == "1.75 points"  # (1 + 4 + 0 + 2) / 4
    assert g["tau_vs_logme"]["met"] is True and g["tau_vs_logme"]["value"].startswith("0.275 vs 0.250 (2 of 4")
    assert g["forward_passes"]["met"] is False and g["forward_passes"]["value"] == "75x fewer (least)"
    assert g["epochs_vs_scratch"]["met"] is False              # d never reaches scratch's accuracy
    ds["b"]["methods"]["tans"]["test_acc"] = 0.74
    ds.pop("d")
    g = {x["goal"]: x for x in goals(ds, method="tans")}
    assert g["answer_vs_logreg"]["met"] is True
    assert g["beats_random_and_best_average"]["met"] is False  # 2 of 3 < ceil(0.75 * 3)
    assert g["epochs_vs_scratch"]["met"] is False              # b: 2 epochs vs scratch's 5 is more than a third
    ds["b"]["methods"]["tans"]["epochs_to_scratch"] = 1
    assert {x["goal"]: x for x in goals(ds, method="tans")}["epochs_vs_scratch"]["met"] is True
    # the default policy's method when none is named: `tans query`'s --rerank default
    from tans_registry.bench.report import POLICY_METHOD, default_method
    from tans_registry.finetune.config import QueryConfig

    assert default_method() == POLICY_METHOD[QueryConfig(data="x").rerank]
    assert all(x["method"] == default_method() for x in goals(ds))
    table = markdown(ds)
    assert "| dataset | tans | logme_all | random | best_average | best test (upper bound) | logreg pixels |" in table
    assert "| a | 0.900 | 0.500 | 0.800 ±0.010 | 0.850 | - | 0.300 |" in table    # full budget
    assert "| b | 0.600 | 0.400 | 0.650 | 0.500 | - | 0.300 |" in table           # one epoch
    assert "| tans | 2.7 / 1.7 | - | 1/2 |" in table   # regrets (2 + 5 + 1) / 3 at one epoch, (1 + 4 + 0) / 3 full
    # the script merges a --json output and a one-dataset artifact into the same table
    (tmp_path / "ab.json").write_text(json.dumps({"datasets": {"a": ds["a"], "b": ds["b"]}}))
    (tmp_path / "bench-c.json").write_text(json.dumps(ds["c"] | {"dataset": ds["c"]["dataset"] | {"name": "c"}}))
    script = Path(__file__).parent.parent / "scripts" / "bench_table.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "ab.json"), str(tmp_path / "bench-c.json")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == table


def test_the_products_answer_keeps_the_probe_where_it_validates_better_and_the_best_validating_pick():
    from tans_registry.bench.figures import answer

    def res(pv, pt, fv, ft):
        return {"probe": {"val_accuracy": pv, "test_accuracy": pt, "n_iter": 20},
                "budgets": {"5.0": {"val_accuracy": fv, "test_accuracy": ft}}}

    results = {"a": res(0.6, 0.55, 0.7, 0.72),   # fine-tuned kept (0.7 > 0.6)
               "b": res(0.8, 0.81, 0.8, 0.90),   # a tie keeps the probe, as the query does: 0.81
               "c": res(0.5, 0.40, 0.6, 0.65),
               "d": res(0.99, 0.99, 0.1, 0.1)}   # a fourth pick is never fine-tuned by the query
    assert answer(["a", "b", "c", "d"], results, "5.0") == 0.81
    assert answer(["a", "c"], results, "5.0") == 0.72
    assert answer(["a", "c"], results, "5.0", draws=True) == pytest.approx((0.72 + 0.65) / 2)
    results["b"]["probe"]["n_iter"] = None          # a training part of one class: no probe to keep
    assert answer(["a", "b", "c"], results, "5.0") == 0.90
    results["a"]["probe"].pop("val_accuracy")      # a record from before the probe's validation was measured
    assert answer(["a", "b"], results, "5.0") is None


def test_the_hybrid_ranking_for_its_tau_is_the_shortlist_by_its_score_then_the_learned_order():
    from types import SimpleNamespace

    from tans_registry.bench.stage import _hybrid_scores
    from tans_registry.retrieval.config import HYBRID_K, HYBRID_SCORE

    n = HYBRID_K + 10
    groups = np.array([f"g{r % 4}" for r in range(n - 1)] + ["__generalist__"])
    idx = SimpleNamespace(groups=groups)
    order = list(range(n))                                    # retrieval's order
    predicted = {r: float(n - r) for r in order}              # the learned ranking agrees with it
    values = {r: float(r % 7) for r in order}                 # the transferability score
    scores = _hybrid_scores(idx, order, predicted, {HYBRID_SCORE: values})
    ranking = sorted(order, key=lambda r: -scores[r])
    short = ranking[:HYBRID_K]
    assert n - 1 in short                                     # the generalist's best is always shortlisted
    assert [values[r] for r in short] == sorted((values[r] for r in short), reverse=True)
    rest = ranking[HYBRID_K:]
    assert rest == sorted(rest) and not set(rest) & set(short)  # then the learned order


def test_logme_equals_the_closed_form_mean_over_classes():
    """LogME = mean over classes of log N(y_c | 0, I/beta + F F'/alpha) / N at each class's optimum, for
    features narrower and wider than the sample (both branches of the Gram-matrix decomposition)."""
    from scipy.stats import multivariate_normal

    from tans_registry.retrieval.logme import class_evidence, logme

    rng = np.random.default_rng(3)
    for n, d in ((30, 8), (12, 40)):
        f = rng.normal(size=(n, d))
        labels = rng.integers(0, 3, n)
        per_class = []
        for c in np.unique(labels):
            y = (labels == c).astype(float)
            _, a, b = class_evidence(f, y)
            per_class.append(multivariate_normal(np.zeros(n), np.eye(n) / b + f @ f.T / a).logpdf(y) / n)
        assert logme(f, labels) == pytest.approx(float(np.mean(per_class)), abs=1e-8)


# ----------------------------------------------------------------------------- a real tiny zoo

@pytest.fixture(scope="module")
def bench_pipeline(tmp_path_factory):
    """Three real tiny datasets; the zoo holds one out ('faces'), has a base supernet, and is registered,
    the encoders trained and the index built. A fourth, 'glyphs', lies outside the data directory."""
    from tans_registry import (EncoderConfig, EncoderTrainConfig, IndexConfig, RegisterConfig, ZooConfig, build_index,
                               build_zoo, register_zoo, train_encoders)
    from tans_registry.data import load_dataset

    root = tmp_path_factory.mktemp("bench")
    data, outside = root / "data", root / "outside"
    data.mkdir()
    outside.mkdir()
    _save(load_dataset("mnist", max_train=96, max_test=60), data / "digits.npz")
    _save(load_dataset("bccd_cells", max_train=64, max_test=45), data / "cells.npz")
    _save(load_dataset("sign_language_digits", max_train=80, max_test=40), data / "faces.npz")
    _save(load_dataset("chinese_mnist", max_train=90, max_test=45), outside / "glyphs.npz")
    work = root / "work"
    build = build_zoo(ZooConfig(profile="quick", datasets=("digits", "cells"), holdout=("faces",), subnets=3, epochs=1, groups=4,
                                base_epochs=0.2, data_dir=str(data), work_dir=str(work), progress=False))
    register_zoo(RegisterConfig(work_dir=str(work), progress=False))
    enc = train_encoders(EncoderTrainConfig(encoder=EncoderConfig(k_per_class=4), steps=6, eval_every=3,
                                            val_datasets=("cells",), backbone_epochs=0.5, work_dir=str(work),
                                            data_dir=str(data), progress=False))
    build_index(IndexConfig(work_dir=str(work), progress=False))
    return {"work": work, "data": data, "outside": outside, "build": build, "encoders": enc}


def test_a_reported_dataset_never_reaches_the_zoo_the_base_the_backbone_or_the_encoders(bench_pipeline):
    import mlflow

    from tans_registry import tracking
    from tans_registry.data import load_dataset
    from tans_registry.data.stats import image_hashes
    from tans_registry.zoo import store

    p = bench_pipeline
    assert p["build"].holdout == ("faces",)
    assert {g.dataset for g in p["build"].groups} == {"digits", "cells"}
    wd, _ = tracking.setup(str(p["work"]))
    runs = store.finished_group_runs(tracking.experiment_id("zoo", wd))
    assert "__base__" in runs
    assert all(r.data.tags[store.HOLDOUT_TAG] == "faces" for r in runs.values())
    # the base supernet was trained on the two training datasets' images only
    base = runs["__base__"].data.params
    assert int(base["n_images"]) == 96 + 64 and int(base["n_classes"]) == 10 + 3
    faces = load_dataset("faces", data_dir=p["data"])
    zoo_images = np.concatenate([store.read_image_hashes(r.info.run_id) for g, r in runs.items() if g != "__base__"])
    assert not np.isin(image_hashes(np.concatenate([faces.x_train, faces.x_test])), zoo_images).any()
    digits = load_dataset("digits", data_dir=p["data"])
    assert np.isin(image_hashes(digits.x_train), zoo_images).all()   # the check sees what it looks for
    enc_run = mlflow.get_run(p["encoders"].run_id).data.params
    assert set(enc_run["train_datasets"].split(",")) == {"digits"}     # backbone and encoders: training groups
    assert enc_run["val_datasets_used"] == "cells"                      # selection: a zoo dataset, not 'faces'


@pytest.mark.slow
def test_bench_end_to_end_on_the_reported_dataset_and_an_outside_archive(bench_pipeline, tmp_path):
    """`tans bench` over the build's holdout and an archive from outside at two seeds: every method, both
    budgets, the validation-picked oracle and the upper bound, the floors, the regrets, the scorers'
    weighted tau, costs, the pooled intervals, plots; one run per dataset and per seed in tans/bench, one per
    start and budget with its curve; then `--resume` reuses every finished (dataset, seed)."""
    import mlflow

    from tans_registry.cli import main

    p = bench_pipeline
    plots = tmp_path / "plots"
    args = ["bench", "--work-dir", str(p["work"]), "--data-dir", str(p["data"]),
            "--holdout", "faces", "--query-data", str(p["outside"] / "glyphs.npz"),
            "--epochs", "2", "--ground-truth", "4", "--random-draws", "2",
            "--max-train", "50", "--max-test", "20", "--workers", "1", "--seed", "1", "--seeds", "2",
            "--plots", str(plots), "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert set(rec["datasets"]) == {"faces", "glyphs"}
    for name, d in rec["datasets"].items():
        methods = d["methods"]
        assert d["seeds"] == [1, 2] and len(d["per_seed"]) == 2
        assert {"tans", "tans_predictor", "tans_logme", "tans_hybrid", "logme_all", "random", "best_average",
                "top_source", "largest", "scratch", "oracle"} <= set(methods)
        oracle = d["oracle"]["full"]
        assert d["upper_bound"]["full"] >= oracle - 1e-12          # the best test bounds the validation pick
        assert 0.0 <= d["floors"]["logreg_pixels"] <= 1.0 and len(d["floors"]["logreg_pixels_seeds"]) == 2
        for m in methods.values():
            assert 0.0 <= m["test_acc"] <= 1.0 and 0.0 <= m["test_acc_one_epoch"] <= 1.0
            assert 0.0 <= m["probe_test_acc"] <= 1.0                   # the start's linear probe beside it
            assert len(m["val_history"]) == 2                               # every epoch of the full budget
            assert len(m["seeds"]["test_acc"]) == 2
            assert m["test_acc"] == pytest.approx(np.mean(m["seeds"]["test_acc"]))
            assert m["spread"]["test_acc"] == pytest.approx(np.std(m["seeds"]["test_acc"], ddof=1))
        for m in ("tans", "tans_predictor", "tans_logme", "logme_all", "top_source", "largest"):
            assert methods[m]["regret_top1"] == pytest.approx(100 * (oracle - methods[m]["test_acc"]))
        assert methods["oracle"]["regret_top1"] == pytest.approx(0.0)
        # the oracle of each seed is its best-validation network, scored by test
        for s, gt in zip(d["per_seed"], d["ground_truth"]["by_seed"]):
            best = max(gt["val_acc"], key=lambda u: gt["val_acc"][u])
            assert s["oracle"]["full"] == pytest.approx(gt["test_acc"][best])
            assert s["upper_bound"]["full"] == pytest.approx(max(gt["test_acc"].values()))
        assert methods["random"]["draws"] == 2 and "test_acc_std" in methods["random"]
        assert methods["tans"]["forward_passes"] == 1                      # the query embedding only
        n = rec["zoo"]["networks"]
        assert methods["logme_all"]["forward_passes"] == n                  # every network once
        assert 1 < methods["tans_logme"]["forward_passes"] <= n + 1
        assert 1 < methods["tans_hybrid"]["forward_passes"] <= min(n, 25) + 1   # the hybrid shortlist, scored once
        assert d["ground_truth"]["networks"] >= 4
        assert set(d["weighted_tau"]) == {"tans", "predictor", "hybrid", "logme", "leep", "nce"}
        # the product's answer (of the first three picks, each its probe or its fine-tuned network), every seed
        for name in ("tans", "tans_predictor", "tans_hybrid"):
            answers = [s["methods"][name]["answer_test_acc"] for s in d["per_seed"]]
            assert all(0.0 <= a <= 1.0 for a in answers)
            assert methods[name]["answer_test_acc"] == pytest.approx(np.mean(answers))
        assert methods["best_average"]["picks"][0]["weights"] == "base supernet"
        assert methods["scratch"]["picks"][0]["arch_hash"] == methods["tans"]["picks"][0]["arch_hash"]
        assert len({json.dumps(x, sort_keys=True) for x in d["preparation"]}) == 2   # one per seed
    iv = rec["intervals"]
    for k in ("tans_minus_best_average", "tans_minus_random", "regret_tans", "regret_tans_one_epoch"):
        assert iv[k]["n"] == 4 and iv[k]["low"] <= iv[k]["mean"] <= iv[k]["high"]   # 2 datasets x 2 seeds
    pairs = [100 * (s["methods"]["tans"]["test_acc"] - s["methods"]["best_average"]["test_acc"])
             for d in rec["datasets"].values() for s in d["per_seed"]]
    assert iv["tans_minus_best_average"]["mean"] == pytest.approx(np.mean(pairs))
    assert rec["zoo"]["holdout"] == ["faces"]
    assert sorted(x.split("/")[-1] for x in rec["plots"]) == ["bench-epochs-faces.png", "bench-epochs-glyphs.png",
                                                             "bench-forest.png", "bench-regret.png"]
    assert all((plots / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in ("bench-regret.png", "bench-forest.png"))
    runs = mlflow.search_runs(experiment_names=["tans/bench"], output_format="list")
    assert {r.data.tags.get("tans.dataset") for r in runs} >= {"faces", "glyphs"}
    seed_runs = [r for r in runs if r.data.tags.get(SEED_KEY) and r.data.tags.get("tans.start") is None]
    assert len(seed_runs) == 4
    # one run per start and budget, its validation curve by epoch, all prepared alike within a seed
    client = mlflow.MlflowClient()
    for sr in seed_runs:
        curves = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sr.info.run_id]
        budgets = {r.data.tags["tans.budget"] for r in curves}
        assert budgets == {"1", "2"} and len(curves) == 2 * len({r.data.tags["tans.start"] for r in curves})
        assert len({r.data.tags["tans.preparation"] for r in curves}) == 1
        for r in curves:
            hist = client.get_metric_history(r.info.run_id, "val_accuracy")
            assert [m.step for m in hist] == list(range(1, int(r.data.tags["tans.budget"]) + 1))
    parent = mlflow.get_run(rec["run_id"])
    assert parent.data.params["seed"] == "1" and parent.data.params["max_train"] == "50"
    assert parent.data.params["seeds"] == "2" and parent.data.params["bn_policy"] == "query"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"bench.json", "plots"}
    # every fine-tuned zoo start of every (dataset, seed) is a record of the transfer table (source bench)
    from tans_registry.transfer.records import read_records

    bench_records = read_records(mlflow.get_experiment_by_name("tans/transfer").experiment_id, "bench")
    zoo_curves = [r for r in runs if r.data.tags.get("tans.start_kind") == "zoo"]
    assert len(bench_records) == len(zoo_curves) > 0
    assert {r["task"] for r in bench_records} == {"faces", "glyphs"} and {r["budget"] for r in bench_records} == {1.0, 2.0}
    # --resume: every (dataset, seed) was finished with these settings: reused, the same figures
    again = CliRunner().invoke(main, [a for a in args if a not in ("--plots", str(plots))] + ["--resume"])
    assert again.exit_code == 0, again.output
    rec2 = json.loads(again.stdout)
    assert mlflow.get_run(rec2["run_id"]).data.tags["tans.resumed"].count("seed") == 4
    assert rec2["datasets"]["faces"]["methods"]["tans"]["seeds"] == rec["datasets"]["faces"]["methods"]["tans"]["seeds"]


@pytest.mark.parametrize("args, message", [
    (["--holdout", "digits"], "a training dataset of this zoo"),
    (["--holdout", "none", "--query-data", "{data}/digits.npz"], "images the zoo was trained or tested on"),
    (["--holdout", "nosuch"], "nosuch"),
    (["--epochs", "0"], "'epochs' parameter of bench (--epochs) must be"),
    (["--holdout", "faces", "--max-params", "1"], "no zoo network has at most 1 parameters"),
])
def test_bench_refuses_datasets_the_zoo_has_seen_and_bad_values(bench_pipeline, args, message):
    from tans_registry.cli import main

    p = bench_pipeline
    args = [a.replace("{data}", str(p["data"])) for a in args]
    res = CliRunner().invoke(main, ["bench", "--work-dir", str(p["work"]), "--data-dir", str(p["data"]), *args])
    assert res.exit_code in (1, 2) and message in res.output, res.output
    assert "Traceback" not in res.output


def test_zoo_build_holdout_is_checked_before_anything_is_built(tiny_data_dir, tmp_path):
    from tans_registry.cli import main

    for args, message in ((["--holdout", "nosuch"], "no dataset named 'nosuch'"),
                          (["--datasets", "digits,cells", "--holdout", "cells"], "both built")):
        res = CliRunner().invoke(main, ["zoo", "build", "--work-dir", str(tmp_path), "--data-dir", str(tiny_data_dir),
                                        *args])
        assert res.exit_code == 1 and message in res.output, res.output
    import mlflow

    from tans_registry import tracking

    tracking.setup(str(tmp_path))
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_every_start_is_prepared_alike_and_logme_sees_it_as_fine_tuning_starts(bench_pipeline):
    """One start of each kind (a zoo version, a subnet of the base supernet, random weights), prepared by
    the one function: the same preparation record; batch norm re-estimated on the same query training
    images (the first layer's statistics computed here by hand from them); the same seeded head; and LogME
    scores the network exactly as prepared."""
    import mlflow
    import torch
    from torch import nn

    from tans_registry import tracking
    from tans_registry.bench.stage import _zoo_facts
    from tans_registry.data import load_dataset
    from tans_registry.registry.index import load_index
    from tans_registry.registry.names import model_uri
    from tans_registry.registry.pyfunc import load_module, load_network_info
    from tans_registry.retrieval.logme import logme
    from tans_registry.retrieval.search import LOGME_IMAGES, logme_scores
    from tans_registry.data.stats import image_hashes
    from tans_registry.retrieval.starts import calibration_set, load_start, prepare, prepared_start, split_train_val
    from tans_registry.encoders.backbone import sample_per_class
    from tans_registry.zoo.measure import penultimate
    from tans_registry.zoo.tensors import to_tensor

    p = bench_pipeline
    wd, uri = tracking.setup(str(p["work"]))
    mlflow.set_registry_uri(uri)
    idx = load_index(wd, latency=False)[0]
    zoo = _zoo_facts(wd, set(idx.groups.tolist()))
    assert zoo["base_start"] is not None
    uri0 = model_uri(str(idx.names[0]), int(idx.versions[0]))
    info = load_network_info(uri0)
    arch = info["arch"]
    starts = {"zoo": {"kind": "zoo", "uri": uri0},
              "base": {"kind": "base", **zoo["base_start"], "arch": arch},
              "scratch": {"kind": "scratch", "supernet": info["supernet"], "arch": arch, "seed": 3}}
    ds = load_dataset("faces", data_dir=p["data"], max_train=60, max_test=20)
    calib = calibration_set(ds.x_train, ds.y_train, 0.2, seed=5)
    tr, va = split_train_val(ds.y_train, 0.2, 5)
    assert len(calib) == min(len(tr), 256) and len(va) > 0       # the training part only, never validation
    assert not np.isin(image_hashes(calib), image_hashes(ds.x_train[va])).any()
    preps, heads = {}, {}
    for kind, start in starts.items():
        module, mean, std, prep = prepared_start(start, ds.n_classes, calib, seed=5)
        preps[kind] = prep
        # the first batch norm's statistics are the calibration images' own, computed here by hand
        first = module.first_conv
        with torch.no_grad():
            h = first.conv(to_tensor(calib, mean, std))
        bn = first.bn
        assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-4), kind
        assert torch.allclose(bn.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5), kind
        lin = module.classifier.linear
        torch.manual_seed(5)
        ref = nn.Linear(lin.in_features, ds.n_classes)
        assert torch.equal(lin.weight, ref.weight) and torch.equal(lin.bias, ref.bias), kind
        heads[kind] = lin.out_features
        assert not module.training
    assert preps["zoo"] == preps["base"] == preps["scratch"]     # one preparation for every kind
    assert preps["zoo"].bn == "query" and preps["zoo"].calib_images == len(calib)
    assert set(heads.values()) == {ds.n_classes}
    # the zoo version's source statistics were replaced (the check sees what it looks for)
    source = load_module(uri0)
    prepared = prepared_start(starts["zoo"], ds.n_classes, calib, seed=5)[0]
    assert not torch.allclose(source.first_conv.bn.running_mean, prepared.first_conv.bn.running_mean)
    # LogME scores the network as fine-tuning starts from it
    module, mean, std = load_start(starts["zoo"], 5)
    module, _ = prepare(module, mean, std, ds.n_classes, calib, 5, head=False)
    pick = sample_per_class(ds, max(1, LOGME_IMAGES // ds.n_classes), 5)
    with torch.no_grad():
        feats = penultimate(module, to_tensor(ds.x_train[pick], mean, std)).numpy()
    assert logme_scores([uri0], ds, 5, "cpu", x_calib=calib)[0] == pytest.approx(logme(feats, ds.y_train[pick]), rel=1e-6)
    assert logme_scores([uri0], ds, 5, "cpu")[0] == pytest.approx(logme(feats, ds.y_train[pick]), rel=1e-6)  # default set


def test_the_source_policy_keeps_each_starts_own_statistics_and_uses_no_query_image(bench_pipeline):
    """The alternative batch-norm policy (compared by scripts/bn_policy.py on the selection datasets): a zoo
    version keeps its registered statistics, the generalist's are estimated on the source images given (and
    it is refused without them), random weights keep their initial ones, no query image is used; an unknown
    policy is refused."""
    from dataclasses import replace

    import mlflow
    import torch

    from tans_registry import tracking
    from tans_registry.bench.stage import _zoo_facts
    from tans_registry.data import load_dataset
    from tans_registry.registry.index import load_index
    from tans_registry.registry.names import model_uri
    from tans_registry.registry.pyfunc import load_module, load_network_info
    from tans_registry.retrieval.starts import calibration_set, load_start, prepare, prepared_start
    from tans_registry.zoo.tensors import to_tensor

    p = bench_pipeline
    wd, uri = tracking.setup(str(p["work"]))
    mlflow.set_registry_uri(uri)
    idx = load_index(wd, latency=False)[0]
    zoo = _zoo_facts(wd, set(idx.groups.tolist()))
    uri0 = model_uri(str(idx.names[0]), int(idx.versions[0]))
    arch = load_network_info(uri0)["arch"]
    ds = load_dataset("faces", data_dir=p["data"], max_train=60, max_test=20)
    calib = calibration_set(ds.x_train, ds.y_train, 0.2, seed=5)
    x_source = load_dataset("digits", data_dir=p["data"], max_train=40).x_train
    zoo_start = {"kind": "zoo", "uri": uri0}
    base = {"kind": "base", **zoo["base_start"], "arch": arch}
    kept, _, _, prep = prepared_start(zoo_start, ds.n_classes, calib, 5, bn="source", x_source=x_source)
    registered = load_module(uri0)
    pairs = [(a, b) for a, b in zip(registered.modules(), kept.modules()) if isinstance(a, torch.nn.BatchNorm2d)]
    assert pairs
    for a, b in pairs:
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    assert prep.bn == "source" and prep.calib_images == 0 and prep.source_images == 0
    with pytest.raises(ValueError, match="x_source"):
        prepared_start(base, ds.n_classes, calib, 5, bn="source")
    with pytest.raises(ValueError, match="x_source"):
        prepared_start(base, ds.n_classes, calib, 5, bn="source", x_source=x_source[:1])
    gen, mean, std, gprep = prepared_start(base, ds.n_classes, calib, 5, bn="source", x_source=x_source)
    assert replace(gprep, source_images=0) == prep and gprep.source_images == len(x_source)
    # random weights keep their initial statistics (zeros and ones), with no image seen
    scratch = {"kind": "scratch", "supernet": zoo["base_start"]["supernet"], "arch": arch, "seed": 3}
    fresh, _, _, sprep = prepared_start(scratch, ds.n_classes, calib, 5, bn="source", x_source=x_source)
    assert sprep == prep
    assert torch.equal(fresh.first_conv.bn.running_mean, torch.zeros_like(fresh.first_conv.bn.running_mean))
    with torch.no_grad():
        h = gen.first_conv.conv(to_tensor(x_source, mean, std))
    assert torch.allclose(gen.first_conv.bn.running_mean, h.mean((0, 2, 3)), atol=1e-4)
    module, mean, std = load_start(zoo_start, 5)
    with pytest.raises(ValueError, match="unknown batch-norm policy"):
        prepare(module, mean, std, ds.n_classes, calib, 5, bn="keep")


@pytest.mark.slow
def test_bench_chain_runs_the_whole_chain_on_the_quick_profile_then_resumes_it(tmp_path):
    """`tans bench-chain --profile quick` on a tiny data directory with a manifest: the zoo (the report
    dataset held out), registration, encoders, index and the benchmark at 2 seeds on the report dataset, each
    stage timed; rerun with --resume, every stage keeps what it finished."""
    import mlflow

    from tans_registry.cli import main
    from tans_registry.data import load_dataset

    data = tmp_path / "data"
    data.mkdir()
    for name, n in (("mnist", 60), ("sign_language_digits", 50), ("bccd_cells", 40), ("pneumoniamnist", 40)):
        _save(load_dataset(name, max_train=n, max_test=30), data / f"{name}.npz")
    _save(load_dataset("chinese_mnist", max_train=60, max_test=30), data / "glyphs.npz")
    (data / "MANIFEST.json").write_text(json.dumps({"glyphs": {"role": "report"}, "pneumoniamnist": {"role": "train"},
                                                   "mnist": {"role": "train"}, "bccd_cells": {"role": "train"},
                                                   "sign_language_digits": {"role": "train"}}))
    args = ["bench-chain", "--profile", "quick", "--work-dir", str(tmp_path / "work"), "--data-dir", str(data),
            "--epochs", "2", "--resume", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert set(rec["stage_seconds"]) == {"zoo_build", "zoo_register", "transfer_table", "encoders_train", "index_build",
                                         "bench"}
    # the transfer table: each of the 4 training datasets a task, 4 starts (the quick profile's generalist's and 3
    # of the other 3 groups'), both budgets
    assert rec["facts"]["transfer_table"] == {"tasks": 4, "records": 32, "written": 32}
    assert all(v > 0 for v in rec["stage_seconds"].values())
    assert rec["facts"]["zoo"]["holdout"] == ["glyphs"] and rec["facts"]["zoo"]["built"] == 4
    assert set(rec["bench"]["datasets"]) == {"glyphs"}
    assert rec["bench"]["datasets"]["glyphs"]["seeds"] == [0, 1]
    again = json.loads(CliRunner().invoke(main, args).stdout)
    assert again["facts"]["zoo"]["built"] == 0 and again["facts"]["registered"] == 0
    assert again["facts"]["transfer_table"]["written"] == 0
    assert again["stage_seconds"]["encoders_train"] == 0.0 and "kept version" in again["facts"]["encoders"]
    # a data directory with nothing to report on is refused before anything is built
    bare = tmp_path / "bare"
    bare.mkdir()
    _save(load_dataset("mnist", max_train=20, max_test=10), bare / "mnist.npz")
    refused = CliRunner().invoke(main, ["bench-chain", "--profile", "quick", "--work-dir", str(tmp_path / "w2"),
                                        "--data-dir", str(bare)])
    assert refused.exit_code == 1 and "nothing to benchmark on" in refused.output, refused.output
    assert not (tmp_path / "w2" / "mlruns").exists()
    assert mlflow.get_run(again["bench"]["run_id"]).data.tags["tans.resumed"] == "glyphs seed 0, glyphs seed 1"
    assert again["bench"]["datasets"]["glyphs"]["methods"]["tans"]["seeds"] == \
        rec["bench"]["datasets"]["glyphs"]["methods"]["tans"]["seeds"]
    chains = [r for r in mlflow.search_runs(experiment_names=["tans/bench"], output_format="list")
              if r.data.tags.get("tans.kind") == "bench-chain"]
    assert len(chains) == 2 and all(r.data.metrics["total_seconds"] > 0 for r in chains)
