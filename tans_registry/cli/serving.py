"""`tans export`, `tans serve`, `tans predict`."""
from __future__ import annotations

import json

import click

from ..export.config import ExportConfig
from .options import INT, as_json_option, common_options, default, from_command_line, given, store_options


@click.command("export")
@common_options
@click.argument("model_uri")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the .onnx file here (with --int8, the int8 graph beside it: <stem>.int8.onnx).")
@click.option("--data", default=None,
              help="Dataset of the parity check (and, with --int8, of the calibration and the accuracy gate) "
                   "[default: the model's own dataset].")
@click.option("--register/--no-register", default=default(ExportConfig, "register"), show_default=True,
              help="Register the export as tans-onnx.<dataset>.")
@click.option("--promote/--no-promote", default=default(ExportConfig, "promote"), show_default=True,
              help="Move tans-onnx.<dataset>@champion to the registered export.")
@click.option("--int8", "int8", is_flag=True, default=default(ExportConfig, "int8"),
              help="Also a static int8 graph (QDQ, per-channel, uint8 activations x 7-bit weights), registered "
                   "with alias int8; the whole export is refused when its test accuracy is more than 1 point below "
                   "the fp32 graph's. 3.5x smaller; on a 2-core AVX2 CPU 1.35-2x faster than fp32 at batch 64 for "
                   "medium and large subnets, about as fast for the smallest and at batch 1: there, it is for "
                   "size (BENCHMARKS.md).")
@click.option("--calib-images", type=INT, default=None,
              help=f"With --int8: training images that calibrate it [default: {default(ExportConfig, 'calib_images')}].")
@click.option("--triton", type=click.Path(file_okay=False), default=None,
              help="Also write a Triton model repository here: <name>/config.pbtxt, <name>/1/model.onnx "
                   "(and <name>_int8 with --int8).")
@click.option("--triton-name", default=None, help="With --triton: the model's name [default: tans_<dataset>].")
@click.option("--triton-max-batch", type=INT, default=None,
              help=f"With --triton: max_batch_size [default: {default(ExportConfig, 'triton_max_batch')}].")
@as_json_option
def export(work_dir, data_dir, model_uri, out, data, register, promote, int8, calib_images, triton, triton_name,
           triton_max_batch, as_json):
    """Export MODEL_URI (a fine-tuned winner or a zoo version) to ONNX, verified against PyTorch.

    The graph takes uint8 images [N, H, W, 3] (preprocessing inside) and returns logits; metadata_props
    hold the classes, input size, mean, std and MODEL_URI. Refused, and nothing registered, unless
    onnx.checker passes and onnxruntime matches PyTorch on at least 64 of the dataset's images (max abs
    logit difference <= 1e-4, or 4x PyTorch's own float32 error against float64 where that is larger; top-1
    agreement 100%).

    --int8 adds a static int8 graph calibrated on the dataset's training images, registered as a further
    version with alias int8 only if its test accuracy is at most 1 point below the fp32 graph's (else the
    whole export is refused and nothing registered). --triton DIR writes a Triton model repository.
    """
    from ..export.stage import export_model

    if not register and promote:
        if from_command_line("promote"):
            raise click.UsageError("--promote needs --register (only a registered export can be champion)")
        promote = False
    if calib_images is not None and not int8:
        raise click.UsageError("--calib-images needs --int8 (it calibrates the int8 graph)")
    if not triton and (triton_name is not None or triton_max_batch is not None):
        raise click.UsageError(f"{'--triton-name' if triton_name is not None else '--triton-max-batch'} needs "
                               "--triton DIR (the Triton model repository to write)")
    rec = export_model(ExportConfig(model_uri=model_uri, out=out, data=data, register=register, promote=promote,
                                    work_dir=work_dir, data_dir=data_dir, int8=int8, triton=triton,
                                    triton_name=triton_name, **given(calib_images=calib_images,
                                                                     triton_max_batch=triton_max_batch)))
    if as_json:
        click.echo(json.dumps(rec.to_dict()))
        return
    click.echo(f"exported {model_uri} -> {rec.path}")
    click.echo(f"parity on {rec.parity_images} images: max abs logit difference {rec.max_abs_diff:.1e}, top-1 "
               f"agreement {rec.top1_agreement:.0%}")
    if rec.model_uri:
        click.echo(f"registered {rec.model_uri}" + (" as champion" if rec.champion else ""))
    if rec.int8_path:
        click.echo(f"int8 (calibrated on {rec.calib_images} training images) -> {rec.int8_path}: test accuracy "
                   f"{rec.int8_test_accuracy:.2%}, fp32 {rec.fp32_test_accuracy:.2%} ({rec.test_images} test images)")
    if rec.int8_model_uri:
        click.echo(f"registered {rec.int8_model_uri} as int8")
    if rec.triton_models:
        click.echo(f"Triton model repository {rec.triton_repository}: {', '.join(rec.triton_models)}")


