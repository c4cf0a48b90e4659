import pytest

import mqcompile
from mqcompile import CalibrationError, QuantConfig, recipes
from tests.conftest import toy_inputs


def test_rtn_skips_calibration(toy):
    qp = mqcompile.quantize(toy[2], QuantConfig(), calibration=[toy_inputs(1)], progress=False)
    assert qp.report["calibrate"] == {"batches": 0, "linears": 0}


def test_smoothquant_calibrates_every_linear(toy):
    qp = mqcompile.quantize(
        toy[2], QuantConfig(algorithms=recipes.SMOOTHQUANT), calibration=[toy_inputs(1)], progress=False
    )
    assert qp.report["calibrate"] == {"batches": 1, "linears": 5}


def test_missing_calibration_says_how(toy):
    with pytest.raises(CalibrationError, match=r"calibration=\[batch"):
        mqcompile.quantize(toy[2], QuantConfig(algorithms=recipes.SMOOTHQUANT), progress=False)
