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
from .transform import kron_act, kron_weight

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
    a_asym: bool = False  # asymmetric per-token activation codes
    # learned Kronecker factors (P1 [k1, k1], P2 [k2, k2]) applied after the rotation and the shift; the weight is
    # folded through them (:mod:`mqcompile.solvers.transform`), ``weight`` itself stays the untransformed one
    transform: tuple[torch.Tensor | None, torch.Tensor | None] | None = None

    def __post_init__(self) -> None:
        # the outlier mass goes through the unquantized W exactly, as the rewrite's compensation table does
        self.comp = None if self.shift is None else self.shift @ self.weight.T
        if self.gamma is None:
            self.gamma = torch.ones(self.weight.shape[0], 1)
        self._cached: tuple | None = None

    def folded_weight(self) -> torch.Tensor:
        """The float weight the quantizer sees: ``weight`` folded through the learned transform, if any."""
        if self.transform is None:
            return self.weight
        return kron_weight(self.weight, *self.transform)

    def dequantized_weight(self, ste: bool = False) -> torch.Tensor:
        """``Q_w(W; gamma)`` dequantized; kept between calls while ``gamma`` and the transform are fixed (no-grad)
        tensors, since evaluating a block on many batches would otherwise quantize every weight once per batch."""
        moving = [self.gamma, *(t for t in self.transform or () if t is not None)]
        if any(t.requires_grad for t in moving):
            return fake_quant_weight(self.folded_weight(), self.gamma, self.w_bits, self.group_size, ste=ste)
        versions = [t._version for t in moving]
        cached = self._cached
        if cached is None or len(cached[0]) != len(moving) or any(a is not b for a, b in zip(cached[0], moving)):
            cached = None
        if cached is None or cached[1] != versions:
            value = fake_quant_weight(self.folded_weight(), self.gamma, self.w_bits, self.group_size)
            self._cached = cached = (moving, versions, value)
        return cached[2]


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
        if q.transform is not None:
            flat = kron_act(flat, *q.transform)
        y = flat @ wq.T
    else:
        idx = torch.zeros(flat.shape[0], dtype=torch.long) if rows is None else rows.reshape(-1).long()
        alpha = torch.ones(1) if q.alpha is None else q.alpha
        if q.shift is not None:
            flat = flat - q.shift[idx]
        if q.transform is not None:  # (x - shift) T = x T - shift T: deployment subtracts the transformed shift
            flat = kron_act(flat, *q.transform)
        y = fake_quant_act(flat, alpha[idx][:, None], q.a_bits, ste=ste, asym=q.a_asym) @ wq.T
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
