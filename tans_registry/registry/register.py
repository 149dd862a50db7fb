"""``tans zoo register``: every zoo network becomes a version of its group's registered model.

Bulk and cheap: a version's source is a tiny MLmodel folder (``registry/n<index>/`` of the group run)
that points at the group's supernet, so a version costs one ``create_model_version`` call (~10 ms) and
about a kilobyte of artifacts, never a copy of the weights. Idempotent: a network already registered
(tag ``tans.network_id`` = ``<run_id>:<index>``) is skipped, so a second run changes nothing.

A rebuilt group's earlier versions stay (lineage) but are tagged ``tans.superseded_by`` = the run of the
current build; the index, and so queries, leave them out. Also here: writing the encoders' embeddings
into the zoo versions' tags (:func:`write_embeddings`, part of ``tans index build``).
"""
from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import tracking
from ..errors import TansError
from ..zoo.generalist import is_generalist
from ..zoo.store import finished_group_runs, load_functional_embeddings, read_table
from . import client as C
from . import integrity
from .codec import compact_json, encode_embedding, fit_tag
from .config import RegisterConfig, RegisterRecord
from .names import ZOO_PREFIX, zoo_model_name
from .pyfunc import _local_zoo_dir, write_model_dir

log = logging.getLogger("tans_registry")
RAW_ENCODER = "raw"  # tans.encoder_version until `tans index build` writes learned embeddings
REGISTRY_DIR = "registry"
DIRS_COMPLETE = "_complete"  # written into registry/ after every network's MLmodel folder is uploaded
DONE_TAG = "tans.registered_run"  # model tag: the group run whose networks are all registered
SUPERSEDED_TAG = "tans.superseded_by"  # version tag: the run of the group's build that replaced it
CHECKED_TAG = "tans.superseded_checked"  # model tag: the run whose earlier builds' versions were tagged


def version_tags(header: dict, row: dict, run_id: str, f_emb: np.ndarray) -> dict[str, str]:
    """The ``tans.*`` tags of one zoo version (each under the 5,000-character cap)."""
    descriptor = header.get("descriptor") or []
    classes = compact_json(header["classes"])
    return {
        "tans.dataset": header["dataset"],
        "tans.group": header["group"],
        "tans.index": str(row["index"]),
        "tans.network_id": f"{run_id}:{row['index']}",
        "tans.arch_hash": row["arch_hash"],
        "tans.dataset_embedding": encode_embedding(descriptor),
        "tans.model_embedding": encode_embedding(np.concatenate([np.asarray(row["topology"], np.float32), f_emb])),
        "tans.encoder_version": RAW_ENCODER,
        "tans.accuracy": f"{row['accuracy']:.6f}",
        "tans.n_params": str(row["n_params"]),
        "tans.flops": str(row["flops"]),
        "tans.arch": compact_json(row["arch"]),
        "tans.input_size": str(header["input_size"]),
        "tans.mean": compact_json(header["mean"]),
        "tans.std": compact_json(header["std"]),
        "tans.classes": fit_tag(classes, compact_json({"n": len(header["classes"]), "in": "network.json"})),
        "tans.supernet_run": run_id,
    }


