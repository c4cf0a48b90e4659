"""The W4A4 fast paths on a real GPU (issue #20): what the interpreter cannot show. Run by tools/gpu_check.sh."""

import pytest
import torch

import mqcompile
from mqcompile.kernels import reference as ref

pytestmark = pytest.mark.gpu


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(256, 640)
        self.down = torch.nn.Linear(640, 200)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


@pytest.mark.parametrize("fp8_weights", [False, True])
def test_compiled_program_follows_every_path_with_dynamic_tokens(fp8_weights):
    # one export with a dynamic token count, compiled once: M = 1 and 16 (decode kernel), 17 and 300 (FP8)
    torch.manual_seed(0)
    tokens = torch.export.Dim("tokens", min=1, max=4096)
    ep = torch.export.export(_MLP().eval(), (torch.randn(1, 40, 256),), dynamic_shapes=({1: tokens},))
    qp = mqcompile.quantize(ep, mqcompile.QuantConfig(), progress=False)
    fast = mqcompile.compile(qp, device="cuda", fp8_weights=fp8_weights, dynamic=True)
    eager = qp.module()
    for m in (1, 16, 17, 300):
        x = torch.randn(1, m, 256)
        want = eager(x)  # the CPU reference path
        got = fast(x.cuda()).cpu()
        # the CPU program's float ops (GELU, the epilogue's adds) vs Inductor's (which may contract a*b + c into an
        # FMA): last-bit differences, which can flip a rare activation code of the second linear
        assert got.shape == want.shape and float((got - want).norm() / want.norm()) < 1e-3, m


@pytest.mark.parametrize("k", [3584, 18944])
def test_fp8_tensor_cores_sum_int4_values_exactly(k):
    # every product at its largest magnitude and alternating signs: exact integer sums need all 24 bits of the
    # fp32 accumulator (|sum| <= 64 K); the default (no fast accumulation) must equal the int32 reference
    g = torch.Generator().manual_seed(k)
    xq = torch.randint(-8, 8, (64, k), generator=g, dtype=torch.int8)
    wq = torch.randint(-8, 8, (128, k), generator=g, dtype=torch.int8)
    xq[0], wq[0] = -8, -8  # the largest sum, 64 K
    want = ref.int_matmul_ref(xq, wq).float()
    one = torch.ones((), device="cuda")
    a, b = xq.cuda().to(torch.float8_e4m3fn), wq.cuda().to(torch.float8_e4m3fn)
    got = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.float32, use_fast_accum=False)
    assert torch.equal(got.cpu(), want)
