import pytest
import torch

from mqcompile.solvers import block_size, rotate_act, rotate_weight, rotation_block
from mqcompile.solvers.rotation import hadamard


@pytest.mark.parametrize("b", [2, 8, 64, 256])
def test_block_is_orthogonal_and_seeded(b):
    q = rotation_block(b, seed=3)
    torch.testing.assert_close(q @ q.T, torch.eye(b), atol=1e-5, rtol=0)
    assert torch.equal(q, rotation_block(b, seed=3))
    assert not torch.equal(q, rotation_block(b, seed=4))


def test_hadamard_rejects_non_powers_of_two():
    with pytest.raises(ValueError, match="power of two"):
        hadamard(12)


@pytest.mark.parametrize(
    ("k", "cap", "want"),
    [(896, 256, 128), (4864, 256, 256), (2048, 256, 256), (384, 512, 128), (96, 256, 32), (7, 256, 1), (1280, 64, 64)],
)
def test_block_size(k, cap, want):
    assert block_size(k, cap) == want


@pytest.mark.parametrize(("tokens", "k", "b"), [(1, 96, 32), (37, 384, 128), (5, 64, 64)])
def test_rotation_keeps_the_linear(tokens, k, b):
    g = torch.Generator().manual_seed(k)
    x, w = (
        torch.randn(tokens, k, generator=g, dtype=torch.float64),
        torch.randn(11, k, generator=g, dtype=torch.float64),
    )
    q = rotation_block(b).double()
    torch.testing.assert_close(rotate_act(x, q) @ rotate_weight(w, q).T, x @ w.T)


def test_rotation_spreads_an_outlier_channel():
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    x[:, 5] *= 100
    xr = rotate_act(x, rotation_block(128))
    # the per-token absmax (what sets the int4 step) drops by about sqrt(B)
    assert float((x.abs().amax(1) / xr.abs().amax(1)).median()) > 5