def model_card(header: dict, row: dict, name: str) -> str:
    d = row["arch"]["d"]
    classes = ", ".join(header["classes"][:12]) + (" ..." if len(header["classes"]) > 12 else "")
    return (
        f"### Zoo network {row['index']} of group `{header['group']}`\n\n"
        f"| | |\n|---|---|\n"
        f"| source dataset | `{header['dataset']}` ({len(header['classes'])} classes: {classes}) |\n"
        f"| test accuracy | {row['accuracy']:.4f} |\n"
        f"| parameters | {row['n_params']:,} |\n"
        f"| FLOPs (32x32 input) | {row['flops'] / 1e6:.1f} M |\n"
        f"| architecture | OFA MobileNetV3, depths {d}, arch hash `{row['arch_hash']}` |\n"
        f"| input | {header['input_size']}x{header['input_size']} RGB uint8, normalised with mean "
        f"{header['mean']} std {header['std']} |\n"
        + (f"| added from | `{header.get('added_from')}` (its own weights) |\n" if header.get("standalone") else "")
        + f"| supernet run | `{header['supernet_run']}` |\n\n"
        "Load it:\n\n"
        "```python\n"
        f"out = mlflow.pyfunc.load_model('models:/{name}/<version>').predict(images)  # uint8 [N,H,W,3]\n"
        "# out['logits'], out['probabilities']: [N, classes] each, columns in the order of the classes above\n"
        f"module = tans_registry.load_module('models:/{name}/<version>')               # nn.Module\n"
        "```\n"
        + ("Its own weights (safetensors); no pickle." if header.get("standalone") else
           "Weights are stored once per group (safetensors) and cut out on load; no pickle.")
    )


def register_zoo(cfg: RegisterConfig = RegisterConfig()) -> RegisterRecord:
    """Register every network of the zoo's latest complete group runs (idempotent); mark the versions
    of a rebuilt group's earlier builds as superseded."""
    wd, uri = tracking.setup(cfg.work_dir)
    exp_id = tracking.experiment_id("zoo", wd)
    groups = {g: r for g, r in finished_group_runs(exp_id).items() if g != "__base__"}
    if not groups:
        raise TansError("the zoo is empty: build it first with `tans zoo build --profile quick`", code="ZOO_EMPTY")
    models: dict[str, int] = {}
    created = existing = superseded = 0
    # each writer starts at a random group and goes round: writers started at once then mostly work on
    # different groups (a group another has finished is skipped cheaply) instead of racing through the
    # same ones in the same order; any order registers the same versions
    items = sorted(groups.items())
    start = random.SystemRandom().randrange(len(items))
    with C.wrapped("register the zoo", "check the store and run `tans zoo register` again (it is idempotent)"):
        for group, run in tqdm(items[start:] + items[:start], desc="register", unit="group", disable=not cfg.progress):
            name = zoo_model_name(group)
            mine: set[int] = set()  # this writer's versions, kept across retries of the group
            made, had, old = _retrying(lambda: _register_group(name, run, mine), f"registering {name}")
            if made:
                models[name] = made
            created, existing, superseded = created + made, existing + had, superseded + old
    models = dict(sorted(models.items()))
    return RegisterRecord(tracking_uri=tracking.redact(uri), models=models, created=created, existing=existing,
                          superseded=superseded)


def _register_group(name: str, run, mine: set[int] | None = None) -> tuple[int, int, int]:
    """Register one group run's networks as versions of ``name`` (idempotent: what exists is kept, racing
    writers converge); returns (created, already there, superseded). ``mine`` collects the versions this
    writer created (across retries: a retry after creating them still counts them)."""
    mine = set() if mine is None else mine
    model = C.get_model(name)
    if (model is not None and model.tags.get(DONE_TAG) == run.info.run_id
            and model.tags.get(CHECKED_TAG) == run.info.run_id):
        return 0, int(model.tags.get("tans.n_networks", 0)), 0  # the whole group is in: skip cheaply
    table = read_table(run.info.run_id)
    header, rows = table["header"], table["networks"]
    if model is None:
        _create_model(name, header)
    have = C.versions(name)
    ids = {v.tags.get("tans.network_id") for v in have}
    todo = [r for r in rows if f"{run.info.run_id}:{r['index']}" not in ids]
    existing = len(rows) - len(todo)
    _ensure_model_dirs(run, header, rows)  # also when every version exists: their folders may not
    created = 0
    if todo:
        f_emb = load_functional_embeddings(run.info.run_id)
        digests = _folder_digests(run)
        for row in todo:
            tags = version_tags(header, row, run.info.run_id, f_emb[row["index"]])
            tags[integrity.DIGEST_TAG] = digests[row["index"]]
            mine.add(int(C.client().create_model_version(
                name, source=f"{run.info.artifact_uri}/{REGISTRY_DIR}/n{row['index']}",
                run_id=run.info.run_id, tags=tags, description=model_card(header, row, name)).version))
    if mine:
        kept = _dedupe(name, run.info.run_id)
        created = len(mine & kept)  # racing writers: only the versions of this one that survived count
        existing = len(rows) - created
    superseded = _supersede(name, have, run.info.run_id)
    _mark_done(name, run.info.run_id, len(rows))
    return created, existing, superseded


