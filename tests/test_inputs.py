"""Issue #15 case 5: inputs that do not fit the program used to end in torch's guard ``AssertionError``, a
``ValueError`` about kwargs, or an ``IndexError`` fourteen frames deep in the embedding; and a program on the meta
device in a raw error from ``check_program``."""

import pytest
import torch

import mqcompile
from mqcompile import CalibrationError, InputError, QuantConfig, UnsupportedProgramError, recipes
from tests.tiny_models import tiny_gpt2


@pytest.fixture(scope="module")
def gpt2():
    model = tiny_gpt2()
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    ep = torch.export.export(model, (), {"input_ids": ids})
    return ep, mqcompile.quantize(ep, progress=False), ids


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.full((2, 12), 128), "holds token ids 128..128, but the embedding it indexes has 128 rows"),
        (torch.full((2, 12), -1), "holds token ids -1..-1"),
        (torch.zeros(2, 13, dtype=torch.long), "has shape \\(2, 13\\), the program expects \\(2, 12\\)"),
        (torch.zeros(12, dtype=torch.long), "has shape \\(12,\\)"),
        (torch.zeros(2, 12, dtype=torch.int32), "has dtype torch.int32, expected torch.int64"),
        ([[1, 2]], "must be a tensor, got list"),
    ],
)
def test_a_call_with_a_wrong_input_says_what_is_wrong(gpt2, bad, message):
    _, qp, _ = gpt2
    with pytest.raises(InputError, match=f"input 'input_ids' {message}"):
        qp.module()(input_ids=bad)


def test_a_call_must_pass_inputs_as_exported(gpt2):
    _, qp, ids = gpt2
    with pytest.raises(InputError, match="0 positional .* and keywords \\['input_ids'\\]: call it the same way"):
        qp.module()(ids)
    with pytest.raises(InputError, match="keywords \\['attention_mask', 'input_ids'\\]; the program was exported"):
        qp.module()(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert qp.module()(input_ids=ids).logits.shape == (2, 12, 128)  # and a right call runs


def test_calibration_with_token_ids_outside_the_vocabulary_is_refused_up_front(gpt2):
    ep, _, _ = gpt2
    with pytest.raises(CalibrationError, match="calibration batch 1: input 'input_ids' holds token ids .*500"):
        mqcompile.quantize(
            ep,
            QuantConfig(algorithms=recipes.SMOOTHQUANT),
            calibration=[{"input_ids": torch.zeros(2, 12, dtype=torch.long)}, {"input_ids": torch.full((2, 12), 500)}],
            progress=False,
        )


def test_a_dim_outside_its_exported_range_is_an_input_error():
    model = torch.nn.Linear(16, 8)
    t = torch.export.Dim("t", min=4, max=8)
    ep = torch.export.export(model, (torch.randn(2, 5, 16),), dynamic_shapes=({1: t},))
    module = mqcompile.quantize(ep, progress=False).module()
    assert module(torch.randn(2, 8, 16)).shape == (2, 8, 8)
    for tokens in (3, 9):
        with pytest.raises(InputError, match="Guard failed: .*ranges.*\\(4, 8\\).*Dim range that covers"):
            module(torch.randn(2, tokens, 16))


def test_nan_inputs_still_reach_the_program_at_inference():
    # the check must not refuse NaN at inference: garbage stays visible in the output (case 6)
    ep = torch.export.export(torch.nn.Linear(16, 8), (torch.randn(4, 16),))
    x = torch.randn(4, 16)
    x[1, 3] = float("nan")
    out = mqcompile.quantize(ep, progress=False).module()(x)
    assert out[1].isnan().all() and not out[[0, 2, 3]].isnan().any()


def test_a_program_on_the_meta_device_is_refused_with_what_to_do():
    with torch.device("meta"):
        model = torch.nn.Linear(16, 8)
    ep = torch.export.export(model, (torch.randn(2, 16, device="meta"),))
    with pytest.raises(UnsupportedProgramError, match="2 weights of the program are on the meta device.*to_empty"):
        mqcompile.quantize(ep, progress=False)


def test_the_module_is_the_program_and_compile_deploys_the_bare_one(gpt2):
    _, qp, ids = gpt2
    module = qp.module()
    assert isinstance(module.program, torch.fx.GraphModule)
    torch.testing.assert_close(module(input_ids=ids).logits, qp.exported_program.module()(input_ids=ids).logits)
