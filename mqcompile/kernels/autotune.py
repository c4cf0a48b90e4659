"""Config lists per regime for the Triton GEMM, and a run-time autotuner over them.

``triton.autotune`` is not used because a config here may change the host-side flow (split-K needs a zeroed int32
workspace and a second, epilogue kernel), which its configs cannot express. The first eager CUDA call for a key
``(M bucket, N, K, carrier)`` times every candidate with ``triton.testing.do_bench`` (median, L2 flushed) and keeps
the fastest; later calls, and ``torch.compile`` tracing (fake tensors, where nothing can run), use the cached choice,
or the heuristic :func:`~mqcompile.kernels.triton_kernels.gemm_config` when the key was never timed. Every
candidate computes the same integers (the tests check each kind against the reference), so the choice changes
speed only. ``MQCOMPILE_AUTOTUNE=0`` turns the timing off (heuristic configs only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from .triton_kernels import DecodeConfig, GemmConfig, decode_config, gemm_config

__all__ = ["candidates", "choose", "choose_decode", "decode_candidates", "cached", "bucket", "results"]

log = logging.getLogger(__name__)

# (block_m, block_n, block_k, split_k, num_warps, num_stages, two_dot[, group_m])
_DECODE = [
    (16, n, k, s, 4, 4, two) for n, k, splits in ((32, 256, (1, 4)), (64, 128, (1,)), (64, 256, (1, 2, 4)),
                                                  (128, 128, (1, 2))) for s in splits for two in (False, True)
]  # fmt: skip
_SMALL = [
    (32, 128, 128, 1, 4, 4, False),
    (32, 128, 128, 1, 4, 4, True),
    (64, 64, 128, 1, 4, 4, False),
    (64, 128, 128, 1, 4, 4, False),
    (64, 128, 128, 1, 4, 4, True),
    (128, 128, 128, 1, 8, 3, False),
    (128, 128, 128, 1, 8, 3, True),
]
_PREFILL = [
    (128, 128, 64, 1, 4, 4, False),
    (128, 128, 128, 1, 8, 4, False),
    (128, 256, 64, 1, 8, 4, False),
    (128, 256, 128, 1, 8, 3, False),
    (128, 128, 128, 1, 8, 4, True),
    (128, 256, 128, 1, 8, 3, True),
    # issue #20 item 3: BK 128, 3-4 stages, 8 warps, grouped tile order
    (128, 128, 128, 1, 8, 3, False, 8),
    (128, 256, 128, 1, 8, 3, False, 8),
    (128, 256, 128, 1, 8, 4, False, 8),
]

# the decode kernel (M <= 16): (block_n, block_k, split_k, num_warps, num_stages)
_DECODE_KERNEL = [
    (64, 256, 1, 4, 4),
    (64, 256, 2, 4, 4),
    (64, 256, 4, 4, 4),
    (32, 256, 1, 4, 4),
    (32, 256, 2, 4, 4),
    (128, 128, 1, 4, 4),
    (128, 256, 1, 8, 3),
    (64, 512, 1, 4, 3),
    (64, 128, 2, 4, 5),
]

_cache: dict[tuple, GemmConfig] = {}
_timings: dict[tuple, list[tuple[GemmConfig, float]]] = {}


def bucket(m: int) -> int:
    """Token counts sharing a choice: powers of two up to 4096."""
    return min(1 << max(m - 1, 0).bit_length(), 4096)


def candidates(m: int, k: int) -> list[GemmConfig]:
    """The regime's list, without splits that would leave a K slice under one block."""
    rows = _DECODE if m <= 16 else _SMALL if m <= 256 else _PREFILL
    return [GemmConfig(*r) for r in rows if r[3] == 1 or k >= r[2] * r[3]]


def results() -> dict[str, list[tuple[str, float]]]:
    """Every timed candidate per key (ms), for the benchmark's record."""
    return {str(key): [(str(tuple(c)), t) for c, t in rows] for key, rows in _timings.items()}


