"""Issue #19 item 1 (dtype part): bf16 and fp16 programs quantize end to end with every calibrated algorithm, their
statistics and solvers in fp32, the deployed program in the program's dtype and as close to its float self as the
fp32 program's quantization is to its own."""

import pytest
import torch

import mqcompile
from mqcompile import QuantConfig, recipes

RECIPES = {
    "morphoquant+rotate": recipes.MORPHOQUANT + (recipes.Rotate(),),
    "rotate+gptq": (recipes.Rotate(), recipes.GPTQ()),
    "block+lt": recipes.MORPHOQUANT + (recipes.Rotate(), recipes.BlockMDQFO(steps=2, transform=True)),
}


def _tiny_lm(dtype):
    from mqcompile.models.qwen2_text import export_causal_lm
    from tests.tiny_models import tiny_qwen2

    model = tiny_qwen2().to(dtype)
    ids = torch.arange(32).reshape(2, 16) % 256
    return export_causal_lm(model, ids, torch.ones_like(ids))


def _batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(0, 256, (1, 32), generator=g),
            "attention_mask": torch.ones(1, 32, dtype=torch.long),
        }
        for _ in range(n)
    ]


def _logits(module, batch):
    out = module(**batch)
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_half_precision_programs_quantize_end_to_end(dtype, recipe):
    torch.set_num_threads(1)
    calib, probe = _batches(3, 0), _batches(1, 1)[0]
    cos = torch.nn.functional.cosine_similarity
    errors = {}
    for dt in (torch.float32, dtype):
        ep = _tiny_lm(dt)
        qp = mqcompile.quantize(ep, QuantConfig(algorithms=RECIPES[recipe]), calibration=calib, progress=False)
        ref, out = _logits(ep.module(), probe), _logits(qp.module(), probe)
        assert out.dtype == dt and torch.isfinite(out).all()
        errors[dt] = cos(out.float().flatten(), ref.float().flatten(), dim=0).item()
        tensors = {**qp.exported_program.state_dict, **qp.exported_program.constants}
        grids = {
            k: t.dtype for k, t in tensors.items() if k.rsplit(".", 1)[-1] in ("mq_w_scale", "mq_act_clip", "mq_shift")
        }
        assert grids and set(grids.values()) == {torch.float32}  # scales, clips and DABC shifts solved in fp32
    # the half program's quantization is as faithful to its float self as the fp32 one's (its own rounding aside)
    assert errors[dtype] > errors[torch.float32] - 0.02, errors
