"""`tans export --int8` (static QDQ per-channel quantization, calibrated on training images, gated on the
test split) and `tans export --triton DIR` (a Triton model repository read from the graphs), on a real
registered model: a small network trained here with the product's own fine-tuning loop and saved and
registered as a fine-tuned winner (`tans-finetuned.digits`), exactly as a query registers one (a tiny
zoo's 1-epoch networks are near chance, too weak to show what quantization keeps or loses)."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tans_registry import tracking
from tans_registry.cli import main
from tans_registry.data import load_dataset
from tans_registry.errors import TansError
from tans_registry.export.config import ExportConfig
from tans_registry.export.stage import export_model

N_TRAIN, N_TEST = 400, 200


# ----------------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``digits`` (400 training, 200 test images of the demo set's mnist), a min-size subnet trained on it
    for 20 epochs (0.8-0.9 test accuracy), registered as models:/tans-finetuned.digits/1."""
    from conftest import _save

    from tans_registry.finetune.candidate import split_train_val, train
    from tans_registry.finetune.config import FinetuneSettings
    from tans_registry.finetune.network import save_model
    from tans_registry.registry import models as registry_models
    from tans_registry.zoo.space import SupernetSpec, arch_hash, build_supernet, extract_subnet, min_arch
    from tans_registry.zoo.tensors import DEFAULT_MEAN, DEFAULT_STD

    data = tmp_path_factory.mktemp("int8-data")
    _save(load_dataset("mnist", max_train=N_TRAIN, max_test=N_TEST), data / "digits.npz")
    ds = load_dataset("digits", data_dir=data)
    work = tmp_path_factory.mktemp("int8-work")
    wd, _ = tracking.setup(work)
    spec = SupernetSpec(n_classes=ds.n_classes)
    torch.manual_seed(0)
    arch = min_arch(spec)
    module = extract_subnet(build_supernet(spec), arch).eval()
    settings = FinetuneSettings(epochs=20, lr=0.01, patience=100)
    tr, va = split_train_val(ds.y_train, settings.val_fraction, settings.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on every run (and 10x less CPU on a busy machine)
    try:
        fit = train(module, ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va], asdict(settings),
                    DEFAULT_MEAN, DEFAULT_STD)
    finally:
        torch.set_num_threads(threads)
    network = {"arch": arch, "arch_hash": arch_hash(arch), "supernet": spec.to_dict(), "classes": list(ds.classes),
               "input_size": 32, "mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD), "dataset": ds.name,
               "data": "digits", "data_dir": str(data), "seed": 0, "fingerprint": ds.fingerprint(), "zoo_parent": "",
               "query_run": "", "settings": asdict(settings), "val_accuracy": fit["val_accuracy"]}
    client = mlflow.MlflowClient()
    run_id = client.create_run(tracking.experiment_id("queries", wd), run_name="finetune-int8-fixture").info.run_id
    save_model(work / "finetuned", module, network, ds.x_train[:4])
    client.log_artifacts(run_id, str(work / "finetuned"), "finetuned")
    client.set_terminated(run_id)
    reg = registry_models.register_finetuned("digits", run_id, "finetuned", fit["val_accuracy"],
                                             {"tans.fingerprint": ds.fingerprint()}, "int8 test fixture")
    assert reg["model_uri"] == "models:/tans-finetuned.digits/1"
    return SimpleNamespace(work=work, data=data, ds=ds, uri=reg["model_uri"], module=module, network=network)


def _args(t) -> list[str]:
    return ["--work-dir", str(t.work), "--data-dir", str(t.data)]


def _versions(t) -> list:
    tracking.setup(t.work)
    return mlflow.MlflowClient().search_model_versions("name = 'tans-onnx.digits'")


def _alias(t, alias: str):
    tracking.setup(t.work)
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias("tans-onnx.digits", alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def _runs(t) -> int:
    tracking.setup(t.work)
    return len(mlflow.MlflowClient().search_runs([tracking.experiment_id("queries", Path(t.work))]))


def _same_model(a, b) -> bool:
    """The same nodes, inputs, outputs, metadata and weights (values and dtypes)."""
    import onnx
    from onnx import numpy_helper

    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    wa, wb = ({t.name: numpy_helper.to_array(t) for t in m.graph.initializer} for m in (ma, mb))
    return (list(ma.graph.node) == list(mb.graph.node) and list(ma.graph.input) == list(mb.graph.input)
            and list(ma.graph.output) == list(mb.graph.output) and ma.metadata_props == mb.metadata_props
            and wa.keys() == wb.keys() and all(wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k]) for k in wa))


def _accuracy(path, t) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(["logits"], {"images": t.ds.x_test})[0].argmax(1) == t.ds.y_test).mean())


