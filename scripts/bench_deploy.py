"""Benchmark of the deployment path, measured side by side in one run (BENCHMARKS.md, "Deployment"):

1. query time without fine-tuning (embed + search + re-rank) for 200 query images against a 14,000-network
   index (the work dir's real index, its rows repeated with jittered model embeddings), median of 20;
   and LogME's re-rank of the shortlist on the real index (its forward passes and seconds);
2. onnxruntime (CPU provider) against PyTorch eager, with the in-graph preprocessing, at batch 1 and 64,
   for the smallest, a medium and the largest subnet (random weights), median after warm-up, with each
   one's GFLOP/s beside this CPU's measured peak (a 2048 x 2048 fp32 matmul at the same thread count), and
   the product's int8 graph of each (``export/int8.py``, calibrated on random images: speed, not accuracy);
3. ``tans serve`` on loopback: p50/p95 request latency and throughput with 1 and 8 concurrent clients
   sending one image per request;
4. the fine-tuning time per candidate (a real query with ``--finetune 3`` on the query dataset).

Needs a work dir with a registered zoo, champion encoders and an index (the README's main job makes one).
Step 4 is a real query: it registers a fine-tuned version and an ONNX version in that work dir's registry
(and moves their champions when they are better), like any `tans query`.

    .venv/bin/python scripts/bench_deploy.py --work-dir . --query chinese_mnist [--json] [--parts onnx,serve]
        [--plain-depthwise] [--ofa-activations]

``--parts`` runs some of the four (query, onnx, finetune, serve; serve needs finetune's export);
``--plain-depthwise`` builds the subnets with the plain depthwise layers (``zoo/fastconv.py`` off), for a
before/after comparison in one checkout; ``--ofa-activations`` exports h-swish, h-sigmoid and the global means
as the ``ofa`` package writes them (before the export used single operators, ``zoo/onnx.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tans_registry import tracking  # noqa: E402
from tans_registry.data import load_dataset  # noqa: E402
from tans_registry.encoders.backbone import extract_features  # noqa: E402
from tans_registry.export.int8 import quantize  # noqa: E402
from tans_registry.export.onnx import WithPreprocessing  # noqa: E402
from tans_registry.finetune.config import FinetuneSettings, QueryConfig  # noqa: E402
from tans_registry.finetune.pipeline import query  # noqa: E402
from tans_registry.registry.index import load_index  # noqa: E402
from tans_registry.retrieval.config import RankConfig  # noqa: E402
from tans_registry.retrieval.embed import load_champion  # noqa: E402
from tans_registry.retrieval.search import rank, rank_candidates  # noqa: E402
from tans_registry.zoo.measure import count_flops  # noqa: E402
from tans_registry.zoo.onnx import export_onnx, session  # noqa: E402
from tans_registry.zoo.space import SupernetSpec, build_supernet, extract_subnet, max_arch, min_arch, sample_archs  # noqa: E402

PARTS = ("query", "onnx", "finetune", "serve")
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def median_ms(fn, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def big_index(idx, rows: int, seed: int = 0):
    """``idx`` repeated to ``rows`` rows, model embeddings jittered (so the top-k is not all ties)."""
    reps = -(-rows // len(idx))
    take = lambda a: np.concatenate([a] * reps)[:rows]  # noqa: E731
    rng = np.random.default_rng(seed)
    emb = take(idx.model_emb) + 0.05 * rng.standard_normal((rows, idx.model_emb.shape[1])).astype(np.float32)
    return replace(idx, names=take(idx.names), versions=np.arange(rows, dtype=np.int64) + 1,
                   groups=np.char.add(take(idx.groups), (np.arange(rows) // len(idx)).astype(str)),
                   datasets=take(idx.datasets), accuracy=take(idx.accuracy), n_params=take(idx.n_params),
                   flops=take(idx.flops), model_emb=emb, dataset_emb=take(idx.dataset_emb), topology=take(idx.topology),
                   arch_hashes=take(idx.arch_hashes), archs=take(idx.archs), n_classes=take(idx.n_classes),
                   latency_ms=take(idx.latency_ms), key="bench")


def bench_query(work: Path, data: str, data_dir, rows: int) -> dict:
    tracking.setup(work)
    champ = load_champion()
    idx, _ = load_index(work)
    big = big_index(idx, rows)
    ds = load_dataset(data, data_dir=data_dir)
    x200 = ds.x_train[np.random.default_rng(0).permutation(len(ds.x_train))[:200]]
    cfg = RankConfig(data=data, top_k=5, rerank="predictor", work_dir=str(work), data_dir=data_dir,
                     log_run=False)  # the predictor re-rank these timings name (not the default, none)

    def embed():
        feats = extract_features(champ.backbone, x200)
        with torch.no_grad():
            return champ.encoders.query(torch.from_numpy(feats)[None])[0].numpy()

    q = embed()
    t_embed = median_ms(embed, 20)
    t_search = median_ms(lambda: big.search(q, k=100, dataset_weight=champ.encoders.cfg.dataset_weight), 20)
    t_rank = median_ms(lambda: rank_candidates(champ, big, q, cfg), 20)  # search + predictor re-rank
    t_rerank = float(np.median([rank_candidates(champ, big, q, cfg)[2]["rerank"] * 1000 for _ in range(20)]))
    t0 = time.perf_counter()
    logme_rec = rank(replace(cfg, rerank="logme", top_k=10))
    t_logme = time.perf_counter() - t0
    return {"index_rows": len(big), "query_images": len(x200), "embed_ms": t_embed, "search_ms": t_search,
            "rerank_ms": t_rerank, "search_and_rerank_ms": t_rank, "total_ms": t_embed + t_rank,
            "logme": {"index_rows": len(idx), "forward_passes": logme_rec.rerank_forward_passes,
                      "rank_seconds": t_logme, "rerank_seconds": logme_rec.seconds["rerank"]}}


def peak_gflops(n: int = 2048, runs: int = 5) -> float:
    """This CPU's measured fp32 peak at the torch thread count: GFLOP/s of an n x n matmul (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / median_ms(lambda: a @ b, runs) / 1e6


