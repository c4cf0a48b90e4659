import pytest
import torch

from mqcompile.errors import CalibrationError
from mqcompile.kernels.reference import quantize_weight_ref
from mqcompile.solvers import gptq_codes


def _correlated(n, k, seed, rank=24):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank, k, generator=torch.Generator().manual_seed(99))  # the same input subspace every call
    return torch.randn(n, rank, generator=g) @ mix + 0.1 * torch.randn(n, k, generator=g)


def _rel_err(x, w, codes, scale):
    gs = -(-w.shape[1] // scale.shape[1])
    deq = codes.float() * scale.repeat_interleave(gs, dim=1)[:, : w.shape[1]]
    return float((x @ w.T - x @ deq.T).pow(2).sum() / (x @ w.T).pow(2).sum())


@pytest.mark.parametrize(("n", "k", "group", "bits"), [(48, 160, 0, 4), (33, 200, 40, 4), (16, 96, 0, 8)])
def test_gptq_beats_round_to_nearest_on_held_out_tokens(n, k, group, bits):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    rtn, scale = quantize_weight_ref(w, bits, group)
    codes = gptq_codes(w, _correlated(512, k, 2), scale, bits)
    held_out = _correlated(512, k, 3)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    assert codes.dtype == torch.int8 and int(codes.min()) >= lo and int(codes.max()) <= hi
    assert _rel_err(held_out, w, codes, scale) < 0.5 * _rel_err(held_out, w, rtn, scale)  # measured 14x at 4 bits


def test_gptq_keeps_round_to_nearest_where_it_cannot_do_better():
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    rtn, scale = quantize_weight_ref(w, 4)
    x = torch.zeros(16, 32)
    x[:, 0] = 1.0  # only channel 0 fires; the others are dead and keep their nearest codes
    codes = gptq_codes(w, x, scale, 4)
    assert torch.equal(codes[:, 1:], rtn[:, 1:])
    assert torch.equal(codes[:, 0], rtn[:, 0])  # the first column has no earlier error to absorb


def test_gptq_rejects_bad_tokens():
    w = torch.randn(4, 8)
    _, scale = quantize_weight_ref(w, 4)
    with pytest.raises(CalibrationError, match="8 features"):
        gptq_codes(w, torch.randn(5, 7), scale, 4)
    with pytest.raises(CalibrationError, match="NaN"):
        gptq_codes(w, torch.full((5, 8), float("nan")), scale, 4)
