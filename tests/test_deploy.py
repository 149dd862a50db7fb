"""From a ranked list to a served model: fine-tuning (schedule, validation split, winner), the ONNX export
(checker, parity, metadata, refusal), its registration and lineage, `tans serve` in both protocols, and
`tans predict`, on a real tiny zoo."""
from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from tans_registry import tracking
from tans_registry.data import load_dataset
from tans_registry.errors import TansError
from tans_registry.finetune.schedule import lr_factor

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------------------------- pure parts
def test_the_schedule_warms_up_then_follows_one_cosine_over_the_whole_run():
    total, warmup = 200, 20
    f = [lr_factor(s, total, warmup) for s in range(total)]
    assert f[0] == pytest.approx(1 / warmup) and f[warmup - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:warmup - 1], f[1:warmup]))            # warm-up rises
    after = f[warmup:]
    assert all(a >= b for a, b in zip(after, after[1:]))                      # then never rises again
    assert after[0] == pytest.approx(1.0) and after[-1] < 0.001               # one cosine, to ~0 at the end
    mid = warmup + (total - warmup) // 2
    assert f[mid] == pytest.approx(0.5, abs=0.01)                             # half-way: half the rate
    assert lr_factor(5, 10, 0) == pytest.approx(0.5)


def test_logme_matches_the_evidence_computed_by_hand():
    """The closed form at the returned (alpha, beta) equals log N(y | 0, I/beta + F F'/alpha), and no
    nearby (alpha, beta) gives more evidence; informative features score higher than noise."""
    from scipy.stats import multivariate_normal

    from tans_registry.retrieval.logme import class_evidence, logme

    rng = np.random.default_rng(0)
    for n, d in ((6, 3), (5, 8), (40, 12)):
        f = rng.normal(size=(n, d))
        y = (rng.uniform(size=n) > 0.5).astype(float)
        ev, a, b = class_evidence(f, y)

        def direct(a_, b_):
            return multivariate_normal(np.zeros(n), np.eye(n) / b_ + f @ f.T / a_).logpdf(y)

        assert ev == pytest.approx(direct(a, b), abs=1e-8)
        for fa, fb in ((1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95)):
            assert direct(a * fa, b * fb) <= direct(a, b) + 1e-6
    labels = rng.integers(0, 3, 300)
    informative = np.hstack([np.eye(3)[labels] + 0.3 * rng.normal(size=(300, 3)), rng.normal(size=(300, 20))])
    assert logme(informative, labels) > logme(rng.normal(size=(300, 23)), labels) + 0.2
    with pytest.raises(ValueError, match="features"):
        logme(np.zeros((3, 2)), np.zeros(4))


def _tiny_module(n_classes=3):
    from tans_registry.zoo.space import SupernetSpec, build_supernet, extract_subnet, min_arch

    spec = SupernetSpec(n_classes=n_classes)
    torch.manual_seed(0)
    return extract_subnet(build_supernet(spec), min_arch(spec)).eval(), spec


def test_the_validation_split_is_carved_from_training_images_and_the_test_split_chooses_nothing(tiny_data_dir):
    from tans_registry.finetune.candidate import split_train_val, train
    from tans_registry.finetune.config import FinetuneSettings
    from tans_registry.zoo.tensors import DEFAULT_MEAN, DEFAULT_STD

    ds = load_dataset("cells", data_dir=tiny_data_dir)
    tr, va = split_train_val(ds.y_train, 0.25, seed=0)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(ds.y_train)
    assert set(np.unique(ds.y_train[va])) == set(np.unique(ds.y_train))        # stratified: every class
    tr2, va2 = split_train_val(ds.y_train, 0.25, seed=0)
    assert np.array_equal(va, va2)                                               # seeded
    settings = asdict(FinetuneSettings(epochs=2, patience=1, batch_size=16))
    runs = []
    for _ in range(2):  # the same training and validation images; the test split is not an argument at all
        module, _ = _tiny_module()
        runs.append(train(module, ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va], settings,
                          DEFAULT_MEAN, DEFAULT_STD))
    assert runs[0]["history"] == runs[1]["history"] and runs[0]["best_epoch"] == runs[1]["best_epoch"]
    lrs = runs[0]["lrs"]
    steps = runs[0]["steps"]
    assert len(lrs) == steps and max(lrs) == pytest.approx(0.01, rel=1e-3)       # one schedule over the run
    peak = int(np.argmax(lrs))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))