RETRIES, RETRY_WAIT_S = 3, 2.0


def _retrying(fn, what: str):
    """``fn()``, tried again (up to :data:`RETRIES` times in all) when the store's connection drops, e.g. a
    database restarted: every step it retries is idempotent."""
    import time

    for attempt in range(1, RETRIES + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - only connection errors are retried, the rest re-raised
            if attempt == RETRIES or not (_connection_lost(exc) or _racing_insert(exc)):
                raise
            why = "another writer's write collided with this one" if _racing_insert(exc) else \
                "the store's connection was lost"
            log.warning("%s while %s (%s); trying again (%d/%d)", why, what,
                        tracking.scrub(str(exc).splitlines()[0])[:120], attempt + 1, RETRIES)
            time.sleep(RETRY_WAIT_S * attempt)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a dropped or refused database connection."""
    while exc is not None:
        if type(exc).__name__ in ("OperationalError", "InterfaceError") and \
                type(exc).__module__.split(".", 1)[0] in ("sqlalchemy", "psycopg", "psycopg2"):
            return True
        if "server closed the connection" in str(exc) or "connection is closed" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _racing_insert(exc: BaseException) -> bool:
    """Whether ``exc`` is another writer's row winning an insert (MLflow's tag writes read, then insert:
    two writers setting the same registered-model tag at once collide on its key). The step is idempotent,
    so it is tried again."""
    while exc is not None:
        text = str(exc)
        if "UniqueViolation" in text or "duplicate key value violates unique constraint" in text or \
                "UNIQUE constraint failed" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _dedupe(name: str, run_id: str) -> set[int]:
    """Writers registering the same group at once each create the versions they did not see: keep the
    lowest version of every network of ``run_id`` and delete the others (every writer converges on the same
    survivors), so each network ends registered exactly once. Returns the surviving version numbers."""
    from mlflow.exceptions import MlflowException

    seen: dict[str, list[int]] = {}
    for v in C.versions(name):
        nid = v.tags.get("tans.network_id", "")
        if nid.startswith(f"{run_id}:"):
            seen.setdefault(nid, []).append(int(v.version))
    for numbers in seen.values():
        for extra in sorted(numbers)[1:]:
            try:
                C.client().delete_model_version(name, str(extra))
            except MlflowException as exc:  # another writer deleted it first
                if C.error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
    return {min(numbers) for numbers in seen.values()}


def _supersede(name: str, versions: list, run_id: str) -> int:
    """Tag the versions of ``name`` that an earlier build of the group made (``tans.supernet_run`` !=
    ``run_id``) as superseded by ``run_id``; returns how many were tagged now."""
    n = 0
    for v in versions:
        if v.tags.get("tans.supernet_run", run_id) != run_id and SUPERSEDED_TAG not in v.tags:
            C.client().set_model_version_tag(name, v.version, SUPERSEDED_TAG, run_id)
            n += 1
    return n


def current_zoo_versions() -> list:
    """Every zoo version of the groups' current builds: not tagged superseded, and made by the build its
    model was last registered from (``tans.registered_run``; a store registered before superseded
    versions were tagged has untagged old versions until the next `tans zoo register`)."""
    with C.wrapped("list the zoo's versions", "check the store (MLFLOW_TRACKING_URI) and run the command again"):
        current = {m.name: m.tags.get(DONE_TAG) for m in C.models_like(ZOO_PREFIX)}
        return [v for v in C.versions_like(ZOO_PREFIX) if SUPERSEDED_TAG not in v.tags
                and current.get(v.name) in (None, v.tags.get("tans.supernet_run"))]


def write_embeddings(updates: list[tuple[object, str, str]], encoder_version: str, progress: bool = True) -> int:
    """Write ``(version, model embedding tag, dataset embedding tag)`` into each zoo version's tags, with
    ``tans.encoder_version``; then tag each touched model, which moves the index cache key on."""
    touched = set()
    with C.wrapped("write the encoders' embeddings into the zoo versions",
                   "check the store and rerun `tans index build` (versions already written are skipped)"):
        c = C.client()
        for v, model_tag, dataset_tag in tqdm(updates, desc="embed zoo", unit="version", disable=not progress):
            c.set_model_version_tag(v.name, v.version, "tans.model_embedding", model_tag)
            c.set_model_version_tag(v.name, v.version, "tans.dataset_embedding", dataset_tag)
            c.set_model_version_tag(v.name, v.version, "tans.encoder_version", encoder_version)
            touched.add(v.name)
        for name in touched:  # bumps the model's update time: the index cache key moves on
            c.set_registered_model_tag(name, "tans.encoder_version", encoder_version)
    return len(touched)


def _mark_done(name: str, run_id: str, n: int) -> None:
    """Record on the model that every network of ``run_id`` is registered (set last, after them)."""
    C.client().set_registered_model_tag(name, "tans.n_networks", str(n))
    C.client().set_registered_model_tag(name, CHECKED_TAG, run_id)
    C.client().set_registered_model_tag(name, DONE_TAG, run_id)


def added_version(group: str, added_from: str) -> int | None:
    """The version of ``group``'s zoo model added from ``added_from`` (`tans zoo add`), or None."""
    name = zoo_model_name(group)
    if C.get_model(name) is None:
        return None
    return next((int(v.version) for v in C.versions(name) if v.tags.get("tans.added_from") == added_from), None)


