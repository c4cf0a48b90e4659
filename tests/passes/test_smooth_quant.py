import torch

import mqcompile
from mqcompile import QuantConfig, recipes
from mqcompile.metrics import sqnr_db
from mqcompile.passes.smooth_quant import smoothing_factors


class RMS(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(k) + 0.5)

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class Block(torch.nn.Module):
    """RMSNorm feeding two linears (fold into the norm), LayerNorm feeding one, GELU feeding one (explicit)."""

    def __init__(self):
        super().__init__()
        self.n1, self.q, self.k = RMS(64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
        self.n2, self.up, self.down = torch.nn.LayerNorm(64), torch.nn.Linear(64, 128), torch.nn.Linear(128, 64)

    def forward(self, x):
        h = self.n1(x)
        x = x + self.q(h) * self.k(h)
        return self.down(torch.nn.functional.gelu(self.up(self.n2(x))))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 32, 64, generator=g)
    x[..., 3] *= 40  # planted outlier channels
    x[..., 17] *= 25
    return {"x": x}


def test_factors():
    s = smoothing_factors(torch.tensor([4.0, 0.0, 9.0]), torch.tensor([1.0, 1.0, 4.0]), 0.5)
    torch.testing.assert_close(s, torch.tensor([2.0, (1e-5) ** 0.5 / 1.0, 1.5]))


def test_folds_into_norms_and_beats_rtn():
    torch.manual_seed(0)
    model = Block().eval()
    ep = torch.export.export(model, (), _batch(0))
    calib = [_batch(i) for i in range(1, 5)]
    ref = model(**_batch(9))
    rtn = mqcompile.quantize(ep, QuantConfig(), progress=False)
    sq = mqcompile.quantize(ep, QuantConfig(algorithms=recipes.SMOOTHQUANT), calibration=calib, progress=False)
    assert sq.report["smooth_quant"] == {"groups": 3, "linears": 4, "folded": 3, "explicit": 1}
    state = sq.exported_program.state_dict
    assert "down.mq_act_multiplier" in state and "q.mq_act_multiplier" not in state
    assert not torch.equal(state["n1.weight"], ep.state_dict["n1.weight"])  # folded copy ...
    assert torch.equal(ep.state_dict["n1.weight"], model.n1.weight)  # ... the input program is untouched
    # migration keeps the function: at W8A8 the smoothed program is close to float
    assert sqnr_db(ref, sq.module()(**_batch(9))) > sqnr_db(ref, rtn.module()(**_batch(9)))
    w8 = mqcompile.quantize(
        ep, QuantConfig(algorithms=recipes.SMOOTHQUANT, default="w8a8"), calibration=calib, progress=False
    )
    assert sqnr_db(ref, w8.module()(**_batch(9))) > 30
