import pytest
import torch

from mqcompile.kernels import reference as ref
from mqcompile.kernels.pack import pack_int4
from mqcompile.solvers.block import QuantLinear, fake_linear, output_loss
from mqcompile.solvers.rotation import rotate_weight, rotation_block


def _deployed(x, q, bias, rows, group):
    """What rewrite_linears deploys: quantize_act + qlinear on packed codes (the ops' references)."""
    xr = x
    if q.rotation is not None:
        b = q.rotation.shape[0]
        xr = (x.unflatten(-1, (x.shape[-1] // b, b)) @ q.rotation).flatten(-2)
    codes, w_scale = ref.quantize_weight_ref(q.weight, q.w_bits, group, q.gamma)
    xq, xs = ref.quantize_act_ref(xr, q.alpha, rows, q.a_bits, q.shift)
    comp = None if q.shift is None else q.shift @ q.weight.T
    n, k = q.weight.shape
    return ref.qlinear_ref(xq, xs, pack_int4(codes), w_scale, bias, 4, group, k, x.dtype, comp, rows)


@pytest.mark.parametrize("tokens", [1, 7, 130])
@pytest.mark.parametrize("k,group", [(48, 0), (40, 16), (64, 32)])
@pytest.mark.parametrize("routed", [False, True])
def test_fake_linear_matches_the_deployed_ops(tokens, k, group, routed):
    g = torch.Generator().manual_seed(tokens * 100 + k)
    n, m = 24, 3 if routed else 1
    w = torch.randn(n, k, generator=g) * 0.1
    x = torch.randn(2, tokens, k, generator=g)
    x[..., 5] += 9  # an outlier channel the shift removes
    shift = torch.zeros(m, k)
    shift[:, 5] = torch.linspace(7, 9, m)
    rotation = rotation_block(8, seed=1) if k % 8 == 0 and not group else None
    weight = w if rotation is None else rotate_weight(w, rotation)
    gamma, alpha = torch.rand(n, 1, generator=g) * 0.3 + 0.7, torch.tensor([0.9, 0.8, 0.7][:m])
    q = QuantLinear(weight, 4, 4, group, gamma, alpha, shift, rotation)
    rows = torch.randint(0, m, (2, tokens), generator=g) if routed else None
    bias = torch.randn(n, generator=g)
    got = fake_linear(x, q, bias, rows)
    want = _deployed(x, q, bias, rows, group)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the float path agrees with plain linear up to quantization error only
    assert float((got - torch.nn.functional.linear(x, w, bias)).pow(2).mean()) < 0.05 * float(x.pow(2).mean())


def test_weight_only_and_ste_gradients():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, 32, generator=g), torch.randn(5, 32, generator=g)
    q = QuantLinear(w, 4, None, 0, torch.full((16, 1), 0.9))
    codes, scale = ref.quantize_weight_ref(w, 4, 0, q.gamma)
    torch.testing.assert_close(fake_linear(x, q), x @ (codes.float() * scale).T)
    q = QuantLinear(w, 4, 4, 0, torch.full((16, 1), 0.9, requires_grad=True), torch.tensor([0.8], requires_grad=True))
    fake_linear(x, q, ste=True).pow(2).sum().backward()
    assert q.gamma.grad is not None and bool(q.gamma.grad.abs().sum() > 0)
    assert q.alpha.grad is not None and bool(q.alpha.grad.abs() > 0)


def test_output_loss_balances_groups_and_is_zero_at_the_target():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, 100, 8, generator=g)
    assert float(output_loss(y, y.clone(), beta=0.1)) == pytest.approx(0.0, abs=1e-6)
    rows = torch.zeros(1, 100, dtype=torch.long)
    rows[0, :4] = 1  # 4 tokens of a second modality
    noisy = y.clone()
    noisy[0, :4] += 1.0  # error on the small group only
    balanced, pooled = output_loss(y, noisy, rows), output_loss(y, noisy)
    assert float(balanced) > 5 * float(pooled)  # the 4 tokens count as much as the other 96
    torch.testing.assert_close(output_loss(y, noisy, rows[:, :50]), pooled)  # rows not aligned: one group


def test_output_loss_gradient_is_finite_for_one_token():
    y = torch.randn(1, 1, 6)
    y_hat = (y + 0.1).requires_grad_(True)
    output_loss(y, y_hat, beta=0.1).backward()
    assert bool(torch.isfinite(y_hat.grad).all())


def test_cached_weight_follows_gamma_changes():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, 32, generator=g), torch.randn(5, 32, generator=g)
    q = QuantLinear(w, 4, 4, 0, torch.ones(16, 1), torch.ones(1))
    first = fake_linear(x, q)
    q.gamma.mul_(0.6)  # in place: the cache must notice
    moved = fake_linear(x, q)
    q.gamma = torch.full((16, 1), 0.6)  # a new tensor, same values
    torch.testing.assert_close(fake_linear(x, q), moved)
    assert not torch.allclose(first, moved)
