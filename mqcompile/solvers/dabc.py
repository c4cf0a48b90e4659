"""DABC (Distribution-Aware Bias Compensation) planning for one linear and one modality.

Per-token symmetric quantization sets the step from the token's largest magnitude, so a few long-tailed channels
with a large offset (massive activations) make the grid coarse for every dense inlier. DABC subtracts a robust
center ``c_k`` from selected channels (mask ``mu``); the subtracted mass ``(mu*c) W^T`` goes back exactly as a bias.

Choice of channels: the objective is the mean per-token step ``mean_t max_k |x~_tk|``. Channels are ranked by how
much centering shrinks them (``mean_t |x_tk| - mean_t |x_tk - c_k|``); every prefix of that ranking (up to
``max_channels``) is scored on the objective, and the shortest prefix within 1% of the best one wins. Prefixes
rather than one-at-a-time greedy, because several channels with the same offset must move together: centering one
of ten +50 channels does not lower any token's maximum. No shift unless the objective drops by ``min_gain``.

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
    max_channels = min(k, max_channels if max_channels is not None else max(1, k // 32))
    center = x.median(dim=0).values
    shrink = x.abs().mean(0) - (x - center).abs().mean(0)
    order = shrink.argsort(descending=True)[:max_channels]
    cur = x.abs()
    objectives = [float(cur.amax(-1).mean())]
    for ch in order.tolist():
        cur[:, ch] = (x[:, ch] - center[ch]).abs()
        objectives.append(float(cur.amax(-1).mean()))
    start, best = objectives[0], min(objectives)
    if start == 0 or (start - best) / start < min_gain:
        return DabcPlan(torch.zeros(k, dtype=torch.bool), center, 0.0)
    count = next(j for j, obj in enumerate(objectives) if obj <= best + 0.01 * start)
    mask = torch.zeros(k, dtype=torch.bool)
    mask[order[:count]] = True
    return DabcPlan(mask, center, (start - objectives[count]) / start)
