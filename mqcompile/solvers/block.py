"""Block-wise MDQFO: a linear's deployed numerics as a differentiable function, and the block output loss.

Per-linear MDQFO judges each linear's clips on its own output, from float inputs. The errors it cannot see add up
along a block (and across blocks): measured on Whisper's decoder, where each linear's isolated loss falls while the
block's output gets worse (``docs/method.md``). Block-wise MDQFO refines the clips of all linears of a block
jointly, by straight-through gradients of :func:`output_loss` on the block's outputs, with :func:`fake_linear`
standing in for each quantized linear.

Example:
    >>> q = QuantLinear(weight=torch.randn(8, 16), w_bits=4, a_bits=4)
    >>> fake_linear(torch.randn(3, 16), q).shape
    torch.Size([3, 8])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .mdqfo import fake_quant_act, fake_quant_weight
from .rotation import rotate_act

__all__ = ["QuantLinear", "fake_linear", "output_loss"]


@dataclass
class QuantLinear:
    """What one deployed linear computes (``rewrite_linears``' numerics), with tensors a solver may move."""

    weight: torch.Tensor  # [N, K] fp32, rotation/smoothing already folded in
    w_bits: int
    a_bits: int | None = None  # None: weight-only
    group_size: int = 0
    gamma: torch.Tensor | None = None  # [N, 1] weight clip (None: 1, no clipping)
    alpha: torch.Tensor | None = None  # [M] activation clip per table row
    shift: torch.Tensor | None = None  # [M, K] DABC shift per table row
    rotation: torch.Tensor | None = None  # [B, B] block applied to the input first
    multiplier: torch.Tensor | None = None  # [K] SmoothQuant factor applied to the input

    def __post_init__(self) -> None:
        # the outlier mass goes through the unquantized W exactly, as the rewrite's compensation table does
        self.comp = None if self.shift is None else self.shift @ self.weight.T
        if self.gamma is None:
            self.gamma = torch.ones(self.weight.shape[0], 1)
        self._cached: tuple | None = None

    def dequantized_weight(self, ste: bool = False) -> torch.Tensor:
        """``Q_w(W; gamma)`` dequantized; kept between calls while ``gamma`` is a fixed (no-grad) tensor, since
        evaluating a block on many batches would otherwise quantize every weight once per batch."""
        gamma = self.gamma
        if gamma.requires_grad:
            return fake_quant_weight(self.weight, gamma, self.w_bits, self.group_size, ste=ste)
        if self._cached is None or self._cached[0] is not gamma or self._cached[1] != gamma._version:
            self._cached = (gamma, gamma._version, fake_quant_weight(self.weight, gamma, self.w_bits, self.group_size))
        return self._cached[2]


def fake_linear(
    x: torch.Tensor,
    q: QuantLinear,
    bias: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    ste: bool = False,
) -> torch.Tensor:
    """The quantized linear on ``x [..., K]``, dequantized in fp32 and cast back to ``x``'s dtype. ``rows``: each
    token's table row (modality id; ``None``: row 0 for all). ``ste``: straight-through rounding, so gradients
    reach ``gamma``/``alpha``."""
    lead, k = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, k).float()
    if q.rotation is not None:
        flat = rotate_act(flat, q.rotation)
    if q.multiplier is not None:
        flat = flat * q.multiplier
    wq = q.dequantized_weight(ste)
    if q.a_bits is None:
        y = flat @ wq.T
    else:
        idx = torch.zeros(flat.shape[0], dtype=torch.long) if rows is None else rows.reshape(-1).long()
        alpha = torch.ones(1) if q.alpha is None else q.alpha
        if q.shift is not None:
            flat = flat - q.shift[idx]
        y = fake_quant_act(flat, alpha[idx][:, None], q.a_bits, ste=ste) @ wq.T
        if q.comp is not None:
            y = y + q.comp[idx]
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*lead, -1).to(x.dtype)


def _std(t: torch.Tensor) -> torch.Tensor:
    # the epsilon keeps the gradient finite for a channel without spread (one token, a constant channel)
    return (t.var(0, unbiased=False) + 1e-12).sqrt()


def output_loss(
    y: torch.Tensor, y_hat: torch.Tensor, rows: torch.Tensor | None = None, beta: float = 0.0
) -> torch.Tensor:
    """MDQFO's loss on one block output ``[..., C]``: relative squared error plus ``beta`` times the morphology term
    (per-channel mean/std over tokens), averaged over the token groups ``rows`` defines (each modality counts the
    same, however many tokens it has); one group when ``rows`` is ``None`` or does not match the token dims."""
    c = y.shape[-1]
    y, y_hat = y.reshape(-1, c).float(), y_hat.reshape(-1, c).float()
    if rows is None or rows.numel() != y.shape[0]:
        groups = [slice(None)]
    else:
        flat = rows.reshape(-1)
        groups = [flat == r for r in flat.unique().tolist()]
    total = y.new_zeros(())
    for g in groups:
        a, b = y[g], y_hat[g]
        err = (a - b).pow(2).sum() / a.pow(2).sum().clamp_min(1e-12)
        mean, std = a.mean(0), _std(a)
        morph = (b.mean(0) - mean).pow(2).sum() + (_std(b) - std).pow(2).sum()
        total = total + err + beta * morph / (mean.pow(2) + std.pow(2)).sum().clamp_min(1e-12)
    return total / len(groups)
