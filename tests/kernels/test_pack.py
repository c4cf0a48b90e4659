import pytest
import torch

from mqcompile.kernels import pack_int4, packed_cols, unpack_int4


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (3, 7), (5, 64), (2, 3, 9), (4, 129)])
def test_round_trip(shape):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, shape, generator=g, dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*shape[:-1], packed_cols(shape[-1]))
    assert torch.equal(unpack_int4(packed, shape[-1]), q)


def test_nibble_layout_low_first():
    # element 0 -> low nibble, element 1 -> high nibble, two's complement
    packed = pack_int4(torch.tensor([[1, -1, -8]], dtype=torch.int8))
    assert packed.tolist() == [[0xF1, 0x08]]


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([[8]], dtype=torch.int8))
    with pytest.raises(TypeError):
        pack_int4(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="K=5"):
        unpack_int4(torch.zeros(1, 2, dtype=torch.uint8), 5)
