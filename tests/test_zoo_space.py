"""The OFA search space: topology encoding, subnet sampling, FLOPs/params, materialization."""
import numpy as np
import pytest
import torch
from torch import nn

from tans_registry.zoo.measure import (accuracy, count_flops, functional_embedding, n_params,
                                       recalibrate_bn)
from tans_registry.zoo.space import (SupernetSpec, arch_hash, bn_state, build_supernet, extract_subnet,
                                     materialize, max_arch, min_arch, sample_archs, set_active, topology,
                                     validate_arch)
from tans_registry.zoo.tensors import to_tensor

SPEC = SupernetSpec(n_classes=5)


@pytest.fixture(scope="module")
def trained_supernet():
    """A supernet with non-trivial weights and BN statistics (a few sandwich steps on noise)."""
    torch.manual_seed(0)
    net = build_supernet(SPEC)
    for m in net.modules():  # OFA zeroes some BN gammas at init; make every path carry signal
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 5, (16,))
    net.train()
    for arch in sample_archs(SPEC, 4, seed=1):
        set_active(net, arch)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def test_topology_has_45_values_and_is_depth_masked():
    arch = {"ks": [7] * 20, "e": [6] * 20, "d": [2, 3, 4, 2, 2]}
    topo = topology(arch)
    assert len(topo) == 45
    assert topo[40:] == [2, 3, 4, 2, 2]
    # stage 0 keeps blocks 0-1, masks 2-3; stage 2 keeps all four
    assert topo[0:4] == [7, 7, 0, 0] and topo[20:24] == [6, 6, 0, 0]
    assert topo[8:12] == [7, 7, 7, 7]
    # configs differing only in inactive blocks are the same network
    other = {"ks": [7] * 20, "e": [6] * 20, "d": [2, 3, 4, 2, 2]}
    other["ks"][3] = 3
    other["e"][3] = 3
    assert topology(other) == topo and arch_hash(other) == arch_hash(arch)
    other["ks"][0] = 3  # an active block: a different network
    assert arch_hash(other) != arch_hash(arch)


def test_sample_archs_spreads_sizes_deterministically():
    archs = sample_archs(SPEC, 12, seed=3)
    assert archs == sample_archs(SPEC, 12, seed=3)
    assert archs != sample_archs(SPEC, 12, seed=4)
    assert archs[0] == min_arch(SPEC) and archs[-1] == max_arch(SPEC)
    assert len({arch_hash(a) for a in archs}) == 12
    sizes = [sum(topology(a)) for a in archs]
    # the size knob rises along the list: the middle third is between the ends
    assert sizes[0] < np.mean(sizes[4:8]) < sizes[-1]
    for a in archs:
        validate_arch(a, SPEC)


def test_validate_arch_rejects_configs_outside_the_space():
    bad = max_arch(SPEC)
    bad["ks"][0] = 9
    with pytest.raises(ValueError, match="outside the space"):
        validate_arch(bad, SPEC)
    with pytest.raises(ValueError, match="20 kernel sizes"):
        validate_arch({"ks": [3], "e": [3] * 20, "d": [2] * 5}, SPEC)


def test_flop_counter_matches_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    conv_macs = 8 * 3 * 9 * 32 * 32
    fc_macs = 8 * 32 * 32 * 10
    assert count_flops(net, 32) == 2 * (conv_macs + fc_macs)
    assert n_params(net) == 8 * 3 * 9 + 8 * 32 * 32 * 10 + 10


def test_params_and_flops_grow_with_the_subnet(trained_supernet):
    small = extract_subnet(trained_supernet, min_arch(SPEC))
    large = extract_subnet(trained_supernet, max_arch(SPEC))
    assert n_params(small) < n_params(large)
    assert count_flops(small, 32) < count_flops(large, 32)
    # the largest subnet holds every supernet weight but the elastic-kernel transforms
    assert n_params(large) <= n_params(trained_supernet)


def test_materialized_subnet_reproduces_the_supernet(trained_supernet):
    state = {k: v.clone() for k, v in trained_supernet.state_dict().items()}
    x = torch.randn(6, 3, 32, 32)
    for arch in sample_archs(SPEC, 3, seed=7):
        set_active(trained_supernet, arch)
        trained_supernet.eval()
        with torch.no_grad():
            expected = trained_supernet(x)
            got = materialize(SPEC, state, arch)(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_materialized_subnet_keeps_its_recalibrated_statistics(trained_supernet):
    state = trained_supernet.state_dict()
    arch = sample_archs(SPEC, 5, seed=2)[2]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    sub = extract_subnet(trained_supernet, arch)
    before = bn_state(sub)
    recalibrate_bn(sub, images, (0.5,) * 3, (0.5,) * 3, batch_size=16)
    after = bn_state(sub)
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    rebuilt = materialize(SPEC, state, arch, bn=after)
    x = to_tensor(images[:8])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), sub.eval()(x), rtol=1e-4, atol=1e-5)
    labels = rng.integers(0, 5, size=40)
    assert accuracy(rebuilt, images, labels, (0.5,) * 3, (0.5,) * 3) == accuracy(sub, images, labels, (0.5,) * 3, (0.5,) * 3)


