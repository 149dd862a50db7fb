"""`tans zoo add MODEL_URI`: a fine-tuned winner joins the zoo as a standalone candidate, so that a later, similar
query can find it (the zoo learns from its queries).

The fine-tuned model (``tans-finetuned.<dataset>``: its architecture, its own weights, its classes and where its
data came from) is checked against its registered sha256, measured as every zoo network is (parameters, FLOPs,
the functional embedding on the same probe batch; its accuracy is its test accuracy after fine-tuning), logged
as a run of `tans/zoo` (tag ``tans.kind`` = ``zoo-added``: not a group the encoders train on) holding its
weights, and registered as a version of ``zoo.added.<dataset>`` (tag ``tans.added_from``). `tans index build`
embeds it; its dataset embedding comes from its dataset, loaded again from where the query read it (a dataset
that can no longer be found leaves that term empty). Adding the same version twice changes nothing.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import tracking
from ..errors import ConfigError
from ..finetune.network import DATA_FILE, WEIGHTS_FILE, rebuild
from ..registry import integrity
from ..registry.names import FINETUNED_PREFIX, ZOO_PREFIX, parse_model_uri, zoo_model_name
from ..registry.register import added_version, register_standalone
from ..zoo.cut import PROBE_SEED
from ..zoo.measure import count_flops, functional_embedding, n_params
from ..zoo.space import arch_hash, topology
from ..zoo.store import ARTIFACT_DIR, COMPLETE_TAG
from .config import AddConfig, AddRecord

ADDED_PREFIX = "added."  # the group of the networks added from one dataset: zoo.added.<dataset>


def add_to_zoo(cfg: AddConfig) -> AddRecord:
    import mlflow
    import torch
    from safetensors.torch import load_file, save_file

    wd, _ = tracking.setup(cfg.work_dir)
    parsed = parse_model_uri(cfg.model_uri)
    if parsed is None:
        raise ConfigError(f"{cfg.model_uri}: name a fine-tuned winner as models:/{FINETUNED_PREFIX}<dataset>/<version> "
                          f"or models:/{FINETUNED_PREFIX}<dataset>@champion (`tans query --finetune N` registers them)")
    if parsed[0].startswith(ZOO_PREFIX):
        raise ConfigError(f"{cfg.model_uri} is a zoo version already; `tans zoo add` takes a fine-tuned winner "
                          f"({FINETUNED_PREFIX}<dataset>)")
    with tempfile.TemporaryDirectory() as tmp:
        local, version = integrity.download_version(cfg.model_uri, tmp)
        # MLflow keeps a pyfunc model's data under data/<its folder> (finetune/network.py saves "network")
        folder = next((f.parent for f in sorted(local.rglob(DATA_FILE)) if (f.parent / WEIGHTS_FILE).is_file()),
                      local / "network")
        if not (folder / DATA_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{cfg.model_uri} is not a fine-tuned network of `tans query` (no network/{DATA_FILE} and "
                              f"network/{WEIGHTS_FILE}); an ONNX export cannot join the zoo: add the fine-tuned "
                              f"version it came from ({FINETUNED_PREFIX}<dataset>)")
        network = json.loads((folder / DATA_FILE).read_text())
        _check_classifier(cfg.model_uri, network, wd)
        added_from = f"models:/{parsed[0]}/{version}"
        dataset = str(network["dataset"])
        have = added_version(ADDED_PREFIX + dataset, added_from)
        if have is not None:  # added before: nothing to do
            return AddRecord(model_uri=f"models:/{zoo_model_name(ADDED_PREFIX + dataset)}/{have}", added_from=added_from,
                             created=False, dataset=dataset, accuracy=float(network["test_accuracy"]), n_params=0,
                             run_id="")
        state = load_file(str(folder / WEIGHTS_FILE))
        module = rebuild(network, state)
        size = int(network["input_size"])
        f_emb = functional_embedding(module, size, PROBE_SEED)
        row = {"index": 0, "arch_hash": arch_hash(network["arch"]), "arch": network["arch"],
               "topology": topology(network["arch"]), "accuracy": float(network["test_accuracy"]),
               "n_params": n_params(module), "flops": count_flops(module, size)}
        header = {"group": ADDED_PREFIX + dataset, "dataset": dataset, "classes": list(network["classes"]),
                  "input_size": size, "mean": network["mean"], "std": network["std"],
                  "supernet": network["supernet"] | {"n_classes": len(network["classes"])}, "probe_seed": PROBE_SEED,
                  "fingerprint": network.get("fingerprint"), "descriptor": [], "standalone": True,
                  "data": {"spec": network.get("data"), "data_dir": network.get("data_dir"), "seed": network.get("seed", 0)},
                  "added_from": added_from}
        exp = tracking.experiment_id("zoo", wd)
        tags = {"tans.kind": "zoo-added", "tans.group": header["group"], "tans.dataset": dataset,
                "tans.added_from": added_from, "tans.fingerprint": str(network.get("fingerprint"))}
        with mlflow.start_run(experiment_id=exp, run_name=f"add-{dataset}", tags=tags) as run:
            header["supernet_run"] = run.info.run_id
            out = Path(tmp) / ARTIFACT_DIR
            out.mkdir()
            shutil.copyfile(folder / WEIGHTS_FILE, out / "network.safetensors")
            save_file({"functional": torch.from_numpy(np.ascontiguousarray(f_emb[None], np.float32))},
                      str(out / "embeddings.safetensors"))
            (out / "zoo.json").write_text(json.dumps({"header": header, "networks": [row]}, indent=1))
            mlflow.log_artifacts(str(out), ARTIFACT_DIR)
            mlflow.log_metrics({"accuracy": row["accuracy"], "n_params": row["n_params"], "flops": row["flops"]})
            mlflow.set_tag(COMPLETE_TAG, "true")
        try:
            name, number, created = register_standalone(run, header, row, f_emb, added_from)
        except BaseException:  # nothing half-made left behind: the registry was not written (the version is last)
            mlflow.MlflowClient().delete_run(run.info.run_id)
            raise
    return AddRecord(model_uri=f"models:/{name}/{number}", added_from=added_from, created=created, dataset=dataset,
                     accuracy=row["accuracy"], n_params=int(row["n_params"]), run_id=run.info.run_id)


def _check_classifier(model_uri: str, network: dict, wd) -> None:
    """A network the zoo can hold: an image classifier (an architecture, classes, preprocessing) of the zoo's
    input size. Raises :class:`ConfigError` naming what is wrong (nothing is written before this check)."""
    from ..zoo.store import finished_group_runs

    missing = [k for k in ("arch", "classes", "input_size", "mean", "std", "supernet", "dataset", "test_accuracy")
               if k not in network]
    classes = network.get("classes")
    if missing or not isinstance(classes, list) or len(classes) < 2:
        raise ConfigError(f"{model_uri} is not a classifier `tans zoo add` can hold: its network.json lacks "
                          f"{', '.join(missing) or 'two classes or more'}; add a fine-tuned winner of `tans query`")
    sizes = {str(r.data.params.get("input_size")) for r in finished_group_runs(tracking.experiment_id("zoo", wd)).values()
             if r.data.params.get("input_size")}
    if not sizes:
        raise ConfigError(f"this work directory holds no zoo to add {model_uri} to: build one first (`tans zoo build`)")
    if str(network["input_size"]) not in sizes:
        theirs = " or ".join(f"{s}x{s}" for s in sorted(sizes))
        raise ConfigError(f"{model_uri} takes {network['input_size']}x{network['input_size']} images, the zoo's networks "
                          f"{theirs}: a query embeds and searches the zoo at one input size; fine-tune a start of this "
                          "zoo (`tans query --finetune N`) and add that")