def _perturb(graph) -> None:
    """Shift the classifier's bias in an ONNX graph (in place): every logit moves."""
    from onnx import numpy_helper

    init = next(t for t in graph.initializer if "classifier" in t.name and t.name.endswith("bias")) \
        if any("classifier" in t.name for t in graph.initializer) else None
    if init is None:  # the graph's tensors are named by the exporter: take the last 1-D initializer
        init = [t for t in graph.initializer if len(t.dims) == 1][-1]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.5, init.name))


def test_an_export_checks_parity_keeps_metadata_and_a_broken_graph_is_refused(tiny_data_dir, tmp_path):
    import onnx

    from tans_registry.export.onnx import check_parity, metadata, parity, read_metadata, to_onnx

    module, _ = _tiny_module()
    ds = load_dataset("cells", data_dir=tiny_data_dir)
    network = {"classes": list(ds.classes), "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    path = to_onnx(module, network, "models:/zoo.cells/1", tmp_path / "m.onnx")
    meta = read_metadata(path)
    assert meta["classes"] == list(ds.classes) and meta["input_size"] == 32 and meta["mean"] == [0.5] * 3
    assert meta["source_model_uri"] == "models:/zoo.cells/1"
    assert {k: v for k, v in meta.items() if k not in ("classes", "mean", "std", "input_size")} == {
        k: v for k, v in metadata(network, "models:/zoo.cells/1").items() if k not in ("classes", "mean", "std",
                                                                                         "input_size")}
    graph = onnx.load(str(path))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8      # raw pixels in
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param                   # a dynamic batch
    good = parity(path, module, network, ds.x_train[:64])
    assert good.ok and good.max_abs_diff <= 1e-4 and good.top1_agreement == 1.0
    check_parity(good, "models:/zoo.cells/1")
    with pytest.raises(TansError, match="at least 64"):
        parity(path, module, network, ds.x_train[:10])
    # a perturbed weight (the head's bias): the graph no longer computes what the module does
    _perturb(graph.graph)
    onnx.save(graph, str(tmp_path / "broken.onnx"))
    bad = parity(tmp_path / "broken.onnx", module, network, ds.x_train[:64])
    assert not bad.ok
    with pytest.raises(TansError, match="disagrees with PyTorch") as err:
        check_parity(bad, "models:/zoo.cells/1")
    assert err.value.code == "EXPORT_PARITY"


def test_parity_allows_a_head_s_own_float32_rounding_and_still_refuses_a_broken_graph(tiny_data_dir, tmp_path):
    """A head folded from a linear probe (large weights and a bias that cancel them) rounds in float32 in either
    runtime: the bound widens to four times PyTorch's own error against float64, and no further."""
    import onnx

    from tans_registry.export.onnx import parity, to_onnx

    ds = load_dataset("cells", data_dir=tiny_data_dir)
    network = {"classes": list(ds.classes), "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 256), torch.nn.ReLU(),
                                 torch.nn.Linear(256, len(ds.classes))).eval()
    head = module[3]
    with torch.no_grad():  # logits = W x + b with W x ~ 1e4 and b cancelling its mean: float32 keeps ~1e-3
        from tans_registry.zoo.tensors import to_tensor

        mu = module[:3](to_tensor(ds.x_train[:64], network["mean"], network["std"])).mean(0)
        head.weight.mul_(2e3)
        head.bias.copy_(-(head.weight @ mu))
    path = to_onnx(module, network, "models:/zoo.cells/1", tmp_path / "m.onnx")
    wide = parity(path, module, network, ds.x_train[:64])
    assert wide.allowed > 1e-4 and wide.ok, wide
    graph = onnx.load(str(path))
    _perturb(graph.graph)
    onnx.save(graph, str(tmp_path / "broken.onnx"))
    assert not parity(tmp_path / "broken.onnx", module, network, ds.x_train[:64]).ok


# ------------------------------------------------------------------------------- the real pipeline
@pytest.fixture(scope="module")
def deployed(tiny_data_dir, tiny_templates, tmp_path_factory):
    """A copy of the session's tiny pipeline (zoo, encoders, index), and one `tans query digits --finetune 2`
    through the CLI."""
    from click.testing import CliRunner

    from conftest import tiny_work

    from tans_registry.cli import main

    work = tiny_work(tiny_templates, "indexed", tmp_path_factory.mktemp("deploy-work") / "work")
    res = CliRunner().invoke(main, ["query", "digits", "--finetune", "2", "--epochs", "2", "--top-k", "3",
                                    "--work-dir", str(work), "--data-dir", str(tiny_data_dir), "--json"])
    assert res.exit_code == 0, res.output
    return work, json.loads(res.stdout)


def test_the_query_fine_tunes_registers_and_exports_with_lineage(deployed, tiny_data_dir):
    work, out = deployed
    assert set(out) == {"query", "candidates", "finetuned", "winner", "onnx", "timings"}
    assert len(out["candidates"]) == 3 and all(c["latency_ms"] > 0 for c in out["candidates"])
    assert [f["rank"] for f in out["finetuned"]] == [1, 2]
    best = max(out["finetuned"], key=lambda f: f["val_accuracy"])
    w = out["winner"]
    assert w["val_accuracy"] == best["val_accuracy"] and w["parent"] == best["parent"] and w["champion"]
    assert w["model_uri"] == "models:/tans-finetuned.digits/1"
    assert 0 <= w["test_accuracy"] <= 1 and out["onnx"]["model_uri"] == "models:/tans-onnx.digits/1"
    # the parity gate: 1e-4, or four times PyTorch's own float32 error where larger (a folded probe head)
    assert out["onnx"]["max_abs_diff"] <= out["onnx"]["allowed_abs_diff"] <= 1e-2
    assert out["onnx"]["allowed_abs_diff"] >= 1e-4 and out["onnx"]["top1_agreement"] == 1.0
    assert {"finetune", "export", "embed", "search", "rerank"} <= set(out["timings"])
    assert all(f["model_uri"] == f"runs:/{f['run_id']}/finetuned" for f in out["finetuned"])
    assert mlflow.pyfunc.load_model(out["finetuned"][0]["model_uri"]).predict(
        load_dataset("digits", data_dir=tiny_data_dir).x_test[:2])["probabilities"].shape == (2, 10)  # still loadable
    assert query_params(work, out)["finetune_epochs"] == "2.0"
    tracking.setup(work)
    client = mlflow.MlflowClient()
    onnx_v = client.get_model_version_by_alias("tans-onnx.digits", "champion")
    ft_v = client.get_model_version("tans-finetuned.digits", "1")
    assert onnx_v.tags["tans.parent_model"] == w["model_uri"]                 # ONNX -> fine-tuned
    assert ft_v.tags["tans.zoo_parent"] == best["parent"]                      # fine-tuned -> zoo version
    assert onnx_v.tags["tans.zoo_parent"] == best["parent"]
    assert ft_v.tags["tans.query_run"] == out["query"]["run_id"]               # -> the query run
    assert float(ft_v.tags["tans.val_accuracy"]) == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert json.loads(ft_v.tags["tans.settings"])["epochs"] == 2
    zoo_name, zoo_version = best["parent"].split("/")[1:]
    assert client.get_model_version(zoo_name, zoo_version)                      # the parent exists
    query_run = client.get_run(out["query"]["run_id"])
    assert query_run.data.tags["tans.onnx_model"] == out["onnx"]["model_uri"]
    children = client.search_runs([query_run.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{query_run.info.run_id}'")
    assert len(children) == 2 and all("final_val_accuracy" in r.data.metrics for r in children)


def query_params(work, out) -> dict:
    tracking.setup(work)
    return mlflow.MlflowClient().get_run(out["query"]["run_id"]).data.params


def test_the_onnx_champion_matches_its_fine_tuned_parent_through_mlflow(deployed, tiny_data_dir):
    """One output contract: the fine-tuned PyTorch model and its ONNX export, both through
    ``mlflow.pyfunc``, answer the same images with the same named logits and probabilities, and name the
    same classes in their MLflow metadata (tans serve and tans predict: their own tests)."""
    from mlflow.models import Model

    from tans_registry.serve.model import OnnxModel, softmax

    work, out = deployed
    tracking.setup(work)
    x = load_dataset("digits", data_dir=tiny_data_dir).x_test[:20]
    parent = mlflow.pyfunc.load_model("models:/tans-finetuned.digits@champion").predict(x)
    exported = mlflow.pyfunc.load_model("models:/tans-onnx.digits@champion").predict(x)
    assert set(parent) == {"logits", "probabilities"} and set(exported) == {"logits", "probabilities"}
    # the export's parity gate (out["onnx"]["allowed_abs_diff"]) holds on its own parity images; these are others,
    # so twice it on the logits, and half that on the probabilities (softmax moves them at most half as far)
    tol = 2 * max(out["onnx"]["allowed_abs_diff"], 1e-4)
    for name, atol in (("logits", tol), ("probabilities", tol / 2)):
        assert parent[name].shape == exported[name].shape == (20, 10)
        np.testing.assert_allclose(exported[name], parent[name], atol=atol)
    np.testing.assert_allclose(parent["probabilities"], softmax(parent["logits"]), atol=1e-6)
    onnx_model = OnnxModel.load("models:/tans-onnx.digits@champion", device="cpu")
    np.testing.assert_allclose(softmax(onnx_model.logits(x)), exported["probabilities"], atol=1e-6)
    np.testing.assert_allclose(softmax(onnx_model.logits(x)), parent["probabilities"], atol=tol / 2)
    classes = list(load_dataset("digits", data_dir=tiny_data_dir).classes)
    assert onnx_model.classes == classes
    for uri in ("models:/tans-onnx.digits@champion", "models:/tans-finetuned.digits@champion"):
        meta = Model.load(f"{mlflow.artifacts.download_artifacts(uri)}/MLmodel").metadata
        assert meta["classes"] == classes and meta["outputs"] == ["logits", "probabilities"], uri
    folder = mlflow.artifacts.download_artifacts("models:/tans-onnx.digits@champion")
    mlmodel = Model.load(f"{folder}/MLmodel")
    assert mlmodel.flavors["python_function"]["loader_module"] == "tans_onnx_loader"
    # loaded through MLflow in a fresh process: no error-level line from onnxruntime (its CUDA provider is
    # asked for only where the CUDA driver loads), the same answer
    import subprocess
    import sys

    code = ("import mlflow, numpy as np, sys; m = mlflow.pyfunc.load_model(sys.argv[1]); "
            "out = m.predict(np.load(sys.argv[2])); print(sorted(out), float(np.abs(out['logits']).sum()))")
    np.save(Path(folder).parent / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    run = subprocess.run([sys.executable, "-c", code, "models:/tans-onnx.digits@champion", str(Path(folder).parent / "x.npy")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "[E:onnxruntime" not in run.stderr and "libcuda" not in run.stderr, run.stderr[-2000:]
    keys, total = run.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert keys == "['logits', 'probabilities']" and float(total) == pytest.approx(float(np.abs(exported["logits"]).sum()), rel=1e-5)
    assert "onnx" in mlmodel.flavors and mlmodel.signature is not None and mlmodel.saved_input_example_info
    assert mlmodel.flavors["onnx"]["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    reqs = open(f"{folder}/requirements.txt").read()
    assert "onnxruntime-gpu==" in reqs and "\nonnxruntime==" not in "\n" + reqs


def test_tans_predict_names_the_parent_classes(deployed, tiny_data_dir, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from tans_registry.cli import main

    work, _ = deployed
    ds = load_dataset("digits", data_dir=tiny_data_dir)
    for i in range(6):
        Image.fromarray(ds.x_test[i]).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    res = CliRunner().invoke(main, ["predict", "models:/tans-onnx.digits@champion", str(tmp_path), str(tmp_path / "notes.txt"),
                                    "--work-dir", str(work), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    tracking.setup(work)
    parent = mlflow.pyfunc.load_model("models:/tans-finetuned.digits@champion").predict(ds.x_test[:6])
    assert [p["class"] for p in got["predictions"]] == [ds.classes[i] for i in parent["probabilities"].argmax(1)]
    assert got["classes"] == list(ds.classes)  # the contract: named logits and probabilities, in that order
    for name in ("logits", "probabilities"):
        np.testing.assert_allclose([p[name] for p in got["predictions"]], parent[name], atol=2e-4)
    assert got["skipped"] == [{"path": str(tmp_path / "notes.txt"), "why": "not an image file"}]
    bad = CliRunner().invoke(main, ["predict", "models:/tans-onnx.digits@champion", str(tmp_path / "nope.png"),
                                    "--work-dir", str(work)])
    assert bad.exit_code == 1 and "no such file or folder" in bad.output


def _call(base, path, body=None, raw=None, method=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with _HTTP.open(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_ping(base: str, proc, seconds: float) -> None:
    """Until ``base``/ping answers 200; fails when ``proc`` (the server) dies first or time runs out."""
    import time

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with _HTTP.open(f"{base}/ping", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"{base}/ping did not answer within {seconds} s")


def test_tans_serve_answers_both_protocols_and_refuses_bad_requests(deployed, tiny_data_dir):
    from tans_registry.serve.app import ServeConfig, make_server
    from tans_registry.serve.model import softmax

    work, _ = deployed
    server = make_server(ServeConfig(model_uri="models:/tans-onnx.digits@champion", port=0, work_dir=str(work),
                                     device="cpu", max_body_mb=0.5))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        x = load_dataset("digits", data_dir=tiny_data_dir).x_test[:8]
        direct = server.model.logits(x)
        assert _call(base, "/ping")[0] == 200 and _call(base, "/v2/health/live") == (200, {"live": True})
        assert _call(base, "/v2/health/ready")[1]["ready"] is True
        status, meta = _call(base, "/v2/models/tans-onnx.digits")
        assert status == 200 and meta["inputs"][0] == {"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}
        assert _call(base, "/v2/models/tans-onnx.digits/ready")[1]["ready"] is True
        status, inv = _call(base, "/invocations", {"inputs": x.tolist()})
        assert status == 200, inv
        np.testing.assert_allclose(np.asarray(inv["predictions"]["logits"]), direct, atol=1e-5)
        np.testing.assert_allclose(np.asarray(inv["predictions"]["probabilities"]), softmax(direct), atol=1e-6)
        assert _call(base, "/invocations", {"instances": x.tolist()})[1] == inv
        status, v2 = _call(base, "/v2/models/tans-onnx.digits/infer", {"id": "7", "inputs": [
            {"name": "images", "shape": list(x.shape), "datatype": "UINT8", "data": x.ravel().tolist()}]})
        assert status == 200 and v2["id"] == "7" and [o["name"] for o in v2["outputs"]] == ["logits", "probabilities"]
        assert v2["outputs"][0]["shape"] == v2["outputs"][1]["shape"] == [8, 10]
        np.testing.assert_allclose(np.asarray(v2["outputs"][1]["data"]).reshape(8, 10), softmax(direct), atol=1e-6)
        np.testing.assert_allclose(np.asarray(v2["outputs"][0]["data"]).reshape(8, 10), direct, atol=1e-5)
        # concurrent clients are answered correctly (and batched)
        results = [None] * 8

        def client(i):
            results[i] = _call(base, "/invocations", {"inputs": x[i:i + 1].tolist()})[1]["predictions"]["logits"]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        np.testing.assert_allclose(np.concatenate([np.asarray(r) for r in results]), direct, atol=1e-5)
        bad = [
            (_call(base, "/invocations", raw=b"{not json"), 400, "not valid JSON"),
            (_call(base, "/invocations", {"inputs": x[:, :16].tolist()}), 400, "shape [N, 32, 32, 3]"),
            (_call(base, "/invocations", {"inputs": (x / 255.0).tolist()}), 400, "integers 0..255"),
            (_call(base, "/invocations", {"inputs": []}), 400, "empty"),
            (_call(base, "/invocations", {"inputs": [[1, 2], [3]]}), 400, "rectangular"),
            (_call(base, "/v2/models/tans-onnx.digits/infer", {"inputs": [
                {"name": "images", "shape": [0, 32, 32, 3], "datatype": "UINT8", "data": []}]}), 400, "empty"),
            (_call(base, "/invocations", {"wrong": 1}), 400, "exactly one of"),
            (_call(base, "/v2/models/tans-onnx.digits/infer", {"inputs": [
                {"name": "images", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": [0.0] * 3072}]}), 400, "UINT8"),
            (_call(base, "/v2/models/tans-onnx.digits/infer", {"inputs": [
                {"name": "images", "shape": [2, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}]}), 400, "needs"),
            (_call(base, "/v2/models/tans-onnx.digits/infer", raw=b"{not json"), 400, "not valid JSON"),
            (_call(base, "/v2/models/tans-onnx.digits/infer", {"inputs": [
                {"name": "images", "shape": [1, 16, 32, 3], "datatype": "UINT8", "data": [0] * 1536}]}), 400,
             "shape [N, 32, 32, 3]"),
            (_call(base, "/v2/models/tans-onnx.digits/infer", raw=b" " * (600 * 1024)), 413, "at most"),
            (_call(base, "/v2/models/other/infer", {"inputs": []}), 404, "no model"),
            (_call(base, "/nowhere"), 404, "no route"),
            (_call(base, "/invocations", raw=b" " * (600 * 1024)), 413, "at most"),
        ]
        for (status, body), want_status, fragment in bad:
            assert status == want_status and fragment in body["error"], (status, body)
        assert _call(base, "/invocations", {"inputs": x[:2].tolist()})[0] == 200  # still serving
        assert server.batcher.batches >= 1
        # one keep-alive connection: a refused request's unread body is not taken for the next request
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
        conn.request("POST", "/v2/models/other/infer", body=json.dumps({"inputs": [1] * 100}),
                     headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        assert first.status == 404
        first.read()  # a client reads an answer before it reuses the connection
        try:
            conn.request("GET", "/ping")
            assert conn.getresponse().status == 200
        except (http.client.RemoteDisconnected, ConnectionError, BrokenPipeError):
            pass  # the server closed that connection instead: as good
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Length", "-5")
        conn.endheaders()
        resp = conn.getresponse()  # refused by the HTTP layer itself (uvicorn), as malformed
        assert resp.status == 400 and "Invalid HTTP request" in resp.read().decode()
        conn.close()
        with pytest.raises(TansError, match="cannot listen on 127.0.0.1") as err:
            make_server(ServeConfig(model_uri="models:/tans-onnx.digits@champion", port=server.server_address[1],
                                    work_dir=str(work), device="cpu"), model=server.model)
        assert err.value.code == "SERVE_ADDRESS"
        assert meta["versions"] == ["1"]
    finally:
        server.shutdown()
        server.server_close()


def test_tans_export_refuses_a_broken_export_and_registers_nothing(deployed, monkeypatch):
    import onnx
    from click.testing import CliRunner

    from tans_registry.cli import main
    from tans_registry.export import stage

    work, _ = deployed
    tracking.setup(work)
    client = mlflow.MlflowClient()
    before = len(client.search_model_versions("name = 'tans-onnx.digits'"))
    real = stage.to_onnx

    def broken(module, network, source_uri, path):
        real(module, network, source_uri, path)
        g = onnx.load(str(path))
        _perturb(g.graph)
        onnx.save(g, str(path))
        return path

    monkeypatch.setattr(stage, "to_onnx", broken)
    res = CliRunner().invoke(main, ["export", "models:/tans-finetuned.digits/1", "--work-dir", str(work)])
    assert res.exit_code == 1 and "disagrees with PyTorch" in res.output and "Nothing was registered" in res.output
    assert len(client.search_model_versions("name = 'tans-onnx.digits'")) == before
    monkeypatch.setattr(stage, "to_onnx", real)
    ok = CliRunner().invoke(main, ["export", "models:/tans-finetuned.digits/1", "--work-dir", str(work), "--json",
                                   "--out", str(work / "exported.onnx")])
    assert ok.exit_code == 0, ok.output
    rec = json.loads(ok.stdout)
    assert rec["model_uri"] == f"models:/tans-onnx.digits/{before + 1}" and (work / "exported.onnx").is_file()


def test_logme_re_ranks_the_shortlist_with_forward_passes_of_the_re_ranked_networks_only(deployed, tiny_data_dir):
    from tans_registry import RankConfig, rank
    from tans_registry.registry.index import load_index

    work, _ = deployed
    rec = rank(RankConfig(data="digits", top_k=12, rerank="logme", log_run=False, work_dir=str(work),
                          data_dir=str(tiny_data_dir)))
    scored = [c for c in rec.candidates if c.logme is not None]
    assert rec.rerank == "logme" and scored and rec.rerank_forward_passes == len(scored)
    assert len(scored) < len(load_index(work)[0])                   # the shortlist's pool, not the zoo
    assert [c.logme for c in scored] == sorted((c.logme for c in scored), reverse=True)
    assert all(c.predicted_accuracy is None for c in rec.candidates)
    assert len({c.group for c in scored}) == 1                      # the policy's pool: the first group


@pytest.mark.slow
def test_mlflow_models_serve_answers_for_the_onnx_champion(deployed, tiny_data_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    work, _ = deployed
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                             "models:/tans-onnx.digits@champion", "--env-manager", "local", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_ping(f"http://127.0.0.1:{port}", proc, 180)
        x = load_dataset("digits", data_dir=tiny_data_dir).x_test[:4]
        status, body = _call(f"http://127.0.0.1:{port}", "/invocations", {"inputs": x.tolist()})
        assert status == 200
        tracking.setup(work)
        from tans_registry.serve.model import OnnxModel

        direct = OnnxModel.load("models:/tans-onnx.digits@champion", device="cpu").logits(x)
        np.testing.assert_allclose(np.asarray(body["predictions"]["logits"]), direct, atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_fine_tuning_options_apply_only_to_fine_tuning(deployed, tiny_data_dir):
    from click.testing import CliRunner

    from tans_registry.cli import main

    work, _ = deployed
    args = ["query", "digits", "--work-dir", str(work), "--data-dir", str(tiny_data_dir)]
    res = CliRunner().invoke(main, args + ["--finetune", "0", "--epochs", "3"])
    assert res.exit_code == 2 and "--epochs apply to fine-tuning" in res.output
    res = CliRunner().invoke(main, args + ["--top-k", "2", "--finetune", "3"])
    assert res.exit_code == 2 and "'finetune' parameter of query (--finetune) must be at most --top-k (2)" in res.output
    # the default fine-tunes at most what is ranked
    res = CliRunner().invoke(main, args + ["--top-k", "1", "--epochs", "1", "--no-export", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["finetuned"]) == 1 and out["onnx"] is None and "export" not in out["timings"]


def test_query_export_and_predict_options_reach_their_stages(deployed, tiny_data_dir, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from tans_registry.cli import main

    work, first = deployed
    tracking.setup(work)
    client = mlflow.MlflowClient()
    args = ["--work-dir", str(work), "--data-dir", str(tiny_data_dir)]
    res = CliRunner().invoke(main, ["query", "digits", "--max-latency-ms", "0.001", "--finetune", "0"] + args)
    assert res.exit_code == 1 and "max_latency_ms=0.001" in res.output and "ms latency > 0.001" in res.output
    limit = sorted(c["latency_ms"] for c in first["candidates"])[1]
    res = CliRunner().invoke(main, ["query", "digits", "--max-latency-ms", str(limit), "--top-k", "2", "--finetune", "1",
                                    "--finetune-workers", "1", "--k-per-class", "3", "--epochs", "1", "--no-export",
                                    "--json"] + args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert all(c["latency_ms"] <= limit for c in out["candidates"]) and out["query"]["constraints"]["max_latency_ms"] == limit
    params = client.get_run(out["query"]["run_id"]).data.params
    assert params["k_per_class"] == "3" and params["finetune_workers"] == "1" and params["export"] == "False"
    versions = lambda: len(client.search_model_versions("name = 'tans-onnx.digits'"))  # noqa: E731
    before, champion = versions(), client.get_model_version_by_alias("tans-onnx.digits", "champion").version
    res = CliRunner().invoke(main, ["export", "models:/tans-finetuned.digits/1", "--no-register", "--json"] + args)
    assert res.exit_code == 0 and json.loads(res.stdout)["model_uri"] is None and versions() == before
    res = CliRunner().invoke(main, ["export", "models:/tans-finetuned.digits/1", "--data", "digits", "--no-promote",
                                    "--json"] + args)
    assert res.exit_code == 0 and versions() == before + 1 and json.loads(res.stdout)["champion"] is False
    assert client.get_model_version_by_alias("tans-onnx.digits", "champion").version == champion
    bad = CliRunner().invoke(main, ["export", "models:/tans-finetuned.digits/1", "--no-register", "--promote"] + args)
    assert bad.exit_code == 2 and "--promote needs --register" in bad.output
    Image.fromarray(load_dataset("digits", data_dir=tiny_data_dir).x_test[0]).save(tmp_path / "a.png")
    res = CliRunner().invoke(main, ["predict", "models:/tans-onnx.digits@champion", str(tmp_path / "a.png"), "--top", "2",
                                    "--device", "cpu", "--json", "--work-dir", str(work)])
    assert res.exit_code == 0 and len(json.loads(res.stdout)["predictions"][0]["top"]) == 2


def test_the_serve_command_listens_with_its_options(deployed, tiny_data_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    work, _ = deployed
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "tans"), "serve", "models:/tans-onnx.digits@champion",
                             "--port", str(port), "--device", "cpu", "--max-batch", "4", "--max-body-mb", "0.25",
                             "--work-dir", str(work)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_ping(base, proc, 120)
        x = load_dataset("digits", data_dir=tiny_data_dir).x_test[:6]
        status, body = _call(base, "/invocations", {"inputs": x.tolist()})
        assert status == 200 and np.asarray(body["predictions"]["logits"]).shape == (6, 10)
        assert _call(base, "/invocations", raw=b" " * (300 * 1024))[0] == 413           # --max-body-mb 0.25
        assert _call(base, "/v2/models/tans-onnx.digits")[1]["parameters"]["providers"] == ["CPUExecutionProvider"]
        with _HTTP.open(f"{base}/openapi.json", timeout=30) as resp:  # the OpenAPI page's schema
            paths = json.loads(resp.read())["paths"]
        assert {"/invocations", "/v2/models/{name}/infer", "/ping"} <= set(paths)
        assert "inputs" in json.dumps(paths["/invocations"]["post"]["requestBody"])
        with _HTTP.open(f"{base}/docs", timeout=30) as resp:
            assert resp.status == 200 and b"openapi.json" in resp.read()
        # SIGTERM while a request is in flight (its headers and half its body sent): it is answered, then
        # the server stops; a new connection is refused
        import http.client
        import signal
        import time

        payload = json.dumps({"inputs": x[:2].tolist()}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(payload)))
        conn.endheaders()
        conn.send(payload[:len(payload) // 2])
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # still answering the request in flight
        conn.send(payload[len(payload) // 2:])
        resp = conn.getresponse()
        assert resp.status == 200
        np.testing.assert_allclose(np.asarray(json.loads(resp.read())["predictions"]["logits"]),
                                   np.asarray(body["predictions"]["logits"])[:2], atol=1e-5)
        assert proc.wait(timeout=30) == 0
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _HTTP.open(f"{base}/ping", timeout=5)
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert f"on http://127.0.0.1:{port} with CPUExecutionProvider" in err
    assert "stopped (SIGTERM): the requests in flight were answered" in err
