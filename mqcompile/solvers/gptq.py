"""GPTQ weight rounding (Frantar et al., 2022) on fixed quantization grids: pure tensors, no graph code.

Round-to-nearest quantizes each weight on its own. GPTQ quantizes the columns of ``W [N, K]`` one at a time and
moves each column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's reconstruction loss ``||X W^T - X Q^T||^2`` (``H = X^T X`` over calibration tokens), so the errors cancel
through the inputs the layer actually sees. The grid (per-channel or per-group scales, e.g. MDQFO's clipped ones)
is chosen beforehand and kept: only the integer codes change, so every op and kernel stays as it is.

Written here rather than taken from a library because the method needs it on our fixed scales and in our exact
integer format (torchao's GPTQ quantizes into its own tensor subclasses with grids it picks itself).

Example:
    >>> import torch
    >>> w, x = torch.randn(8, 16), torch.randn(64, 16)
    >>> codes = gptq_codes(w, x, scale=w.abs().amax(1, keepdim=True) / 7, bits=4)
    >>> codes.shape, codes.dtype
    (torch.Size([8, 16]), torch.int8)
"""

from __future__ import annotations

import torch

from ..errors import CalibrationError

__all__ = ["gptq_codes", "hessian"]


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``X^T X / n`` in fp64 from tokens ``x [n, K]``."""
    x64 = x.reshape(-1, x.shape[-1]).double()
    return x64.T @ x64 / max(x64.shape[0], 1)


def gptq_codes(
    w: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    bits: int,
    *,
    damp: float = 0.01,
    block: int = 128,
) -> torch.Tensor:
    """Integer codes ``[N, K]`` (int8 containers) for ``w`` on the grid ``scale`` (``[N, 1]`` or ``[N, G]`` with
    ``K / G`` columns per group), minimizing the reconstruction error over tokens ``x [n, K]``.

    ``damp`` adds ``damp * mean(diag H)`` to the diagonal (few tokens leave ``H`` singular); input channels that
    never fire keep their round-to-nearest codes.

    Raises:
        CalibrationError: ``x`` has the wrong width or non-finite values.
    """
    n, k = w.shape
    if x.shape[-1] != k:
        raise CalibrationError(f"GPTQ needs tokens with {k} features, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise CalibrationError("GPTQ calibration tokens contain NaN/Inf")
    qmax = (1 << (bits - 1)) - 1
    qmin = -qmax - 1
    gs = -(-k // scale.shape[1])
    col_scale = scale.float().repeat_interleave(gs, dim=1)[:, :k]  # [N, K]
    h = hessian(x)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    # the factorizations in fp64 (H is near singular with few tokens), the column sweep in fp32 like the paper's
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    work = w.float().clone()
    codes = torch.empty(n, k, dtype=torch.int8)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, h1 = work[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            s = col_scale[:, i1 + i]
            q = torch.clamp(torch.round(w1[:, i] / s), qmin, qmax)
            codes[:, i1 + i] = q.to(torch.int8)
            err = (w1[:, i] - q * s) / h1[i, i]
            w1[:, i:] -= err[:, None] * h1[i, i:][None, :]
            err1[:, i] = err
        work[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes
