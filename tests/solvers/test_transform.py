import pytest
import torch

from mqcompile.solvers import rotate_act, rotation_block
from mqcompile.solvers.transform import kron_act, kron_weight


def _invertible(n, gen):
    return torch.eye(n) + 0.3 * torch.randn(n, n, generator=gen) / n**0.5


@pytest.mark.parametrize("k1,k2,tokens", [(1, 8, 1), (3, 4, 5), (7, 16, 33), (2, 2, 64)])
def test_folding_the_inverse_keeps_the_float_function(k1, k2, tokens):
    gen = torch.Generator().manual_seed(k1 * 100 + k2)
    x, w = torch.randn(tokens, k1 * k2, generator=gen), torch.randn(9, k1 * k2, generator=gen)
    p1 = None if k1 == 1 else _invertible(k1, gen)
    p2 = _invertible(k2, gen)
    out = kron_act(x, p1, p2) @ kron_weight(w, p1, p2).T
    assert torch.allclose(out, x @ w.T, atol=1e-4, rtol=1e-4)
    # the transform really moves the input (the check above is not an identity in disguise)
    assert not torch.allclose(kron_act(x, p1, p2), x, atol=1e-2)


def test_left_factor_alone_and_leading_dims():
    gen = torch.Generator().manual_seed(1)
    x, w, p1 = torch.randn(2, 3, 12, generator=gen), torch.randn(5, 12, generator=gen), _invertible(4, gen)
    out = kron_act(x, p1, None) @ kron_weight(w, p1, None).T
    assert out.shape == (2, 3, 5) and torch.allclose(out, x @ w.T, atol=1e-4)
    assert kron_act(x, None, None) is x


def test_hadamard_is_the_kronecker_case_with_identity_left_factor():
    q = rotation_block(16, seed=3)
    x = torch.randn(4, 64)
    assert torch.equal(kron_act(x, None, q), rotate_act(x, q))
    assert torch.allclose(kron_act(x, torch.eye(4), q), rotate_act(x, q), atol=1e-6)


def test_a_factor_that_does_not_divide_k_is_refused():
    with pytest.raises(ValueError, match="does not divide"):
        kron_act(torch.randn(2, 10), None, torch.eye(4))


def test_gradients_reach_both_factors():
    gen = torch.Generator().manual_seed(2)
    p1, p2 = torch.eye(3).requires_grad_(True), torch.eye(4).requires_grad_(True)
    x, w = torch.randn(6, 12, generator=gen), torch.randn(5, 12, generator=gen)
    loss = (torch.round(kron_act(x, p1, p2) * 4) / 4 @ kron_weight(w, p1, p2).T).pow(2).sum()
    loss.backward()
    assert p1.grad is not None and p2.grad is not None and float(p2.grad.abs().sum()) > 0
