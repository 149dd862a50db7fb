"""Depthwise convolutions without the taps that only see padding (zoo/fastconv.py): the same outputs and
gradients as the plain layers, on the real OFA supernet and its subnets."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import DynamicSeparableConv2d
from torch import nn

from tans_registry.zoo.fastconv import (CroppedDepthwiseConv2d, CroppedDynamicSeparableConv2d, crop, depthwise,
                                        install)
from tans_registry.zoo.space import SupernetSpec, build_supernet, extract_subnet, max_arch, min_arch, set_active

SPEC = SupernetSpec(n_classes=5)


def _zero_rings(w: torch.Tensor, c: int) -> torch.Tensor:
    w = w.clone()
    if c:
        w[..., :c, :] = 0
        w[..., -c:, :] = 0
        w[..., :, :c] = 0
        w[..., :, -c:] = 0
    return w


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_the_cut_rings_are_exactly_the_taps_that_never_see_a_pixel(kernel, stride):
    torch.manual_seed(0)
    pad = kernel // 2
    for size in range(1, 10):
        c = crop(kernel, pad, stride, size)
        x, w = torch.randn(2, 4, size, size), torch.randn(4, 1, kernel, kernel)
        plain = F.conv2d(x, w, None, stride, pad, 1, 4)
        # zeroing the cut rings changes nothing ...
        torch.testing.assert_close(F.conv2d(x, _zero_rings(w, c), None, stride, pad, 1, 4), plain, rtol=0, atol=1e-5)
        # ... and one ring more would (the crop is as large as it may be)
        if c < pad:
            assert not torch.allclose(F.conv2d(x, _zero_rings(w, c + 1), None, stride, pad, 1, 4), plain, atol=1e-3)
        # the cut convolution itself equals the plain one, on square and oblong maps
        torch.testing.assert_close(depthwise(x, w, stride, pad, 4), plain, rtol=0, atol=1e-5)
        oblong = torch.randn(2, 4, size, size + 1)
        torch.testing.assert_close(depthwise(oblong, w, stride, pad, 4), F.conv2d(oblong, w, None, stride, pad, 1, 4),
                                   rtol=0, atol=1e-5)
    assert crop(7, 3, 1, 1) == 3 and crop(7, 3, 1, 2) == 2 and crop(7, 3, 1, 4) == 0 and crop(5, 2, 1, 2) == 1


def _plain(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with the plain layer classes back."""
    out = copy.deepcopy(module)
    for m in out.modules():
        if type(m) is CroppedDepthwiseConv2d:
            m.__class__ = nn.Conv2d
        elif type(m) is CroppedDynamicSeparableConv2d:
            m.__class__ = DynamicSeparableConv2d
    return out


def _outputs_and_grads(module: nn.Module, x: torch.Tensor, y: torch.Tensor):
    module.train()
    module.zero_grad()
    loss = F.cross_entropy(module(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]


def test_supernets_and_subnets_use_the_cut_layers_and_compute_what_the_plain_ones_do():
    torch.manual_seed(0)
    supernet = build_supernet(SPEC)
    for m in supernet.modules():  # OFA zeroes some BN gammas at init: make every path carry signal
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    assert sum(type(m) is CroppedDynamicSeparableConv2d for m in supernet.modules()) == 20
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))
    arch = {"ks": [7, 5, 3, 7] * 5, "e": [6, 4, 3, 6] * 5, "d": [4, 3, 2, 4, 3]}
    plain_super = _plain(supernet)
    for net in (supernet, plain_super):
        set_active(net, arch)
    (l1, g1), (l2, g2) = _outputs_and_grads(supernet, x, y), _outputs_and_grads(plain_super, x, y)
    torch.testing.assert_close(l1, l2, rtol=0, atol=1e-5)
    assert len(g1) == len(g2) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g1, g2))

    sub = extract_subnet(supernet, max_arch(SPEC))
    assert sum(type(m) is CroppedDepthwiseConv2d for m in sub.modules()) == 21  # 20 elastic blocks + the first
    plain_sub = _plain(sub)
    (l1, g1), (l2, g2) = _outputs_and_grads(sub, x, y), _outputs_and_grads(plain_sub, x, y)
    torch.testing.assert_close(l1, l2, rtol=0, atol=1e-5)
    assert len(g1) == len(g2) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g1, g2))
    sub.eval()
    plain_sub.eval()
    with torch.no_grad():
        torch.testing.assert_close(sub(x), plain_sub(x), rtol=0, atol=1e-5)
    # same parameters and state-dict keys; the module still pickles (Ray and process pools may send it)
    assert list(sub.state_dict()) == list(plain_sub.state_dict())
    again = pickle.loads(pickle.dumps(sub))  # our own module, round-tripped in memory: no outside pickle
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), sub(x), rtol=0, atol=0)