def test_recalibration_joins_a_last_batch_of_one_image_to_the_batch_before(trained_supernet):
    """17 images in batches of 16 left a last batch of one, which batch norm cannot train on (the bench zoo's
    build died on such a group): it joins the batch before, so the estimate is that of one batch of 17."""
    arch = sample_archs(SPEC, 5, seed=2)[3]
    images = np.random.default_rng(4).integers(0, 256, size=(17, 32, 32, 3), dtype=np.uint8)
    sub = extract_subnet(trained_supernet, arch)
    recalibrate_bn(sub, images, (0.5,) * 3, (0.5,) * 3, batch_size=16)
    split = bn_state(sub)
    recalibrate_bn(sub, images, (0.5,) * 3, (0.5,) * 3, batch_size=17)
    whole = bn_state(sub)
    assert all(torch.allclose(split[k], whole[k], atol=1e-6) for k in split)
    recalibrate_bn(sub, images[:16], (0.5,) * 3, (0.5,) * 3, batch_size=8)  # no remainder: two batches of 8
    assert any(not torch.allclose(bn_state(sub)[k], whole[k]) for k in whole)

def test_functional_embedding_is_seeded_and_network_specific(trained_supernet):
    a = extract_subnet(trained_supernet, min_arch(SPEC))
    b = extract_subnet(trained_supernet, max_arch(SPEC))
    images = np.random.default_rng(1).integers(0, 256, size=(32, 32, 32, 3), dtype=np.uint8)
    for sub in (a, b):  # as in the build: statistics first, then the embedding
        recalibrate_bn(sub, images, (0.5,) * 3, (0.5,) * 3)
    ea = functional_embedding(a, 32, seed=777)
    assert ea.shape == (1280,) and ea.dtype == np.float32
    np.testing.assert_array_equal(ea, functional_embedding(a, 32, seed=777))
    assert not np.allclose(ea, functional_embedding(a, 32, seed=778), rtol=1e-3, atol=0)
    assert not np.allclose(ea, functional_embedding(b, 32, seed=777), rtol=1e-3, atol=0)


def test_gradient_clipping_bounds_each_update():
    """A clipped step moves the weights by at most lr * clip * (1 + momentum): one Nesterov step on a fresh
    buffer applies (1 + momentum) * gradient; no weight decay."""
    from tans_registry.zoo.tensors import DEFAULT_MEAN, DEFAULT_STD
    from tans_registry.zoo.profiles import TrainConfig
    from tans_registry.zoo.train import train_supernet

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), rng.integers(0, 5, 16)

    def moved(clip):
        torch.manual_seed(0)
        net = build_supernet(SPEC)
        before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        cfg = TrainConfig(epochs=1, batch_size=64, lr=0.5, momentum=0.9, weight_decay=0.0, warmup_fraction=1.0,
                          crop_pad=0, eval_images=0, grad_clip=clip)
        train_supernet(net, SPEC, x, y, cfg, DEFAULT_MEAN, DEFAULT_STD)
        return float((torch.cat([p.detach().flatten() for p in net.parameters()]) - before).norm())

    bound = 0.5 * 1e-3 * 1.9  # one step (the cosine schedule starts at lr)
    assert moved(1e-3) <= bound * 1.001
    assert moved(0.0) > 10 * bound  # unclipped, the same step is much larger


def test_color_jitter_changes_contrast_and_brightness_per_image_only():
    from tans_registry.zoo.tensors import color_jitter

    rng = np.random.default_rng(0)
    x = rng.integers(60, 200, (8, 32, 32, 3), dtype=np.uint8)
    assert color_jitter(x, 0.0, rng) is x  # off: untouched, and no random numbers drawn
    out = color_jitter(x, 0.4, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert np.array_equal(out, color_jitter(x, 0.4, np.random.default_rng(1)))  # seeded
    f, g = x.astype(np.float64), out.astype(np.float64)
    for i in range(len(x)):
        # an affine map of each image's pixels (channels alike, hue kept): a correlation of 1 where nothing clips
        inside = (g[i] > 0) & (g[i] < 255)
        assert inside.mean() > 0.5
        assert np.corrcoef(f[i][inside], g[i][inside])[0, 1] > 0.999
    means = g.mean(axis=(1, 2, 3)) - f.mean(axis=(1, 2, 3))
    assert np.ptp(means) > 5  # brightness differs between images


def test_long_schedules_train_with_jitter_and_label_smoothing():
    """The same step floor, with and without the long-schedule regularisation: different weights."""
    from tans_registry.zoo.tensors import DEFAULT_MEAN, DEFAULT_STD
    from tans_registry.zoo.profiles import TrainConfig
    from tans_registry.zoo.train import train_supernet

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), rng.integers(0, 5, 16)

    def weights(**kw):
        torch.manual_seed(0)
        net = build_supernet(SPEC)
        cfg = TrainConfig(epochs=1, batch_size=8, warmup_fraction=1.0, eval_images=0, steps_per_class=1, **kw)
        out = train_supernet(net, SPEC, x, y, cfg, DEFAULT_MEAN, DEFAULT_STD)
        assert out["steps"] == 5 and out["long_schedule"] == 1.0  # 5 classes x 1 > 1 pass of 2 steps
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    plain = weights()
    assert torch.equal(plain, weights())
    assert not torch.allclose(plain, weights(long_jitter=0.4))
    assert not torch.allclose(plain, weights(long_label_smoothing=0.1))