@click.command("serve")
@store_options
@click.argument("model_uri")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told otherwise).")
@click.option("--port", type=INT, default=8080, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="onnxruntime providers: auto takes CUDA when available, then the CPU.")
@click.option("--max-batch", type=INT, default=64, show_default=True, help="Images merged into one session call.")
@click.option("--max-body-mb", type=float, default=16.0, show_default=True, help="Larger request bodies get 413.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="A file holding the bearer token every request but /v2/health/* must carry "
                   "(`Authorization: Bearer <token>`) [env TANS_SERVE_TOKEN_FILE, or the token itself in "
                   "TANS_SERVE_TOKEN; never on the command line]. Required beyond loopback.")
@click.option("--insecure-no-auth", is_flag=True, default=False,
              help="Serve beyond loopback without a token: anyone who reaches the port can call the model.")
def serve(work_dir, model_uri, host, port, device, max_batch, max_body_mb, token_file, insecure_no_auth):
    """Serve MODEL_URI (an ONNX export, e.g. models:/tans-onnx.<dataset>@champion, or an .onnx file).

    Endpoints: GET /ping, POST /invocations ({"inputs": images}, as `mlflow models serve`), and the Open
    Inference Protocol v2 of KServe and Triton: GET /v2/health/live, /v2/health/ready,
    /v2/models/{name}, POST /v2/models/{name}/infer. Images are uint8 [N, H, W, 3].

    On loopback (the default) no token is asked for unless one is given; on any other --host a token
    (--token-file, TANS_SERVE_TOKEN_FILE or TANS_SERVE_TOKEN) or --insecure-no-auth is required. A
    registered model whose files differ from their sha256 recorded at registration is refused.
    """
    import os

    from ..errors import ConfigError
    from ..serve.app import ServeConfig, make_server

    token = None
    path = token_file or os.environ.get("TANS_SERVE_TOKEN_FILE")
    if path:
        try:
            token = open(path).read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path} ({exc.strerror}): pass a readable file") from None
        if not token:
            raise ConfigError(f"the token file {path} is empty: write the token into it")
    elif os.environ.get("TANS_SERVE_TOKEN"):
        token = os.environ["TANS_SERVE_TOKEN"]
    if token is not None and insecure_no_auth:
        raise ConfigError("--insecure-no-auth and a token (--token-file, TANS_SERVE_TOKEN_FILE or TANS_SERVE_TOKEN) "
                          "contradict each other: drop one")
    server = make_server(ServeConfig(model_uri=model_uri, host=host, port=port, device=device, max_batch=max_batch,
                                     max_body_mb=max_body_mb, work_dir=work_dir, token=token,
                                     insecure_no_auth=insecure_no_auth))
    h, p = server.server_address[:2]
    m = server.model
    click.echo(f"serving {m.name} ({len(m.classes)} classes, {m.input_size}x{m.input_size} uint8 images) on "
               f"http://{h}:{p} with {', '.join(m.providers)}; /invocations and /v2/models/{m.name}/infer"
               + ("; bearer token required" if token else "; no token asked for"), err=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    if server.stopped_by:
        click.echo(f"stopped ({server.stopped_by}): the requests in flight were answered", err=True)


@click.command("predict")
@store_options
@click.argument("model_uri")
@click.argument("images", nargs=-1, required=True)
@click.option("--top", type=INT, default=3, show_default=True, help="Classes listed per image.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@as_json_option
def predict(work_dir, model_uri, images, top, device, as_json):
    """Classify IMAGES (files, or folders searched recursively) with MODEL_URI (an ONNX export)."""
    from ..serve.predict import PredictConfig
    from ..serve.predict import predict as run_predict

    out = run_predict(PredictConfig(model_uri=model_uri, paths=tuple(images), top=top, device=device,
                                    work_dir=work_dir))
    if as_json:
        click.echo(json.dumps(out))
        return
    for r in out["predictions"]:
        click.echo(f"{r['path']}\t{r['class']}\t{r['probability']:.3f}")
    for s in out["skipped"]:
        click.echo(f"skipped {s['path']}: {s['why']}", err=True)
