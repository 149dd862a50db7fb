"""The linear probe folded into a network's head, the head-first recipe and the probe kept when it validates
better: on a real OFA subnet and real images (600 of the demo set's mnist), no zoo needed."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from tans_registry.data import load_dataset
from tans_registry.finetune.candidate import train
from tans_registry.finetune.config import FinetuneSettings
from tans_registry.finetune.probe import features, fit_logreg, fold_into_linear, probe_head
from tans_registry.retrieval.starts import new_head, split_train_val
from tans_registry.zoo.measure import accuracy, recalibrate_bn
from tans_registry.zoo.space import SupernetSpec, build_supernet, extract_subnet, sample_archs
from tans_registry.zoo.tensors import DEFAULT_MEAN, DEFAULT_STD


@pytest.mark.parametrize("n_classes, present", [(4, [0, 1, 2, 3]), (4, [0, 2, 3]), (3, [1, 2])])
def test_the_folded_head_computes_the_regression_on_raw_features(n_classes, present):
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(n_classes, 12))
    y = np.repeat(present, 30)
    a = centres[y] + rng.normal(size=(len(y), 12)) * 2.0 + 5.0  # offset and scale: the scaler matters
    scaler, clf = fit_logreg(a, y, seed=0)
    weight, bias = fold_into_linear(scaler, clf, n_classes, 12)
    logits = a @ weight.T.astype(np.float64) + bias
    assert np.array_equal(logits.argmax(1), clf.predict(scaler.transform(a)))
    decision = clf.decision_function(scaler.transform(a))
    if len(present) > 2:
        np.testing.assert_allclose(logits[:, present], decision, rtol=1e-4, atol=1e-3)
    else:  # one decision row: the second class's logit minus the first's
        np.testing.assert_allclose(logits[:, present[1]] - logits[:, present[0]], decision, rtol=1e-4, atol=1e-3)
    absent = sorted(set(range(n_classes)) - set(present))
    if absent:
        assert np.all(logits[:, absent].max(1) < logits[:, present].max(1))


@pytest.fixture(scope="module")
def start():
    ds = load_dataset("mnist", seed=0, max_train=600, max_test=200)  # the demo set's mnist
    spec = SupernetSpec(n_classes=5)
    torch.manual_seed(0)
    sub = extract_subnet(build_supernet(spec), sample_archs(spec, 2, seed=0)[0])
    tr, va = split_train_val(ds.y_train, 0.2, 0)
    recalibrate_bn(sub, ds.x_train[tr], DEFAULT_MEAN, DEFAULT_STD, batch_size=len(tr))  # as every start is prepared
    return ds, sub, tr, va


def _fresh(sub, n_classes):
    import copy

    return new_head(copy.deepcopy(sub), n_classes, seed=0)


def _settings(**kw) -> dict:
    return asdict(FinetuneSettings(epochs=1, lr=1e-7, seed=0, **kw)) | {"patience": 10 ** 6}


def test_probe_head_predicts_as_the_regression_on_its_features(start):
    ds, sub, tr, va = start
    module = _fresh(sub, ds.n_classes)
    x, y = ds.x_train[tr], ds.y_train[tr]
    probe_head(module, x, y, DEFAULT_MEAN, DEFAULT_STD, seed=0)
    scaler, clf = fit_logreg(features(module, x, DEFAULT_MEAN, DEFAULT_STD), y, seed=0)
    expected = clf.predict(scaler.transform(features(module, ds.x_test, DEFAULT_MEAN, DEFAULT_STD)))
    assert accuracy(module, ds.x_test, expected, DEFAULT_MEAN, DEFAULT_STD) == pytest.approx(1.0)


def test_the_probe_is_kept_when_it_validates_better(start):
    ds, sub, tr, va = start
    args = (ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va])
    # lr 1e-7 for one epoch: the fine-tuned network is its random head, the probe a fitted one
    plain = train(_fresh(sub, ds.n_classes), *args, _settings(keep_probe=False), DEFAULT_MEAN, DEFAULT_STD)
    assert plain["kept"] == "finetuned" and plain["probe_val_accuracy"] is None and not plain["head_first"]
    module = _fresh(sub, ds.n_classes)
    kept = train(module, *args, _settings(keep_probe=True), DEFAULT_MEAN, DEFAULT_STD)
    assert kept["probe_val_accuracy"] > plain["val_accuracy"] + 0.1
    assert kept["kept"] == "probe" and kept["best_epoch"] == 0 and kept["val_accuracy"] == kept["probe_val_accuracy"]
    assert accuracy(module, ds.x_train[va], ds.y_train[va], DEFAULT_MEAN, DEFAULT_STD) == kept["val_accuracy"]
    assert kept["history"] == pytest.approx(plain["history"])  # the epochs themselves trained as without it
    # head-first: training starts from the probe's head (at lr 1e-7 it stays there); without it, from the fresh one
    probed = _fresh(sub, ds.n_classes)
    probe_head(probed, ds.x_train[tr], ds.y_train[tr], DEFAULT_MEAN, DEFAULT_STD, seed=0)
    module = _fresh(sub, ds.n_classes)
    first = train(module, *args, _settings(head_first=True, keep_probe=False), DEFAULT_MEAN, DEFAULT_STD)
    assert first["head_first"] and first["kept"] == "finetuned"
    head = module.classifier.linear.weight.detach()
    torch.testing.assert_close(head, probed.classifier.linear.weight.detach(), rtol=0, atol=1e-4)
    assert not torch.allclose(head, _fresh(sub, ds.n_classes).classifier.linear.weight, atol=1e-2)
