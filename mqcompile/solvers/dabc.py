"""DABC (Distribution-Aware Bias Compensation) planning for one linear and one modality.

Per-token symmetric quantization sets the step from the token's largest magnitude, so a few long-tailed channels
with a large offset (massive activations) make the grid coarse for every dense inlier. DABC subtracts a robust
center ``c_k`` from selected channels (mask ``mu``); the subtracted mass ``(mu*c) W^T`` goes back exactly as a bias.

Choice of channels (greedy): the objective is the mean per-token step ``mean_t max_k |x~_tk|``. Each round adds
the channel whose centering shrinks it most, computed for all channels at once from every token's top-2
magnitudes; it stops when the best relative gain is below ``min_gain`` or after ``max_channels``.

Example:
    >>> x = torch.randn(512, 64); x[:, 5] += 40
    >>> plan_dabc(x).channels
    [5]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DabcPlan", "plan_dabc", "mean_step"]


@dataclass(frozen=True)
class DabcPlan:
    mask: torch.Tensor  # bool [K]
    center: torch.Tensor  # fp32 [K], robust center of every channel (used where mask is set)
    gain: float  # relative reduction of the mean per-token step

    @property
    def shift(self) -> torch.Tensor:
        return self.center * self.mask

    @property
    def channels(self) -> list[int]:
        return self.mask.nonzero().flatten().tolist()

    @staticmethod
    def empty(k: int) -> DabcPlan:
        return DabcPlan(torch.zeros(k, dtype=torch.bool), torch.zeros(k), 0.0)


def mean_step(x: torch.Tensor, shift: torch.Tensor | None = None) -> float:
    """Mean over tokens of ``max_k |x_tk - shift_k|`` (proportional to the mean quantization step)."""
    xs = x if shift is None else x - shift
    return float(xs.abs().amax(-1).mean())


def plan_dabc(x: torch.Tensor, max_channels: int | None = None, min_gain: float = 0.02) -> DabcPlan:
    """Choose mask and centers from sample tokens ``x [T, K]`` (one linear, one modality)."""
    x = x.float()
    t, k = x.shape
    if t == 0:
        return DabcPlan.empty(k)
    max_channels = max_channels if max_channels is not None else max(1, k // 32)
    center = x.median(dim=0).values
    centered = (x - center).abs()
    cur = x.abs().clone()
    mask = torch.zeros(k, dtype=torch.bool)
    start = obj = float(cur.amax(-1).mean())
    if obj == 0:
        return DabcPlan(mask, center, 0.0)
    for _ in range(max_channels):
        top = cur.topk(2 if k > 1 else 1, dim=-1)
        first, arg = top.values[:, 0], top.indices[:, 0]
        second = top.values[:, 1] if k > 1 else torch.zeros_like(first)
        # max over the other channels if channel j were centered: the runner-up where j holds the max
        others = torch.where(arg[:, None] == torch.arange(k)[None, :], second[:, None], first[:, None])
        new = torch.maximum(others, centered).mean(0)
        new[mask] = float("inf")
        best = int(new.argmin())
        gain = (obj - float(new[best])) / obj
        if gain < min_gain:
            break
        mask[best] = True
        cur[:, best] = centered[:, best]
        obj = float(new[best])
    return DabcPlan(mask, center, (start - obj) / start)
