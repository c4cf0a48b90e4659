"""Vision task: probe / cosine metrics on synthetic features (no assets), preprocessing, and a tiny real slice
(DINOv2-S on 20 LFW images, float vs W4A4) when the assets are available."""

import numpy as np
import pytest
import torch

from mqcompile.errors import CalibrationError
from mqcompile.evaluation.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VisionTask,
    fit_logistic,
    mean_cosine,
    preprocess,
    probe_accuracy,
    stratified_folds,
)


def blobs(n=60, dim=16, gap=3.0, seed=0):
    """Two Gaussian classes (label 1 first) separated by ``gap`` along the first axis."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = torch.zeros(n, dtype=torch.long)
    y[: n // 2] = 1
    x[:, 0] += gap * (y.float() - 0.5) * 2
    return x, y


def test_stratified_folds_partition_and_balance():
    labels = np.array([1] * 23 + [0] * 17)
    folds = stratified_folds(labels, k=5, seed=3)
    assert len(folds) == 5
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(40))
    for f in folds:
        assert 4 <= labels[f].sum() <= 5 and 3 <= (labels[f] == 0).sum() <= 4
    again = stratified_folds(labels, k=5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(labels, k=5, seed=4)))


def test_fit_logistic_separates_and_is_deterministic():
    x, y = blobs(gap=4.0)
    probe = fit_logistic(x, y)
    assert (probe.predict(x) == y).float().mean() == 1.0
    again = fit_logistic(x, y)
    assert torch.equal(probe.weight, again.weight)
    # invariant to a per-feature affine change (features are standardized)
    assert torch.equal(fit_logistic(x * 5 + 2, y).predict(x * 5 + 2), probe.predict(x))


def test_probe_accuracy_on_synthetic_features():
    x, y = blobs(n=100, gap=4.0)
    assert probe_accuracy(x, y) >= 98.0
    assert probe_accuracy(x, y, x.clone()) == probe_accuracy(x, y)
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert 85.0 <= probe_accuracy(x, y, noisy) <= 100.0
    scrambled = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert probe_accuracy(x, y, scrambled) <= 70.0  # a float-trained probe on unrelated features: near chance
    flipped = x.clone()
    flipped[:, 0] = -flipped[:, 0]  # the discriminative direction reversed: the float probe is always wrong
    assert probe_accuracy(x, y, flipped) <= 10.0
    with pytest.raises(CalibrationError):
        probe_accuracy(x, y, x[:, :5])


def test_mean_cosine():
    x, _ = blobs()
    assert mean_cosine(x, x) == pytest.approx(1.0, abs=1e-12)
    assert mean_cosine(x, -x) == pytest.approx(-1.0, abs=1e-12)
    assert mean_cosine(x, 3 * x) == pytest.approx(1.0, abs=1e-12)
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert mean_cosine(a, b) == pytest.approx(0.5)


def test_preprocess_shapes_and_normalization():
    gray = torch.full((2, 25, 25), 0.5)
    x = preprocess(gray, 112)
    assert x.shape == (2, 3, 112, 112) and x.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(x[:, c], torch.tensor((0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
    with pytest.raises(CalibrationError):
        VisionTask(image_size=100)


@pytest.fixture(scope="module")
def real_task():
    return VisionTask(quick=True, num_images=20)


@pytest.mark.assets
def test_real_slice_float_vs_w4a4(real_task):
    """20 LFW images (10 faces): the float model scores itself perfectly, W4A4 RTN moves the CLS features."""
    import mqcompile

    task = real_task
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 OpenMP threads on a loaded 2-core box make the mqcompile ops ~10x slower
    try:
        _check_real_slice(task, mqcompile)
    finally:
        torch.set_num_threads(threads)


def _check_real_slice(task, mqcompile):
    assert task.name == "dinov2-s14" and [m.name for m in task.metrics] == ["probe_acc", "cls_cosine"]
    spec = task.programs()["vit"]
    assert set(task.programs()) == {"vit"}
    pixels, labels = task.eval_data()
    assert pixels.shape == (20, 3, 112, 112) and int(labels.sum()) == 10
    assert spec.probe["pixel_values"].shape == (8, 3, 112, 112)
    assert len(spec.calibration) == 1 and spec.calibration[0]["pixel_values"].shape == (8, 3, 112, 112)

    float_scores = task.evaluate({"vit": spec.program.module()})
    assert float_scores["cls_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert float_scores["probe_acc"] >= 85.0

    qp = mqcompile.quantize(spec.program, calibration=spec.calibration, progress=False)
    assert len(qp.linears()) == 72 and {r.modality for r in qp.linears()} == {"vision"}
    scores = task.evaluate({"vit": qp.module()})
    assert 0.3 < scores["cls_cosine"] < 0.99
    assert 0.0 <= scores["probe_acc"] <= 100.0