def test_install_leaves_layers_it_cannot_cut_alone():
    strided = nn.Conv2d(4, 4, 3, stride=(1, 2), padding=1, groups=4, bias=False)
    dense = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    with_bias = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=True)
    install(nn.Sequential(strided, dense, with_bias))
    assert [type(m) for m in (strided, dense, with_bias)] == [nn.Conv2d] * 3


def test_flops_are_counted_on_the_plain_layers_and_the_cut_ones_come_back():
    from tans_registry.zoo.fastconv import plain
    from tans_registry.zoo.measure import count_flops

    sub = extract_subnet(build_supernet(SPEC), max_arch(SPEC))
    classes = [type(m) for m in sub.modules()]
    flops = count_flops(sub, 32)
    assert [type(m) for m in sub.modules()] == classes  # the cut layers are back
    assert flops == count_flops(_plain(sub), 32)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # what the cut layers compute is less
        sub.eval()(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() < flops
    with plain(sub):
        assert not any(type(m) is CroppedDepthwiseConv2d for m in sub.modules())
    assert any(type(m) is CroppedDepthwiseConv2d for m in sub.modules())


def test_the_onnx_export_is_the_plain_graph_with_single_operator_activations_and_matches_at_another_batch(tmp_path):
    import onnx
    import onnxruntime as ort

    from ofa.utils.pytorch_modules import Hsigmoid, Hswish, MyGlobalAvgPool2d, SEModule

    from tans_registry.zoo.onnx import export_onnx

    torch.manual_seed(0)
    sub = extract_subnet(build_supernet(SPEC), max_arch(SPEC)).eval()
    path = export_onnx(sub, torch.zeros(1, 3, 32, 32), tmp_path / "net.onnx", "x", "y")
    assert any(type(m) is CroppedDepthwiseConv2d for m in sub.modules())  # the module keeps its cut layers
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # every batch norm folded into its convolution (a cut kernel, a slice, would leave BatchNormalization
    # nodes and a Mul per 1x1 map), as before the cut layers existed
    assert ops.count("Conv") == 89 and "BatchNormalization" not in ops
    # h-swish, h-sigmoid and every global mean as single operators, not chains of elementwise nodes
    se = sum(type(m) is SEModule for m in sub.modules())
    assert se > 0 and ops.count("HardSigmoid") == se and ops.count("GlobalAveragePool") == se + 1
    assert ops.count("HardSwish") > 0 and not {"ReduceMean", "Div", "Clip"} & set(ops)
    assert all(type(m) in (Hswish, Hsigmoid, SEModule, MyGlobalAvgPool2d) for m in sub.modules()
               if isinstance(m, (Hswish, Hsigmoid, SEModule, MyGlobalAvgPool2d)))  # the module's own layers back
    x = torch.randn(3, 3, 32, 32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), sub(x), rtol=0, atol=1e-4)


def test_plain_depthwise_switch_reaches_a_spawned_process_and_bench_deploy_checks_its_parts():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("from tans_registry.zoo.space import SupernetSpec, build_supernet, extract_subnet, max_arch\n"
            "from tans_registry.zoo.fastconv import CroppedDepthwiseConv2d\n"
            "s = SupernetSpec(n_classes=3); sub = extract_subnet(build_supernet(s), max_arch(s))\n"
            "print(sum(type(m) is CroppedDepthwiseConv2d for m in sub.modules()))")
    env = dict(os.environ, TANS_PLAIN_DEPTHWISE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0"
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_deploy.py"
    bad = subprocess.run([sys.executable, str(script), "--work-dir", ".", "--parts", "onnx,bogus"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--parts takes some of query, onnx, finetune, serve" in bad.stderr
    bad = subprocess.run([sys.executable, str(script), "--work-dir", ".", "--parts", "serve"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "needs finetune" in bad.stderr


def test_the_ofa_activations_switch_exports_the_packages_own_layers_and_bench_serve_checks_its_values(tmp_path,
                                                                                                       monkeypatch):
    """`bench_deploy.py --ofa-activations` sets ``SINGLE_OPERATORS`` off: the graph then holds the package's
    elementwise chains and ReduceMean pairs (the "before" of BENCHMARKS.md); `bench_serve.py` refuses bad
    durations before starting any server."""
    import subprocess
    import sys
    from pathlib import Path

    import onnx

    from tans_registry.zoo import onnx as zoo_onnx

    sub = extract_subnet(build_supernet(SPEC), min_arch(SPEC)).eval()
    monkeypatch.setattr(zoo_onnx, "SINGLE_OPERATORS", False)
    ops = [n.op_type for n in onnx.load(str(zoo_onnx.export_onnx(sub, torch.zeros(1, 3, 32, 32), tmp_path / "a.onnx",
                                                                 "x", "y"))).graph.node]
    assert "ReduceMean" in ops and "HardSwish" not in ops and "GlobalAveragePool" not in ops
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_serve.py"
    bad = subprocess.run([sys.executable, str(script), "models:/x/1", "--work-dir", str(tmp_path), "--seconds", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--seconds must be > 0" in bad.stderr
