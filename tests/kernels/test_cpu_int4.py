import pytest
import torch

from mqcompile.kernels import cpu_int4
from mqcompile.kernels import reference as ref
from mqcompile.kernels.pack import pack_int4


@pytest.mark.parametrize("m", [1, 7, 300])
@pytest.mark.parametrize("k,n", [(40, 24), (896, 100), (1280, 48), (64, 16), (3584, 20)])
def test_bit_exact_vs_reference(m, k, n):
    g = torch.Generator().manual_seed(m * 7 + k + n)
    codes = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    codes[0] = -8  # the extreme code in every column of one row
    w_scale = torch.rand(n, 1, generator=g) * 0.02
    xq, xs = ref.quantize_act_ref(torch.randn(2, m, k, generator=g), torch.tensor([0.9]), None, 4)
    bias = torch.randn(n, generator=g)
    packed, scale_zeros = cpu_int4.pack_for_cpu(pack_int4(codes), k)
    got = torch.ops.mqcompile.qlinear_int4pack(xq, xs, packed, scale_zeros, w_scale, bias, k, torch.float32)
    want = ref.qlinear_ref(xq, xs, pack_int4(codes), w_scale, bias, 4, 0, k, torch.float32)
    assert torch.equal(got, want)


def test_routed_compensation_and_bf16_output():
    g = torch.Generator().manual_seed(0)
    n, k = 32, 96
    codes = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    w_scale = torch.rand(n, 1, generator=g) * 0.02
    ids = torch.randint(0, 3, (1, 9), generator=g)
    xq, xs = ref.quantize_act_ref(torch.randn(1, 9, k, generator=g), torch.tensor([1.0, 0.9, 0.8]), ids, 4)
    comp = torch.randn(3, n, generator=g)
    packed, scale_zeros = cpu_int4.pack_for_cpu(pack_int4(codes), k)
    args = (xq, xs, packed, scale_zeros, w_scale, None, k, torch.bfloat16, comp, ids)
    got = torch.ops.mqcompile.qlinear_int4pack(*args)
    want = ref.qlinear_ref(xq, xs, pack_int4(codes), w_scale, None, 4, 0, k, torch.bfloat16, comp, ids)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_padding_and_kernel_group():
    assert [cpu_int4.kernel_group(k) for k in (32, 96, 896, 1280, 3584)] == [32, 32, 128, 256, 256]
    packed, scale_zeros = cpu_int4.pack_for_cpu(pack_int4(torch.zeros(20, 40, dtype=torch.int8)), 40)
    assert packed.shape == (32, 32) and scale_zeros.shape == (1, 32, 2)  # N 20 -> 32, K 40 -> 64


def test_fake_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    packed, scale_zeros = cpu_int4.pack_for_cpu(pack_int4(torch.zeros(20, 40, dtype=torch.int8)), 40)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = torch.ops.mqcompile.qlinear_int4pack(
            torch.zeros(3, 5, 40, dtype=torch.int8),
            torch.ones(3, 5, 1),
            packed,
            scale_zeros,
            torch.ones(20, 1),
            None,
            40,
            torch.float16,
        )
    assert out.shape == (3, 5, 20) and out.dtype == torch.float16
