import pytest
import torch

from mqcompile.kernels import reference as ref
from mqcompile.solvers import MdqfoOptions, fake_quant_act, fake_quant_weight, optimize_linear, plan_dabc


def _problem(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 48, generator=g) * 0.05
    w[3] *= 8  # an outlier row
    text = torch.randn(40, 48, generator=g)
    text[:, 7] += 30  # massive activation channel
    vision = torch.randn(300, 48, generator=g) * 0.5
    vision[:, 11] *= 25  # symmetric long tail
    return w, {"text": text, "vision": vision}


def test_fake_quant_matches_the_ops():
    w, tokens = _problem(0)
    gamma = torch.full((64, 1), 0.9)
    codes, scale = ref.quantize_weight_ref(w, 4, 0, gamma)
    torch.testing.assert_close(fake_quant_weight(w, gamma, 4), codes.float() * scale)
    q, s = ref.quantize_act_ref(tokens["text"], torch.tensor([0.8]), None, 4)
    torch.testing.assert_close(fake_quant_act(tokens["text"], 0.8, 4), q.float() * s)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "opts,use_plans",
    [
        (MdqfoOptions(optimize_masks=False, ste_steps=5), False),  # clips only
        (MdqfoOptions(ste_steps=5), True),  # full
    ],
)
def test_never_increases_its_starting_loss_and_improves_here(seed, opts, use_plans):
    w, tokens = _problem(seed)
    plans = {m: plan_dabc(x) for m, x in tokens.items()} if use_plans else None
    res = optimize_linear(w, tokens, opts, plans)
    assert res.loss_after <= res.loss_start
    assert res.loss_after < 0.9 * res.loss_rtn
    assert set(res.alpha) == {"text", "vision"} and res.gamma.shape == (64, 1)
    assert all(0.3 <= a <= 1.0 for a in res.alpha.values())
    if use_plans:
        assert res.shift["text"][7] != 0 and res.loss_start < res.loss_rtn  # DABC alone already helps


def test_evaluation_only_mode_keeps_the_plan():
    w, tokens = _problem(3)
    plans = {m: plan_dabc(x) for m, x in tokens.items()}
    res = optimize_linear(w, tokens, MdqfoOptions(optimize_clips=False, optimize_masks=False), plans)
    assert res.loss_after == res.loss_start and res.steps == []
    assert torch.equal(res.shift["text"], plans["text"].shift)


def test_deterministic_under_seed():
    w, tokens = _problem(4)
    a = optimize_linear(w, tokens, MdqfoOptions(ste_steps=5, seed=1))
    b = optimize_linear(w, tokens, MdqfoOptions(ste_steps=5, seed=1))
    assert a.loss_after == b.loss_after and torch.equal(a.gamma, b.gamma)


def test_without_activation_clips_alpha_stays_one_and_weight_clips_still_move():
    w, tokens = _problem(5)
    res = optimize_linear(w, tokens, MdqfoOptions(optimize_act_clips=False, ste_steps=5))
    assert res.alpha == {"text": 1.0, "vision": 1.0}
    assert not any(step.startswith("alpha") for step in res.steps)
    assert res.loss_after <= res.loss_start and bool((res.gamma < 1).any())
    with_clips = optimize_linear(w, tokens, MdqfoOptions(ste_steps=5))
    assert any(a < 1 for a in with_clips.alpha.values())  # the same problem does want activation clips
