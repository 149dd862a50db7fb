"""`tans serve` against `mlflow models serve --env-manager local`, side by side in one run, on the same
registered ONNX model; then a soak of `tans serve`.

Both servers run on loopback as a user starts them (their defaults: `tans serve` one onnxruntime session
with its request batcher; `mlflow models serve` one uvicorn worker over MLflow's onnx flavour). For each
server, with 1 and 8 concurrent clients (threads here, each on one keep-alive connection) and single images
and batches of 16 per request (``POST /invocations``, ``{"inputs": images}``, random uint8 pixels): p50
and p95 request latency, requests/s, images/s and errors over ``--seconds`` a row, after a warm-up. The
soak keeps 8 clients sending single images to `tans serve` for ``--soak-seconds`` and samples the
server's resident memory (``/proc/<pid>/status``) every 10 s: it passes with no error and the last
minute's median memory within 10% of the first minute's.

    .venv/bin/python scripts/bench_serve.py --work-dir W models:/tans-onnx.chinese_mnist@champion
        [--seconds 10] [--soak-seconds 600] [--json]

Needs a work dir whose registry holds the ONNX export (the README's main job makes
``tans-onnx.chinese_mnist@champion``). Prints a markdown table (or ``--json``).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tans_registry import tracking  # noqa: E402
from tans_registry.serve.model import OnnxModel  # noqa: E402

ROWS = ((1, 1), (8, 1), (1, 16), (8, 16))  # (clients, images per request)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, seconds: float, log: Path) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server on port {port} did not answer /ping within {seconds:.0f} s")


def start(kind: str, model_uri: str, work: Path, env: dict, logs: Path) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    bin_dir = Path(sys.executable).parent
    if kind == "tans serve":
        cmd = [str(bin_dir / "tans"), "serve", model_uri, "--port", str(port), "--work-dir", str(work)]
    else:
        cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]
    log = logs / f"{kind.replace(' ', '-')}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    wait_ready(port, proc, 180, log)
    return proc, port, log


def stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def load(port: int, bodies: list[bytes], clients: int, seconds: float):
    """``clients`` threads posting ``bodies`` in turn for ``seconds``: latencies (s) and errors."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, bad, i = [], [], k
        while time.perf_counter() < end:
            body = bodies[i % len(bodies)]
            i += clients
            t = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200 or b"predictions" not in data[:40]:
                    bad.append(f"{resp.status}: {data[:120]!r}")
            except (OSError, http.client.HTTPException) as exc:
                bad.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            mine.append(time.perf_counter() - t)
        conn.close()
        with lock:
            lat.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors, time.perf_counter() - t0


def row(lat: list[float], errors: list[str], wall: float, clients: int, batch: int) -> dict:
    ms = sorted(x * 1000 for x in lat)
    pick = (lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]) if ms else (lambda q: float("nan"))
    return {"clients": clients, "batch": batch, "requests": len(lat), "errors": len(errors),
            "first_error": errors[0] if errors else None, "p50_ms": pick(0.50), "p95_ms": pick(0.95),
            "requests_per_s": len(lat) / wall, "images_per_s": len(lat) * batch / wall}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(port: int, pid: int, bodies: list[bytes], seconds: float) -> dict:
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    result: dict = {}

    def run() -> None:
        result["lat"], result["errors"], result["wall"] = load(port, bodies, 8, seconds)
        done.set()

    worker = threading.Thread(target=run)
    t0 = time.perf_counter()
    worker.start()
    while not done.wait(10.0):
        samples.append((time.perf_counter() - t0, rss_mb(pid)))
    samples.append((time.perf_counter() - t0, rss_mb(pid)))
    first = [m for t, m in samples if t <= 60] or [samples[0][1]]
    last = [m for t, m in samples if t >= samples[-1][0] - 60] or [samples[-1][1]]
    a, b = statistics.median(first), statistics.median(last)
    out = row(result["lat"], result["errors"], result["wall"], 8, 1)
    return out | {"seconds": seconds, "rss_first_minute_mb": a, "rss_last_minute_mb": b, "rss_change": b / a - 1,
                  "rss_samples_mb": [round(m, 1) for _, m in samples],
                  "passed": out["errors"] == 0 and abs(b / a - 1) <= 0.10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_uri", help="a registered ONNX export, e.g. models:/tans-onnx.chinese_mnist@champion")
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds a row (after 2 s of warm-up)")
    ap.add_argument("--soak-seconds", type=float, default=600.0, help="the soak of tans serve (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.seconds <= 0 or args.soak_seconds < 0:
        ap.error("--seconds must be > 0 and --soak-seconds >= 0")
    work = Path(args.work_dir).resolve()
    _, uri = tracking.setup(str(work))
    size = OnnxModel.load(args.model_uri, device="cpu").input_size  # also: the URI is an export, or a clear error
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "NO_PROXY": "127.0.0.1,localhost",
        # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH (as when activated)
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    rng = np.random.default_rng(0)
    bodies = {b: [json.dumps({"inputs": rng.integers(0, 256, (b, size, size, 3)).tolist()}).encode()
                  for _ in range(8)] for b in (1, 16)}
    logs = work / "bench-serve-logs"
    logs.mkdir(exist_ok=True)
    res: dict = {"model": args.model_uri, "machine": f"{platform.processor() or platform.machine()}, "
                                                     f"{os.cpu_count()} cores", "seconds_per_row": args.seconds,
                 "servers": {}}
    t_all = time.time()
    for kind in ("tans serve", "mlflow models serve"):
        proc, port, _ = start(kind, args.model_uri, work, env, logs)
        try:
            rows = []
            for clients, batch in ROWS:
                load(port, bodies[batch], clients, 2.0)  # warm-up
                rows.append(row(*load(port, bodies[batch], clients, args.seconds), clients, batch))
            res["servers"][kind] = rows
            if kind == "tans serve" and args.soak_seconds:
                res["soak"] = soak(port, proc.pid, bodies[1], args.soak_seconds)
        finally:
            stop(proc)
    res["wall_s"] = time.time() - t_all
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print("| server | clients | images a request | requests | errors | p50 ms | p95 ms | requests/s | images/s |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for kind, rows in res["servers"].items():
        for r in rows:
            print(f"| {kind} | {r['clients']} | {r['batch']} | {r['requests']:,} | {r['errors']} | {r['p50_ms']:.1f} | "
                  f"{r['p95_ms']:.1f} | {r['requests_per_s']:.0f} | {r['images_per_s']:.0f} |")
    if "soak" in res:
        s = res["soak"]
        print(f"soak: {s['seconds']:.0f} s at 8 clients, {s['requests']:,} requests, {s['errors']} errors, p95 "
              f"{s['p95_ms']:.1f} ms; memory {s['rss_first_minute_mb']:.0f} -> {s['rss_last_minute_mb']:.0f} MB "
              f"({s['rss_change']:+.1%}): {'passed' if s['passed'] else 'FAILED'}")
    print(f"whole run {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