def register_standalone(run, header: dict, row: dict, f_emb: np.ndarray, added_from: str) -> tuple[str, int, bool]:
    """Register the standalone network logged in ``run`` (`tans zoo add`: its ``zoo/`` holds network.safetensors,
    zoo.json and embeddings.safetensors) as a version of its group's model; ``added_from``: the fine-tuned version
    it is. Idempotent: a version already added from ``added_from`` is returned as it is. Returns (model name,
    version, created now). The version is created last, in one call: a failure before leaves nothing registered (a
model created for it is deleted again)."""
    name = zoo_model_name(header["group"])
    if C.get_model(name) is not None:
        for v in C.versions(name):
            if v.tags.get("tans.added_from") == added_from:
                return name, int(v.version), False
        return name, _standalone_version(run, header, row, f_emb, added_from, name), True
    _create_model(name, header)
    try:
        return name, _standalone_version(run, header, row, f_emb, added_from, name), True
    except BaseException:  # the model made for it goes too: nothing half-written (an empty model) is left
        try:
            C.client().delete_registered_model(name)
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            pass
        raise


def _standalone_version(run, header: dict, row: dict, f_emb: np.ndarray, added_from: str, name: str) -> int:
    run_id = run.info.run_id
    zoo_uri = f"{run.info.artifact_uri}/zoo"
    with tempfile.TemporaryDirectory() as scratch:
        zoo_digest = integrity.folder_digest(_local_zoo_dir(zoo_uri, Path(scratch), integrity.STANDALONE_FILES),
                                             names=integrity.STANDALONE_FILES)
    client = C.client()
    with tempfile.TemporaryDirectory() as tmp:
        write_model_dir(Path(tmp) / "n0", {integrity.ZOO_DIGEST_KEY: zoo_digest, "zoo_artifacts": zoo_uri, "run_id": run_id,
                                           "index": 0, "standalone": True, "arch": row["arch"], "arch_hash": row["arch_hash"],
                                           "group": header["group"], "dataset": header["dataset"],
                                           "classes": header["classes"], "input_size": header["input_size"],
                                           "mean": header["mean"], "std": header["std"], "accuracy": row["accuracy"],
                                           "n_params": row["n_params"], "flops": row["flops"], "data": header.get("data"),
                                           "fingerprint": header.get("fingerprint"), "added_from": added_from})
        client.log_artifacts(run_id, tmp, REGISTRY_DIR)
    tags = version_tags(header, row, run_id, f_emb) | {integrity.DIGEST_TAG: _folder_digests(run)[0],
                                                       "tans.added_from": added_from, "tans.standalone": "true"}
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/{REGISTRY_DIR}/n0", run_id=run_id,
                                          tags=tags, description=model_card(header, row, name))
    return int(version.version)


