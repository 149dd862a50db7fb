"""Building a zoo's groups in parallel processes, the cores split between them (`--workers`)."""
from __future__ import annotations

import logging
from dataclasses import replace

import torch

from .. import tracking
from . import store

log = logging.getLogger("tans_registry")


def build_in_workers(build_group, todo, profile, cfg, exp_id, uri, base_run, results, bar) -> None:
    """Build the groups of ``todo`` with ``build_group`` in ``cfg.workers`` processes, the cores split between them.

    Small networks use two cores poorly (one step of the largest subnet: 0.70 s on 2 threads, 0.96 s
    on 1), so two one-thread builds side by side do ~1.45x the work of one two-thread build. A
    failing group or an interrupt stops every worker at once; nothing is half-written (a group's run
    is marked complete last, so `--resume` rebuilds the groups that were in progress)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    workers = min(cfg.workers or 1, len(todo))
    threads = max(1, torch.get_num_threads() // workers)
    worker_cfg = replace(cfg, progress=False)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                               initargs=(uri, threads, tracking.PROJECT_RUN_ID, base_run))
    try:
        pending = {pool.submit(_worker_build, build_group, group, profile, worker_cfg, exp_id, chash) for group, chash in todo}
        bar.set_postfix_str(f"{workers} workers x {threads} threads")
        while pending:
            # FIRST_COMPLETED, not FIRST_EXCEPTION: the latter returns only when every group is done (or one
            # failed), so the bar sat at 0 for the whole build
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                exc = fut.exception()
                if exc is not None:
                    for other in pending:
                        other.cancel()
                    raise exc
                res = fut.result()
                results[res.group] = res
                bar.set_postfix_str(f"{res.group} {res.best_accuracy:.3f}")
                bar.update(1)
    except BaseException:
        # interrupted (Ctrl-C) or a group failed: stop the workers too, instead of leaving them building in
        # the background (a `kill` of this process reaches them through _die_with_parent)
        for proc in list(getattr(pool, "_processes", {}).values()):
            if proc.is_alive():
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def build_in_ray(build_group, todo, profile, cfg, exp_id, uri, base_run, results, bar) -> None:
    """Build the groups of ``todo`` as Ray tasks (one a group, one CPU and one thread each; at most
    ``cfg.workers`` in flight when given), each logging its group's run to the tracking URI ``uri``.

    The same seed builds the same networks as the local executor: a group's build depends on its data,
    the profile and the seed only. A failing group stops the build (the tasks in flight are cancelled);
    as locally, a group's run is marked complete last, so `--resume` rebuilds what was in progress."""
    from ..executor import as_completed, ray_session, task_device

    with ray_session(cfg.ray_address) as resources:
        device, gpus = task_device(cfg.device)
        worker_cfg = replace(cfg, progress=False, device=device)
        jobs = [{"build_group": build_group, "group": group, "profile": profile, "cfg": worker_cfg, "exp_id": exp_id,
                 "chash": chash, "uri": uri, "project_run": tracking.PROJECT_RUN_ID, "base_run": base_run}
                for group, chash in todo]
        bar.set_postfix_str(f"ray: {int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs")
        for _, res in as_completed(_ray_build, jobs, threads=1, workers=cfg.workers, gpus=gpus):
            results[res.group] = res
            bar.set_postfix_str(f"{res.group} {res.best_accuracy:.3f}")
            bar.update(1)


def _ray_build(job: dict):
    """A Ray task: one group, from the base supernet when the build has one."""
    global _WORKER_BASE
    _worker_init(job["uri"], 1, job["project_run"], job["base_run"], own_process=False)
    try:
        return job["build_group"](job["group"], job["profile"], job["cfg"], job["exp_id"], job["chash"], _WORKER_BASE)
    finally:
        _WORKER_BASE = None


_WORKER_BASE: dict | None = None


def _worker_init(uri: str, threads: int, project_run: str | None, base_run: str | None,
                 own_process: bool = True) -> None:
    """A worker's set-up; ``own_process``: a process of this build's pool (it dies with the build), not a
    Ray worker (Ray manages those)."""
    import mlflow

    global _WORKER_BASE
    if own_process:
        _die_with_parent()
    torch.set_num_threads(threads)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    tracking.PROJECT_RUN_ID = project_run
    if base_run is not None:
        from safetensors.torch import load_file

        _WORKER_BASE = load_file(str(store.group_dir(base_run) / "supernet.safetensors"))


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGTERM to this worker when the build process dies, however it dies
    (seen without it: a killed build left its workers building for minutes)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: Ctrl-C still stops the workers (same process group)


def _worker_build(build_group, group, profile, cfg, exp_id, chash):
    """In a worker: ``build_group`` (:func:`.build.build_group`, passed by reference) from the base."""
    return build_group(group, profile, cfg, exp_id, chash, _WORKER_BASE)