def bench_onnx(tmp: Path) -> list[dict]:
    spec = SupernetSpec(n_classes=10)
    net = build_supernet(spec)
    archs = {"smallest": min_arch(spec), "medium": sample_archs(spec, 3, seed=0)[1], "largest": max_arch(spec)}
    out = []
    for name, arch in archs.items():
        sub = extract_subnet(net, arch).eval()
        module = WithPreprocessing(sub, (0.5,) * 3, (0.5,) * 3).eval()
        path = export_onnx(module, torch.zeros(1, 32, 32, 3, dtype=torch.uint8), tmp / f"{name}.onnx", "images",
                           ("logits", "probabilities"))
        sess = session(path, device="cpu", threads=torch.get_num_threads())
        raw = export_onnx(sub, torch.zeros(1, 3, 32, 32), tmp / f"{name}-raw.onnx", "x", "y")  # no preprocessing
        raw_sess = session(raw, device="cpu", threads=torch.get_num_threads())
        calib = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
        q8 = quantize(path, tmp / f"{name}.int8.onnx", calib)  # the product's int8 (speed only: random weights)
        q8_sess = session(q8, device="cpu", threads=torch.get_num_threads())
        params = sum(p.numel() for p in module.parameters())
        flops = count_flops(sub, 32)  # per image, 2 per MAC, every tap (the architecture's, as tagged)
        for batch in (1, 64):
            x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
            xt = torch.from_numpy(x)
            n = 50 if batch == 1 else 15
            with torch.no_grad():
                eager = median_ms(lambda: module(xt), n)
            ort = median_ms(lambda: sess.run(["logits"], {"images": x}), n)
            int8 = median_ms(lambda: q8_sess.run(["logits"], {"images": x}), n)
            xf = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
            xft = torch.from_numpy(xf)
            with torch.no_grad():
                eager_raw = median_ms(lambda: sub(xft), n)
            ort_raw = median_ms(lambda: raw_sess.run(["y"], {"x": xf}), n)
            out.append({"subnet": name, "params": params, "flops": flops, "batch": batch, "torch_ms": eager,
                        "onnxruntime_ms": ort, "speedup": eager / ort, "int8_ms": int8, "int8_vs_fp32": ort / int8,
                        "torch_gflops": flops * batch / eager / 1e6, "onnxruntime_gflops": flops * batch / ort / 1e6, "torch_raw_ms": eager_raw, "onnxruntime_raw_ms": ort_raw,
                        "speedup_raw": eager_raw / ort_raw})
    return out


