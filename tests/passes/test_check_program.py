import pytest
import torch

from mqcompile import NonFiniteError, QuantConfig, UnsupportedProgramError
from mqcompile.passes import PassContext, check_program


def test_counts_checked_tensors(toy):
    assert check_program.run(toy[2], PassContext(QuantConfig())).counts == {"tensors_checked": 10}


def test_rejects_non_program(toy):
    with pytest.raises(UnsupportedProgramError, match="torch.export.export"):
        check_program.run(toy[0], PassContext(QuantConfig()))


def test_rejects_nan_weight():
    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    ep = torch.export.export(model, (torch.randn(1, 4),))
    with pytest.raises(NonFiniteError, match="weight"):
        check_program.run(ep, PassContext(QuantConfig()))
