"""Kronecker-factored invertible online transforms (FlatQuant-style), as pure tensor functions.

A linear's input ``x [..., K]`` with ``K = k1 * k2`` is viewed as ``X [k1, k2]`` and transformed to
``P1^T X P2``; folding ``W_n -> P1^{-1} W_n P2^{-T}`` (each weight row viewed the same way) into the weight keeps the
float output exactly: ``<P1^T X P2, P1^{-1} W_n P2^{-T}> = <X, W_n>``. The online cost is ``K (k1 + k2)`` per token.
The rotate pass's block-diagonal Hadamard is the case ``P1 = I``, ``P2 = Q``, so a learned transform starts there
and moves ``P1`` (mixing the blocks) and ``P2`` (inside a block) away from it; a factor ``None`` is the identity.

Example:
    >>> p1, p2 = torch.eye(2) * 2, torch.eye(3)
    >>> x, w = torch.randn(4, 6), torch.randn(5, 6)
    >>> bool(torch.allclose(kron_act(x, p1, p2) @ kron_weight(w, p1, p2).T, x @ w.T, atol=1e-5))
    True
"""

from __future__ import annotations

import torch

__all__ = ["kron_act", "kron_weight", "kron_sizes"]


def kron_sizes(k: int, p2: torch.Tensor) -> tuple[int, int]:
    """``(k1, k2)`` for an input of ``k`` features whose right factor is ``p2``."""
    k2 = p2.shape[0]
    if k % k2:
        raise ValueError(f"a right factor of size {k2} does not divide K = {k}")
    return k // k2, k2


def kron_act(x: torch.Tensor, p1: torch.Tensor | None, p2: torch.Tensor | None) -> torch.Tensor:
    """``P1^T X P2`` for every token of ``x [..., K]`` (computed in ``x``'s dtype)."""
    if p2 is None:
        if p1 is None:
            return x
        p2 = torch.eye(x.shape[-1] // p1.shape[0], dtype=x.dtype, device=x.device)
    k1, k2 = kron_sizes(x.shape[-1], p2)
    blocks = x.unflatten(-1, (k1, k2)) @ p2.to(x.dtype)
    if p1 is not None:
        blocks = p1.T.to(x.dtype) @ blocks
    return blocks.flatten(-2)


def kron_weight(w: torch.Tensor, p1: torch.Tensor | None, p2: torch.Tensor | None) -> torch.Tensor:
    """``P1^{-1} W_n P2^{-T}`` for every row of ``w [N, K]``, in fp32 (differentiable in ``p1``/``p2``), so that
    ``kron_act(x, p1, p2) @ kron_weight(w, p1, p2).T == x @ w.T``."""
    w = w.float()
    inv1 = None if p1 is None else torch.linalg.inv(p1.float()).T
    inv2 = None if p2 is None else torch.linalg.inv(p2.float())
    if inv2 is None and inv1 is not None:
        inv2 = torch.eye(w.shape[1] // inv1.shape[0], device=w.device)
    # kron_act with (P1^{-T}, P2^{-T}) is X -> P1^{-1} X P2^{-T}, the fold
    return kron_act(w, inv1, None if inv2 is None else inv2.T)