def bench_serve(work: Path, model_uri: str, x: np.ndarray, seconds: float) -> list[dict]:
    from tans_registry.serve.app import ServeConfig, make_server

    server = make_server(ServeConfig(model_uri=model_uri, port=0, work_dir=str(work), device="auto"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/invocations"
    bodies = [json.dumps({"inputs": x[i:i + 1].tolist()}).encode() for i in range(len(x))]
    out = []
    try:
        for clients in (1, 8):
            lat: list[float] = []
            stop = time.perf_counter() + seconds
            lock = threading.Lock()

            def client(k):
                i = k
                while time.perf_counter() < stop:
                    req = urllib.request.Request(url, data=bodies[i % len(bodies)],
                                                 headers={"Content-Type": "application/json"})
                    t = time.perf_counter()
                    with _HTTP.open(req, timeout=60) as resp:
                        resp.read()
                    with lock:
                        lat.append((time.perf_counter() - t) * 1000)
                    i += clients

            batches0 = server.batcher.batches
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            out.append({"clients": clients, "requests": len(lat), "p50_ms": float(np.percentile(lat, 50)),
                        "p95_ms": float(np.percentile(lat, 95)), "requests_per_s": len(lat) / wall,
                        "images_per_session_call": len(lat) / max(1, server.batcher.batches - batches0),
                        "providers": server.model.providers})
    finally:
        server.shutdown()
        server.server_close()
    return out


def bench_finetune(work: Path, data: str, data_dir, epochs: float) -> dict:
    rec = query(QueryConfig(data=data, top_k=3, finetune=3, settings=FinetuneSettings(epochs=epochs),
                            work_dir=str(work), data_dir=data_dir))
    rows = [{"rank": f.rank, "parent": f.parent, "seconds": f.seconds, "epochs": f.epochs, "steps": f.steps,
             "s_per_epoch": f.seconds / max(f.epochs, 1e-9), "val_accuracy": f.val_accuracy,
             "test_accuracy": f.test_accuracy, "stopped_early": f.stopped_early} for f in rec.finetuned]
    return {"candidates": rows, "finetune_wall_s": rec.timings["finetune"], "export_s": rec.timings.get("export"),
            "winner": rec.winner["model_uri"], "onnx": rec.onnx.model_uri if rec.onnx else None,
            "onnx_max_abs_diff": rec.onnx.max_abs_diff if rec.onnx else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--query", default="chinese_mnist")
    ap.add_argument("--rows", type=int, default=14_000)
    ap.add_argument("--serve-seconds", type=float, default=10.0)
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"which of {', '.join(PARTS)} to run (comma-separated)")
    ap.add_argument("--plain-depthwise", action="store_true",
                    help="subnets with the plain depthwise layers (every kernel tap computed), to compare")
    ap.add_argument("--ofa-activations", action="store_true",
                    help="export h-swish, h-sigmoid and the global means as the ofa package writes them (chains of "
                         "elementwise nodes, two ReduceMean a pool), to compare with the single operators")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        ap.error(f"--parts takes some of {', '.join(PARTS)}; got {args.parts!r}")
    if "serve" in parts and "finetune" not in parts:
        ap.error("--parts serve needs finetune too (it serves the query's ONNX export)")
    if args.plain_depthwise:
        from tans_registry.zoo.fastconv import use_plain_layers

        use_plain_layers()  # the worker processes it spawns too
    work = Path(args.work_dir).resolve()
    t0 = time.time()
    res = {"torch_threads": torch.get_num_threads(), "plain_depthwise": args.plain_depthwise, "parts": parts}
    if "query" in parts:
        res["query"] = bench_query(work, args.query, args.data_dir, args.rows)
    import tempfile

    if "onnx" in parts:
        if args.ofa_activations:
            from tans_registry.zoo import onnx as zoo_onnx

            zoo_onnx.SINGLE_OPERATORS = False
        res["ofa_activations"] = args.ofa_activations
        with tempfile.TemporaryDirectory() as tmp:
            res["onnx_vs_torch"] = bench_onnx(Path(tmp))
        res["peak_gflops"] = peak_gflops()
    if "finetune" in parts:
        res["finetune"] = bench_finetune(work, args.query, args.data_dir, args.epochs)
    if "serve" in parts:
        x = load_dataset(args.query, data_dir=args.data_dir).x_test[:64]
        res["serve"] = bench_serve(work, res["finetune"]["onnx"], x, args.serve_seconds)
    res["wall_s"] = time.time() - t0
    if args.json:
        print(json.dumps(res, indent=1))
        return
    if "query" in parts:
        _print_query(res["query"])
    if "onnx" in parts:
        _print_onnx(res["onnx_vs_torch"])
        print(f"peak: {res['peak_gflops']:.1f} GFLOP/s (a 2048 x 2048 fp32 matmul, {res['torch_threads']} threads)")
    if "serve" in parts:
        _print_serve(res["serve"])
    if "finetune" in parts:
        _print_finetune(res["finetune"])
    print(f"whole run {res['wall_s']:.0f} s")


def _print_query(q: dict) -> None:
    print(f"query ({q['query_images']} images, {q['index_rows']:,}-network index): embed {q['embed_ms']:.1f} ms, "
          f"search {q['search_ms']:.1f} ms, search + re-rank {q['search_and_rerank_ms']:.1f} ms, "
          f"total {q['total_ms']:.1f} ms")
    lm = q["logme"]
    print(f"LogME re-rank ({lm['index_rows']}-network index): {lm['forward_passes']} forward passes, "
          f"{lm['rerank_seconds']:.1f} s (whole rank {lm['rank_seconds']:.1f} s)")


def _print_onnx(rows: list[dict]) -> None:
    print("| subnet | params | MFLOPs | batch | PyTorch eager ms | onnxruntime ms | speed-up | GFLOP/s eager / "
          "onnxruntime | without preprocessing: eager / onnxruntime ms | speed-up | int8 ms | int8 / fp32 speed |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['subnet']} | {r['params']:,} | {r['flops'] / 1e6:.1f} | {r['batch']} | {r['torch_ms']:.2f} | "
              f"{r['onnxruntime_ms']:.2f} | {r['speedup']:.2f}x | {r['torch_gflops']:.1f} / {r['onnxruntime_gflops']:.1f} | "
              f"{r['torch_raw_ms']:.2f} / {r['onnxruntime_raw_ms']:.2f} | {r['speedup_raw']:.2f}x | {r['int8_ms']:.2f} | "
              f"{r['int8_vs_fp32']:.2f}x |")


def _print_serve(rows: list[dict]) -> None:
    print("| clients | requests | p50 ms | p95 ms | requests/s | images per session call |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['requests_per_s']:.0f} | "
              f"{r['images_per_session_call']:.1f} |")


def _print_finetune(f: dict) -> None:
    print("| rank | parent | seconds | epochs | s/epoch | validation | test | stopped early |\n|---|---|---|---|---|---|---|---|")
    for r in f["candidates"]:
        print(f"| {r['rank']} | {r['parent']} | {r['seconds']:.1f} | {r['epochs']:g} | {r['s_per_epoch']:.1f} | "
              f"{r['val_accuracy']:.3f} | {r['test_accuracy']:.3f} | {r['stopped_early']} |")
    print(f"fine-tuning wall {f['finetune_wall_s']:.1f} s (candidates in parallel), export {f['export_s']:.1f} s; "
          f"winner {f['winner']}, {f['onnx']} (max abs diff {f['onnx_max_abs_diff']:.1e})")


if __name__ == "__main__":
    main()
