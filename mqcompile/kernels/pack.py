"""int4 packing: two signed 4-bit values per byte along the last dimension (K).

Byte ``j`` of a row holds element ``2j`` in the low nibble and ``2j+1`` in the high nibble (two's complement),
the layout ONNX INT4 and most int4 GEMMs use. An odd K is padded with one zero nibble. Written here rather than
taken from torchao because the deployment GPU image has no torchao and the kernels must not depend on it.

Example:
    >>> import torch
    >>> q = torch.tensor([[-8, 7, 3]], dtype=torch.int8)
    >>> unpack_int4(pack_int4(q), 3).tolist()
    [[-8, 7, 3]]
"""

from __future__ import annotations

import torch

__all__ = [
    "pack_int4",
    "unpack_int4",
    "unpack_int4_float",
    "packed_cols",
    "BLOCK",
    "blocked_cols",
    "pack_int4_blocked",
    "unpack_int4_blocked",
]

BLOCK = 64  # K values per block of the blocked layout (the GPU fast paths' weight layout)


def packed_cols(k: int) -> int:
    return (k + 1) // 2


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in [-8, 7] (shape ``[..., K]``) into uint8 ``[..., ceil(K/2)]``."""
    if q.dtype != torch.int8:
        raise TypeError(f"pack_int4 expects int8 values, got {q.dtype}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("pack_int4 expects values in [-8, 7]")
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    u = q.to(torch.uint8) & 0xF
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 ``[..., ceil(K/2)]`` -> int8 ``[..., K]``."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 expects uint8, got {packed.dtype}")
    if packed.shape[-1] != packed_cols(k):
        raise ValueError(f"packed last dim {packed.shape[-1]} does not hold K={k} int4 values")
    lo = (packed & 0xF).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    # sign-extend the 4-bit two's complement values
    lo = lo - ((lo & 0x8) << 1)
    hi = hi - ((hi & 0x8) << 1)
    out = torch.stack((lo, hi), dim=-1).flatten(-2)
    return out[..., :k].contiguous()


def _nibble_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    byte = torch.arange(256, device=device)
    lo, hi = byte & 0xF, byte >> 4
    return torch.stack((lo - ((lo & 8) << 1), hi - ((hi & 8) << 1)), dim=-1).to(dtype)  # [256, 2]


def unpack_int4_float(packed: torch.Tensor, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`unpack_int4` straight to a float dtype in one gather (a 256-entry table of nibble pairs): the CPU
    fast path multiplies integer-valued float tensors, so it never needs the int8 intermediate."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4_float expects uint8, got {packed.dtype}")
    if packed.shape[-1] != packed_cols(k):
        raise ValueError(f"packed last dim {packed.shape[-1]} does not hold K={k} int4 values")
    table = _nibble_table(dtype, packed.device)
    out = table.index_select(0, packed.reshape(-1).int()).reshape(*packed.shape[:-1], -1)
    return out[..., :k]


def blocked_cols(k: int, block: int = BLOCK) -> int:
    """Bytes per row of the blocked layout: K padded to whole blocks, two values a byte."""
    return -(-k // block) * block // 2


def pack_int4_blocked(q: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Pack int8 values in [-8, 7] (``[N, K]``) into the blocked layout of the GPU fast paths.

    Per block of ``block`` K values, byte ``j`` holds value ``j`` in its low nibble and value ``j + block/2`` in its
    high nibble, so each nibble plane meets a *contiguous* half of the activation block: a kernel unpacks with shifts
    alone (``byte << 4`` and ``byte & 0xF0`` are 16x the two values as int8) and needs no interleave in registers.
    K is padded with zeros to whole blocks.
    """
    if q.dtype != torch.int8 or q.dim() != 2:
        raise TypeError(f"pack_int4_blocked expects a 2-D int8 tensor, got {q.dtype} with {q.dim()} dims")
    if block % 2 or block <= 0:
        raise ValueError(f"block must be a positive even number, got {block}")
    n, k = q.shape
    padded = torch.nn.functional.pad(q, (0, blocked_cols(k, block) * 2 - k)).reshape(n, -1, 2, block // 2)
    u = padded.to(torch.uint8) & 0xF
    return (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(n, -1).contiguous()


def unpack_int4_blocked(packed: torch.Tensor, k: int, block: int = BLOCK) -> torch.Tensor:
    """Inverse of :func:`pack_int4_blocked`: uint8 ``[N, blocked_cols(K)]`` -> int8 ``[N, K]``."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4_blocked expects uint8, got {packed.dtype}")
    if packed.shape[-1] != blocked_cols(k, block):
        raise ValueError(f"packed last dim {packed.shape[-1]} does not hold K={k} in blocks of {block}")
    planes = unpack_int4(packed, packed.shape[-1] * 2).reshape(packed.shape[0], -1, block // 2, 2)
    return planes.transpose(-1, -2).reshape(packed.shape[0], -1)[:, :k].contiguous()
