"""Block-diagonal randomized Hadamard rotations (QuaRot-style), as pure tensor functions.

For an orthogonal ``Q``, ``x @ W.T == (x @ Q) @ (W @ Q).T``: rotating a linear's input and folding the same rotation
into its weight leaves the float output unchanged, while the rotated activation has its outlier channels spread
over a whole block, so a per-token 4-bit grid fits the dense values far better. ``Q`` is block diagonal with
identical ``B x B`` blocks ``H_B diag(signs) / sqrt(B)`` (Sylvester Hadamard, seeded random signs), ``B`` the
largest power of two that divides ``K`` (capped), so any ``K`` works and the online cost is ``K * B`` per token
instead of ``K**2``.

Example:
    >>> q = rotation_block(8, seed=0)
    >>> bool(torch.allclose(q @ q.T, torch.eye(8), atol=1e-6))
    True
"""

from __future__ import annotations

import torch

__all__ = ["hadamard", "block_size", "rotation_block", "rotate_act", "rotate_weight"]


def hadamard(b: int) -> torch.Tensor:
    """Sylvester Hadamard matrix of order ``b`` (a power of two), entries +-1."""
    if b < 1 or b & (b - 1):
        raise ValueError(f"Hadamard order must be a power of two, got {b}")
    h = torch.ones(1, 1)
    while h.shape[0] < b:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def block_size(k: int, max_block: int) -> int:
    """Largest power of two that divides ``k``, at most ``max_block``."""
    return min(k & -k, 1 << (max(max_block, 1).bit_length() - 1))


def rotation_block(b: int, seed: int = 0) -> torch.Tensor:
    """One orthogonal block ``H_b diag(s) / sqrt(b)`` with seeded random signs ``s`` (fp32, ``[b, b]``)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
    signs = torch.randint(0, 2, (b,), generator=gen).float() * 2 - 1
    return hadamard(b) * signs / b**0.5


def rotate_act(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``x @ blockdiag(q, ..., q)`` over the last dim (the reference of what the rewrite inserts in the graph)."""
    b = q.shape[0]
    return (x.unflatten(-1, (x.shape[-1] // b, b)) @ q.to(x.dtype)).flatten(-2)


def rotate_weight(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``W @ blockdiag(q, ..., q)`` computed in at least fp32, returned in ``w``'s dtype."""
    wide = w.detach().to(torch.promote_types(w.dtype, torch.float32))
    return rotate_act(wide, q.to(wide.dtype)).to(w.dtype)
