"""Where parallel work runs (``--executor``): ``local``, spawned processes on this machine (the default), or
``ray``, one Ray task per job on a Ray cluster (``--ray-address``; without it, the cluster named by
``RAY_ADDRESS``, else a local one started for the command and stopped after it).

Callers hand over jobs that carry everything a worker needs (the tracking URI, the thread count, the
data): a job runs the same function under either executor, so the same seed builds the same networks.
Every Ray task asks for ``threads`` CPUs; Ray runs as many at once as the cluster has CPUs for, or at most
``workers`` when that is given. Results come back in the jobs' order (:func:`parallel_map`) or as they
finish (:func:`as_completed`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import ConfigError

EXECUTORS = ("local", "ray")
log = logging.getLogger("tans_registry")


@dataclass(frozen=True)
class Executor:
    kind: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"--executor {self.kind!r}: choose one of {', '.join(EXECUTORS)}")
        if self.ray_address is not None and self.kind != "ray":
            raise ConfigError("--ray-address needs --executor ray")

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[dict]:
    """Connect to (or start) Ray for the duration of a command; yields the cluster's resources.

    A cluster this process started is shut down at the end; one it joined keeps running."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        raise ConfigError("--executor ray needs the `ray` package: pip install ray") from None
    started = False
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or None
        if target and target != "auto":
            _reachable(target)  # Ray itself retries an absent head for minutes
        else:
            # the tasks are the command's work: Ray's default worker niceness (15) starves them beside any
            # other process of this machine (seen: 3% of a core beside a zoo build)
            os.environ.setdefault("RAY_worker_niceness", "0")
        try:
            ray.init(address=target, include_dashboard=False, configure_logging=False, log_to_driver=True,
                     logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = target or "a new local cluster"
            raise ConfigError(f"cannot reach Ray at {where} ({str(exc).splitlines()[0] if str(exc) else exc}); "
                              "start a head with `ray start --head` and pass its address (--ray-address "
                              "HOST:6379), or leave --ray-address out to run a local cluster") from None
        started = target is None
    try:
        yield dict(ray.cluster_resources())
    finally:
        if started:
            ray.shutdown()


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse, in seconds, a Ray address whose port nothing listens on."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot reach Ray at {address} ({exc}); start a head with `ray start --head` and pass "
                          "its address (--ray-address HOST:6379), or leave --ray-address out to run a local cluster"
                          ) from None


def task_device(name: str | None) -> tuple[str, float]:
    """Under Ray: the device the tasks use and the GPUs each asks for. Ray hides the GPUs from a task that
    asks for none, so a task on CUDA asks for one; ``auto`` takes CUDA when the cluster has a GPU."""
    import ray

    name = (name or "auto").lower()
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if name == "cuda" and gpus < 1:
        raise ConfigError("--device cuda: the Ray cluster has no GPU (`ray status`); use --device cpu or auto")
    if name == "cuda" or (name == "auto" and gpus >= 1):
        return "cuda", 1.0
    return "cpu", 0.0


def on_task_device(jobs: list[dict], name: str | None) -> tuple[list[dict], float]:
    """Under Ray: ``jobs`` with the device their tasks run on (:func:`task_device`) written where a job names
    one (its ``device`` and its ``settings``' device), and the GPUs each task asks for."""
    device, gpus = task_device(name)
    return [j | ({"device": device} if "device" in j else {})
            | ({"settings": j["settings"] | {"device": device}} if "settings" in j else {}) for j in jobs], gpus


def _run_task(fn: Callable, job):
    """A Ray task: ``fn(job)`` with what the driver's `tracking.setup` sets (a joined cluster's workers do
    not inherit the driver's environment): MLflow's run URLs would reach the driver's stdout."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return fn(job)


def as_completed(fn: Callable, jobs: list, threads: int, workers: int | None = None,
                 gpus: float = 0.0) -> Iterator[tuple[int, object]]:
    """Ray: ``(position, result)`` of each job as it finishes; at most ``workers`` in flight when given;
    each task asks for ``threads`` CPUs and ``gpus`` GPUs. A failing task raises its exception here (ours
    as itself, with its code; the others are cancelled)."""
    import ray

    from .errors import TansError

    remote = ray.remote(num_cpus=max(1, threads), num_gpus=gpus, max_retries=0)(_run_task)
    pending: dict = {}
    queue = list(enumerate(jobs))
    limit = workers or len(jobs)
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                pos, job = queue.pop(0)
                pending[remote.remote(fn, job)] = pos
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pos = pending.pop(ref)
                try:
                    yield pos, ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, TansError):
                        raise exc.cause from None
                    raise exc.as_instanceof_cause() from None
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def parallel_map(fn: Callable, jobs: list, workers: int, executor: Executor | None = None,
                 threads: int = 1, gpus: float = 0.0) -> Iterator:
    """``fn`` over ``jobs``, results in the jobs' order: in this process (local, one worker or one job),
    in ``workers`` spawned processes (local), or as Ray tasks of ``threads`` CPUs each."""
    executor = executor or Executor()
    if executor.is_ray:
        results: dict[int, object] = {}
        nxt = 0
        for pos, res in as_completed(fn, jobs, threads, workers, gpus):
            results[pos] = res
            while nxt in results:
                yield results.pop(nxt)
                nxt += 1
        return
    if workers <= 1 or len(jobs) < 2:
        yield from (fn(j) for j in jobs)
        return
    if _SHARED["pool"] is not None and _SHARED["workers"] == workers:
        yield from _SHARED["pool"].map(fn, jobs)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(fn, jobs)


_SHARED: dict = {"pool": None, "workers": 0}


@contextlib.contextmanager
def shared_pool(workers: int, executor: Executor | None = None) -> Iterator[None]:
    """Inside the block, every local :func:`parallel_map` of ``workers`` processes reuses one pool of spawned
    processes instead of starting its own (each start imports torch and MLflow again: seconds a call, which a
    loop of many short maps, as the benchmark's, pays every time). A no-op for Ray, one worker, or nested."""
    if (executor is not None and executor.is_ray) or workers <= 1 or _SHARED["pool"] is not None:
        yield
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    _SHARED.update(pool=pool, workers=workers)
    try:
        yield
    finally:
        _SHARED.update(pool=None, workers=0)
        pool.shutdown(wait=True, cancel_futures=True)  # a map left on an error: its queued jobs dropped
