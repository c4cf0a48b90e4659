"""Output-fidelity metrics (float reference vs quantized)."""

from __future__ import annotations

import math

import torch

__all__ = ["cosine", "sqnr_db"]


def cosine(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors, in float64.

    Example:
        >>> cosine(torch.ones(3), 2 * torch.ones(3))
        1.0
    """
    a, b = ref.detach().double().flatten(), test.detach().double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(|ref|^2 / |ref - test|^2)`` in dB (inf when equal).

    Example:
        >>> round(sqnr_db(torch.tensor([10.0]), torch.tensor([9.0])), 1)
        20.0
    """
    ref, test = ref.detach().double(), test.detach().double()
    noise = float((ref - test).pow(2).sum())
    signal = float(ref.pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)