# ------------------------------------------------------------------------- a tiny pbtxt parser
def parse_pbtxt(text: str) -> dict:
    """Protobuf text format as nested dicts; every field maps to the list of its values (repeated or not)."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.sub(r"#[^\n]*", "", text))
    pos = 0

    def scalar(tok):
        if tok.startswith('"'):
            return tok[1:-1]
        try:
            return int(tok)
        except ValueError:
            return tok  # an enum (TYPE_UINT8)

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                if tokens[pos] == ",":
                    pos += 1
                    continue
                items.append(value())
            pos += 1
            return items
        return scalar(tok)

    def message(end):
        nonlocal pos
        out: dict = {}
        while pos < len(tokens) and tokens[pos] != end:
            name = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            v = value()
            out.setdefault(name, []).extend(v if isinstance(v, list) and name in ("input", "output") else [v])
        pos += 1
        return out

    return message(None)


def _graph_io(path) -> tuple[list, list]:
    """(name, Triton data type, dims without the batch axis) of each input and output, read with onnx."""
    import onnx

    types = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32"}
    graph = onnx.load(str(path)).graph

    def spec(v):
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param  # a dynamic batch axis
        return v.name, types[v.type.tensor_type.elem_type], [d.dim_value for d in dims[1:]]

    return [spec(v) for v in graph.input], [spec(v) for v in graph.output]


def _check_triton_model(folder: Path, onnx_path: Path, max_batch: int, classes) -> None:
    cfg = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert cfg["name"] == [folder.name] and cfg["platform"] == ["onnxruntime_onnx"]
    assert cfg["max_batch_size"] == [max_batch] and cfg["dynamic_batching"] == [{}]
    inputs, outputs = _graph_io(folder / "1" / "model.onnx")
    assert [(i["name"][0], i["data_type"][0], i["dims"][0]) for i in cfg["input"]] == inputs
    assert [(o["name"][0], o["data_type"][0], o["dims"][0]) for o in cfg["output"]] == outputs
    assert inputs == [("images", "TYPE_UINT8", [32, 32, 3])] and outputs == [("logits", "TYPE_FP32", [len(classes)]),
                                                                   ("probabilities", "TYPE_FP32", [len(classes)])]
    assert _same_model(folder / "1" / "model.onnx", onnx_path)
    assert (folder / cfg["output"][0]["label_filename"][0]).read_text().splitlines() == list(classes)


def test_the_pbtxt_parser_reads_what_triton_reads():
    cfg = parse_pbtxt('# c\nname: "m"\nmax_batch_size: 8\ninput [\n  {\n    name: "x"\n    data_type: TYPE_FP32\n'
                      '    dims: [ 3, -1 ]\n  },\n  { name: "y" dims: [ 1 ] }\n]\ndynamic_batching { }\n')
    assert cfg == {"name": ["m"], "max_batch_size": [8], "dynamic_batching": [{}],
                   "input": [{"name": ["x"], "data_type": ["TYPE_FP32"], "dims": [[3, -1]]},
                             {"name": ["y"], "dims": [[1]]}]}


# --------------------------------------------------------------------------------------- tests
def test_options_are_checked_before_any_work(trained, tmp_path):
    cfg = ExportConfig(model_uri="models:/x/1")
    assert (cfg.int8, cfg.calib_images, cfg.int8_max_drop, cfg.triton, cfg.triton_max_batch) == (False, 256, 0.01,
                                                                                                  None, 64)
    uri = trained.uri
    for extra, fragment in ((["--calib-images", "32"], "--calib-images needs --int8"),
                            (["--triton-name", "m"], "--triton-name needs --triton"),
                            (["--triton-max-batch", "8"], "--triton-max-batch needs --triton"),
                            (["--int8", "--calib-images", "0"], "(--calib-images) must be an int >= 1"),
                            (["--triton", str(tmp_path / "t"), "--triton-name", "no spaces"], "(--triton-name) must be"),
                            (["--triton", str(tmp_path / "t"), "--triton-max-batch", "0"], "must be an int >= 1")):
        res = CliRunner().invoke(main, ["export", uri, *extra] + _args(trained))
        assert res.exit_code == 2 and fragment in res.output, (extra, res.output)
    with pytest.raises(TansError, match="int8_max_drop"):
        ExportConfig(model_uri="models:/x/1", int8_max_drop=-0.1)
    (tmp_path / "file").write_text("x")
    res = CliRunner().invoke(main, ["export", uri, "--triton", str(tmp_path / "file")] + _args(trained))
    assert res.exit_code == 2 and "is a file" in res.output
    with pytest.raises(TansError, match="is a file: pass a folder"):
        export_model(ExportConfig(model_uri=uri, triton=str(tmp_path / "file"), work_dir=str(trained.work)))
    assert not _versions(trained)


def test_calibration_images_are_training_images_stratified_and_seeded(trained):
    from tans_registry.export.int8 import calibration_images, preprocessing_nodes

    ds = trained.ds
    x = calibration_images(ds.classes, ds, ExportConfig(model_uri="m").calib_images)
    assert len(x) == 256 and x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3)
    row = {r.tobytes(): i for i, r in enumerate(ds.x_train)}
    assert all(r.tobytes() in row for r in x)                                 # training images, never test ones
    counts = np.bincount(ds.y_train[[row[r.tobytes()] for r in x]], minlength=ds.n_classes)
    assert counts.max() - counts.min() <= 1                                   # stratified
    assert np.array_equal(x, calibration_images(ds.classes, ds, 256))          # seeded
    assert len(calibration_images(ds.classes, ds, 10_000)) == N_TRAIN         # all of them when there are fewer
    import onnx

    from tans_registry.export.onnx import to_onnx

    path = to_onnx(trained.module, trained.network, trained.uri, Path(trained.work) / "pre-check.onnx")
    names = preprocessing_nodes(onnx.load(str(path)))
    ops = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    assert [ops[n] for n in names] == ["Transpose", "Cast", "Div", "Sub", "Div"]


def test_tans_export_int8_and_triton_register_an_int8_version_and_write_the_repository(trained, tmp_path):
    """The normal int8 export of this model passes the gate (on this machine, every run: fp32 0.875, int8
    0.885 on the 200 test images with 128 calibration images; a black-image calibration, below, loses ~30
    points), is registered with alias int8 (champion stays on fp32), and the Triton repository holds both
    graphs with configs that match them."""
    import onnx
    from mlflow.models import Model

    from tans_registry.serve.model import OnnxModel

    out, repo = tmp_path / "files" / "model.onnx", tmp_path / "triton"
    res = CliRunner().invoke(main, ["export", trained.uri, "--int8", "--calib-images", "128", "--out", str(out),
                                    "--triton", str(repo), "--triton-name", "digits_net", "--triton-max-batch", "16",
                                    "--json"] + _args(trained))
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["model_uri"] == "models:/tans-onnx.digits/1" and rec["champion"] is True
    assert rec["int8_model_uri"] == "models:/tans-onnx.digits/2"
    assert rec["calib_images"] == 128 and rec["test_images"] == N_TEST
    int8_file = out.with_suffix(".int8.onnx")
    assert rec["path"] == str(out.resolve()) and rec["int8_path"] == str(int8_file.resolve())
    # the record's accuracies are the graphs' own on the test split
    assert rec["fp32_test_accuracy"] == pytest.approx(_accuracy(out, trained), abs=1e-9)
    assert rec["int8_test_accuracy"] == pytest.approx(_accuracy(int8_file, trained), abs=1e-9)
    assert rec["fp32_test_accuracy"] > 0.7 and rec["int8_test_accuracy"] >= rec["fp32_test_accuracy"] - 0.01
    # the registry: int8 is a version of its own with alias int8, fp32 stays champion
    assert _alias(trained, "int8") == "2" and _alias(trained, "champion") == "1"
    tracking.setup(trained.work)
    v = mlflow.MlflowClient().get_model_version("tans-onnx.digits", "2")
    assert v.tags["tans.parent_model"] == trained.uri and v.tags["tans.fp32_model"] == "models:/tans-onnx.digits/1"
    assert v.tags["tans.quantization"] == "int8-qdq-per-channel-u8s8-7bit" and v.tags["tans.calib_images"] == "128"
    assert float(v.tags["tans.fp32_test_accuracy"]) == pytest.approx(rec["fp32_test_accuracy"], abs=1e-6)
    assert float(v.tags["tans.int8_test_accuracy"]) == pytest.approx(rec["int8_test_accuracy"], abs=1e-6)
    folder = mlflow.artifacts.download_artifacts("models:/tans-onnx.digits@int8")
    mlmodel = Model.load(f"{folder}/MLmodel")
    assert mlmodel.flavors["onnx"]["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert mlmodel.signature is not None and "onnxruntime-gpu" in Path(f"{folder}/requirements.txt").read_text()
    assert _same_model(f"{folder}/model.onnx", int8_file)  # MLflow re-saves it (weights as external data)
    # the graph: int8 QDQ with per-channel weight scales; the preprocessing untouched, in fp32
    g = onnx.load(str(int8_file)).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    inits = {t.name: t for t in g.initializer}
    per_channel = [n for n in g.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                   and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[1]].dims) == 1
                   and inits[n.input[1]].dims[0] > 1]
    assert per_channel                                                          # weights: one scale per channel
    producer = {o: n.op_type for n in g.node for o in n.output}
    first = [n for n in g.node if n.op_type in ("Transpose", "Cast", "Sub") or n.name in ("/Div", "/Div_1")]
    assert [n.op_type for n in first] == ["Transpose", "Cast", "Div", "Sub", "Div"]
    assert all(producer.get(n.input[0]) != "DequantizeLinear" for n in first)  # fp32 preprocessing
    served = OnnxModel.load("models:/tans-onnx.digits@int8", device="cpu")
    assert served.classes == list(trained.ds.classes) and served.logits(trained.ds.x_test[:3]).shape == (3, 10)
    # the Triton repository: both models, configs read from the graphs, the graphs themselves
    assert sorted(p.name for p in repo.iterdir()) == ["digits_net", "digits_net_int8"]
    assert rec["triton_repository"] == str(repo.resolve()) and rec["triton_models"] == ["digits_net", "digits_net_int8"]
    _check_triton_model(repo / "digits_net", out, 16, trained.ds.classes)
    _check_triton_model(repo / "digits_net_int8", int8_file, 16, trained.ds.classes)
    assert (repo / "digits_net" / "1" / "model.onnx").read_bytes() == out.read_bytes()          # the very file
    assert (repo / "digits_net_int8" / "1" / "model.onnx").read_bytes() == int8_file.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    # a query's export that follows the fine-tuned champion takes the fp32 export, never the int8 one
    from tans_registry.registry import models as registry_models

    moved = registry_models.register_onnx("digits", v.run_id, "onnx", {"tans.parent_model": "models:/other/1"}, "x",
                                          promote=True, follow_champion=True)
    assert moved["champion"] is False and _alias(trained, "champion") == "1"


def test_a_broken_calibration_is_refused_by_the_gate_and_nothing_is_registered_or_written(trained, tmp_path):
    """Calibrated on black images, the activation ranges miss real digits and int8 accuracy collapses: the
    export is refused with both accuracies, no run, no version, no alias, no Triton folder. The same graph
    with the threshold raised to 1.0 passes (the gate is what refused it)."""
    before, int8_before, runs_before = len(_versions(trained)), _alias(trained, "int8"), _runs(trained)
    black = np.zeros((64, 32, 32, 3), dtype=np.uint8)
    repo = tmp_path / "repo"
    with pytest.raises(TansError) as err:
        export_model(ExportConfig(model_uri=trained.uri, int8=True, triton=str(repo), work_dir=str(trained.work),
                                  data_dir=str(trained.data)), calibration=black)
    msg = str(err.value)
    assert err.value.code == "EXPORT_INT8_ACCURACY" and "is refused" in msg and "Nothing was registered" in msg
    accs = [float(a) / 100 for a in re.findall(r"(\d+\.\d+)%", msg)[:2]]
    assert accs[0] < accs[1] - 0.1                                             # int8's, then fp32's
    assert "--calib-images" in msg and "without --int8" in msg
    assert len(_versions(trained)) == before and _alias(trained, "int8") == int8_before and _runs(trained) == runs_before
    assert list(tmp_path.iterdir()) == []                                       # no Triton folder, no staging
    lenient = export_model(ExportConfig(model_uri=trained.uri, int8=True, int8_max_drop=1.0, register=False,
                                        triton=str(repo), work_dir=str(trained.work), data_dir=str(trained.data)),
                           calibration=black)
    assert lenient.int8_test_accuracy == pytest.approx(accs[0], abs=1e-4) and lenient.calib_images == 64
    assert lenient.fp32_test_accuracy == pytest.approx(accs[1], abs=1e-4)
    assert lenient.int8_model_uri is None and lenient.model_uri is None and len(_versions(trained)) == before
    assert lenient.triton_models == ("tans_digits", "tans_digits_int8")         # the default name
    _check_triton_model(repo / "tans_digits", lenient.path, 64, trained.ds.classes)
    _check_triton_model(repo / "tans_digits_int8", lenient.int8_path, 64, trained.ds.classes)


def test_tans_export_int8_exits_non_zero_when_the_gate_refuses(trained, tmp_path, monkeypatch):
    """From the command line (no option breaks the calibration: the training images are the only ones it
    takes), with the product's calibration sampler swapped for black images: exit 1, the message, nothing kept."""
    from tans_registry.export import int8

    before, runs_before = len(_versions(trained)), _runs(trained)
    monkeypatch.setattr(int8, "calibration_images", lambda classes, ds, n: np.zeros((n, 32, 32, 3), np.uint8))
    res = CliRunner().invoke(main, ["export", trained.uri, "--int8", "--calib-images", "16", "--triton",
                                    str(tmp_path / "repo")] + _args(trained))
    assert res.exit_code == 1 and "int8 export of models:/tans-finetuned.digits/1 is refused" in res.output
    assert "(--calib-images, 16 now)" in res.output
    assert len(_versions(trained)) == before and _runs(trained) == runs_before and list(tmp_path.iterdir()) == []