def cached(a: torch.Tensor, n: int, k: int, kind: str) -> GemmConfig | None:
    """The choice :func:`choose` made for this key, if it timed one."""
    return _cache.get((a.device.index, bucket(a.shape[0]), n, k, kind))


def _can_time(a: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return (
        a.device.type == "cuda"
        and not is_fake(a)
        and not torch.cuda.is_current_stream_capturing()
        and os.environ.get("MQCOMPILE_AUTOTUNE", "1") != "0"
    )


def choose(a: torch.Tensor, n: int, k: int, kind: str, launch: Callable[[GemmConfig], object]) -> GemmConfig:
    """The config for ``a [M, K] x [N, K]`` of carrier ``kind``; times the candidates through ``launch`` once."""
    m = a.shape[0]
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count if a.device.type == "cuda" else 132
    if not isinstance(m, int):  # a symbolic token count (dynamic-shape compile): the heuristic, guarded on M
        return _no_split(gemm_config(m, n, k, sms), kind)
    key = (a.device.index, bucket(m), n, k, kind)
    if key in _cache:
        return _cache[key]
    if not _can_time(a):
        return _no_split(gemm_config(m, n, k, sms), kind)
    from triton.testing import do_bench

    timed = []
    for cfg in candidates(m, k):
        if kind != "w4" and (cfg.two_dot or (kind == "fp8" and cfg.split_k > 1)):
            continue
        try:
            timed.append((cfg, do_bench(lambda cfg=cfg: launch(cfg), warmup=5, rep=20)))
        except Exception as exc:  # noqa: BLE001  (a config the compiler rejects, e.g. out of shared memory)
            log.debug("config %s failed: %s", cfg, exc)
    if not timed:
        _cache[key] = _no_split(gemm_config(m, n, k, sms), kind)
        return _cache[key]
    _timings[key] = timed
    _cache[key] = min(timed, key=lambda r: r[1])[0]
    log.info("autotune %s -> %s (%.4f ms)", key, _cache[key], min(t for _, t in timed))
    return _cache[key]


def _no_split(cfg: GemmConfig, kind: str) -> GemmConfig:
    # fp8 accumulates in fp32, which the int32 split-K workspace cannot hold
    return cfg._replace(split_k=1) if kind == "fp8" else cfg


def decode_candidates(k: int, fuse_quant: bool) -> list[DecodeConfig]:
    """The decode kernel's tiles, without splits that would leave a K slice under one block."""
    return [
        DecodeConfig(bn, bk, split, fuse_quant, warps, stages)
        for bn, bk, split, warps, stages in _DECODE_KERNEL
        if split == 1 or k >= bk * split
    ]


def choose_decode(
    x: torch.Tensor, n: int, k: int, fuse_quant: bool, launch: Callable[[DecodeConfig], object]
) -> DecodeConfig:
    """The decode kernel's config for ``x [M <= 16, K]`` against ``[N, K]`` weights; times the candidates through
    ``launch`` on the first eager CUDA call per key, like :func:`choose` (the heuristic otherwise)."""
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.device.type == "cuda" else 132
    fallback = decode_config(n, k, sms)._replace(fuse_quant=fuse_quant)
    key = (x.device.index, "decode", n, k, fuse_quant)
    if key in _cache:
        return _cache[key]
    if not isinstance(x.shape[0], int) or not _can_time(x):
        return fallback
    from triton.testing import do_bench

    timed = []
    for cfg in decode_candidates(k, fuse_quant):
        try:
            timed.append((cfg, do_bench(lambda cfg=cfg: launch(cfg), warmup=5, rep=20)))
        except Exception as exc:  # noqa: BLE001  (a config the compiler rejects)
            log.debug("decode config %s failed: %s", cfg, exc)
    if not timed:
        _cache[key] = fallback
        return fallback
    _timings[key] = timed
    _cache[key] = min(timed, key=lambda r: r[1])[0]
    log.info("autotune %s -> %s (%.4f ms)", key, _cache[key], min(t for _, t in timed))
    return _cache[key]