def _create_model(name: str, header: dict) -> None:
    if header.get("standalone"):
        about = (f"Networks fine-tuned on `{header['dataset']}` by `tans query` and added to the zoo (`tans zoo add`): "
                 "standalone candidates, each with its own weights")
    elif is_generalist(header["group"]):
        about = (f"The generalist: subnets of the shared base supernet, trained on the training datasets pooled "
                 f"({', '.join(header.get('sources', []))}; {len(header['classes'])} classes, one joint head), "
                 "the start every group's supernet began from. Source accuracy is on the pooled test images.")
    else:
        about = (f"Zoo networks of group `{header['group']}` (source dataset `{header['dataset']}`, "
                 f"{len(header['classes'])} classes)")
    what = "one version per network" if header.get("standalone") else \
        "one version per OFA MobileNetV3 subnet cut out of the group's supernet"
    C.ensure_model(
        name, tags={"tans.kind": "zoo", "tans.group": header["group"], "tans.dataset": header["dataset"]},
        description=(f"{about}: {what}. Version tags `tans.*` hold accuracy, size, architecture and embeddings."))


def _ensure_model_dirs(run, header: dict, rows: list[dict]) -> None:
    """Log the per-network MLmodel folders into the group run, once: a folder set is complete only with its
    ``_complete`` marker, uploaded after them (an upload cut short is redone whole)."""
    client = C.client()
    if f"{REGISTRY_DIR}/{DIRS_COMPLETE}" in {f.path for f in client.list_artifacts(run.info.run_id, REGISTRY_DIR)}:
        return
    zoo_uri = f"{run.info.artifact_uri}/zoo"
    with tempfile.TemporaryDirectory() as scratch:  # the group's weights, hashed into every network.json
        zoo_digest = integrity.folder_digest(_local_zoo_dir(zoo_uri, Path(scratch)), names=integrity.ZOO_FILES)
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            write_model_dir(Path(tmp) / f"n{row['index']}", {integrity.ZOO_DIGEST_KEY: zoo_digest,
                "zoo_artifacts": zoo_uri, "run_id": run.info.run_id, "index": row["index"],
                "arch": row["arch"], "arch_hash": row["arch_hash"], "group": header["group"],
                "dataset": header["dataset"], "classes": header["classes"], "input_size": header["input_size"],
                "mean": header["mean"], "std": header["std"], "accuracy": row["accuracy"],
                "n_params": row["n_params"], "flops": row["flops"]})
        client.log_artifacts(run.info.run_id, tmp, REGISTRY_DIR)
        marker = Path(tmp) / DIRS_COMPLETE
        marker.write_text(f"{len(rows)} network folders\n")
        client.log_artifact(run.info.run_id, str(marker), REGISTRY_DIR)


def _folder_digests(run) -> dict[int, str]:
    """sha256 of each network's model folder (``registry/n<index>``) as stored in the group run."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=REGISTRY_DIR,
                                                         dst_path=tmp))
        return {int(d.name[1:]): integrity.folder_digest(d) for d in local.iterdir()
                if d.is_dir() and d.name.startswith("n") and d.name[1:].isdigit()}
