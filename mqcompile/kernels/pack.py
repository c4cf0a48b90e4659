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

__all__ = ["pack_int4", "unpack_int4", "unpack_int4_float", "packed_cols"]


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
