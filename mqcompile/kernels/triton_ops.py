"""``mqcompile::quantize_act_triton`` / ``mqcompile::qlinear_triton``: the Triton kernels as ``triton_op``s.

Registered with ``torch.library.triton_op`` and launched through ``wrap_triton`` so that ``torch.compile`` (Inductor)
sees the user-defined Triton kernels and schedules around them, instead of treating an opaque custom op as a graph
break. Same schemas and semantics as ``mqcompile::quantize_act`` / ``mqcompile::qlinear``; ``mqcompile.compile``
swaps them in on GPUs. Eager calls on CPU tensors work under ``TRITON_INTERPRET=1`` (that is how the tests run).

Example:
    >>> import torch, mqcompile.kernels.triton_ops  # doctest: +SKIP
    >>> torch.ops.mqcompile.qlinear_triton(xq, xs, w, ws, None, 4, 0, k, torch.float16)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from .triton_kernels import gemm_configs, kernels

__all__ = ["quantize_act_triton", "qlinear_triton"]


@triton_op("mqcompile::quantize_act_triton", mutates_args=())
def quantize_act_triton(
    x: torch.Tensor,
    clip: torch.Tensor,
    modality_ids: torch.Tensor | None,
    bits: int,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    x2 = x.reshape(rows, k).contiguous()
    q = torch.empty((rows, k), dtype=torch.int8, device=x.device)
    s = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    clip32 = clip.float().contiguous()
    ids = modality_ids.reshape(-1).contiguous() if modality_ids is not None else clip32
    sh = shift.float().contiguous() if shift is not None else clip32
    block = min(1024, max(16, 1 << (k - 1).bit_length()))
    if rows:
        wrap_triton(kernels()[0])[(rows,)](
            x2, clip32, ids, sh, q, s, k, (1 << (bits - 1)) - 1, modality_ids is not None, shift is not None, block
        )
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], 1)


@triton_op("mqcompile::qlinear_triton", mutates_args=())
def qlinear_triton(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    w_bits: int,
    group_size: int,
    in_features: int,
    out_dtype: torch.dtype,
    comp: torch.Tensor | None = None,
    modality_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    if group_size:
        raise NotImplementedError(
            "qlinear_triton covers per-channel weight scales; grouped weights use mqcompile::qlinear"
        )
    lead = xq.shape[:-1]
    k, n = in_features, w.shape[0]
    a = xq.reshape(-1, k).contiguous()
    m = a.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    xs = x_scale.reshape(-1).float().contiguous()
    ws = w_scale.reshape(-1).float().contiguous()
    b = bias.contiguous() if bias is not None else ws
    cp = comp.float().contiguous() if comp is not None else ws
    ids = modality_ids.reshape(-1).contiguous() if modality_ids is not None else xs
    cfg = gemm_configs(m)
    grid = (triton_cdiv(m, cfg["BLOCK_M"]), triton_cdiv(n, cfg["BLOCK_N"]))
    if m:
        wrap_triton(kernels()[1])[grid](
            a, xs, w.contiguous(), ws, b, cp, ids, out, m, n, k, w.shape[1],
            w_bits == 4, bias is not None, comp is not None, modality_ids is not None,
            cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"],
        )  # fmt: skip
    return out.reshape(*lead, n)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
