"""Issue #15 case 3: linears that are not ``aten.linear`` (GPT-2's Conv1D ``addmm``, ``x @ W``, ``torch.matmul``,
decomposed programs) used to be skipped without a word (GPT-2: 0 of 8 found, "text float 1, 1.000x")."""

import logging

import pytest
import torch

import mqcompile
from mqcompile import QuantConfig
from mqcompile.passes import PassContext
from mqcompile.passes.canonicalize_linears import run
from tests.tiny_models import RECIPES, tiny_gpt2

aten = torch.ops.aten


class Conv1D(torch.nn.Module):
    """GPT-2's Conv1D: the weight stored ``[in, out]``."""

    def __init__(self, nx, nf):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(nx, nf) / nx**0.5)
        self.bias = torch.nn.Parameter(torch.randn(nf))

    def forward(self, x):
        shape = x.shape[:-1] + (self.weight.shape[1],)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(shape)


class Forms(torch.nn.Module):
    """Every form the pass rewrites: addmm through a flatten, ``x @ W``, ``matmul(x, W.t())``, ``mm``."""

    def __init__(self):
        super().__init__()
        self.c = Conv1D(16, 32)
        self.w = torch.nn.Parameter(torch.randn(32, 24) / 32**0.5)
        self.v = torch.nn.Parameter(torch.randn(20, 24) / 24**0.5)  # [out, in], used transposed
        self.u = torch.nn.Parameter(torch.randn(20, 8) / 20**0.5)

    def forward(self, x):
        h = torch.matmul(self.c(x) @ self.w, self.v.t())
        return torch.mm(h.reshape(-1, 20), self.u)


def _ops(ep):
    return [n.target for n in ep.graph.nodes if n.op == "call_function"]


def _run(ep):
    return run(mqcompile.graph.export.copy_program(ep), PassContext(QuantConfig()))


@pytest.mark.parametrize("tokens", [1, 7])
def test_every_form_becomes_a_linear_and_computes_the_same(tokens):
    torch.manual_seed(0)
    model, x = Forms().eval(), torch.randn(2, tokens, 16)
    ep = torch.export.export(model, (x,))
    result = _run(ep)
    assert result.counts["linears"] == 4 and result.counts["float_matmuls"] == []
    # c.weight, w and u are read [in, out]: stored transposed once; v is read through .t(): kept as it is
    assert result.counts["transposed_weights"] == 3 and result.counts["folded_flattens"] == 1
    ops = _ops(result.program)
    assert ops.count(aten.linear.default) == 4
    assert not {aten.addmm.default, aten.mm.default, aten.matmul.default} & set(ops)
    assert result.program.state_dict["c.weight"].shape == (32, 16) and result.program.state_dict["v"].shape == (20, 24)
    assert ep.state_dict["c.weight"].shape == (16, 32)  # the user's program is not touched
    first = next(n for n in result.program.graph.nodes if n.target is aten.linear.default)
    assert first.args[0].op == "placeholder"  # the flatten around the Conv1D is folded: one row per token
    torch.testing.assert_close(result.program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_decomposed_program_quantizes_like_the_original(dynamic):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False)).eval()
    x = torch.randn(2, 5, 16)
    shapes = ({1: torch.export.Dim.AUTO},) if dynamic else None
    plain = torch.export.export(model, (x,), dynamic_shapes=shapes)
    decomposed = torch.export.export(model, (x,), dynamic_shapes=shapes).run_decompositions()
    assert aten.linear.default not in _ops(decomposed)
    qp = mqcompile.quantize(decomposed, progress=False)
    assert qp.report["find_linears"]["linears"] == 2
    assert qp.report["canonicalize_linears"]["transposed_weights"] == 0  # decomposition reads W through permute
    assert torch.equal(qp.module()(x), mqcompile.quantize(plain, progress=False).module()(x))
    if dynamic:
        assert qp.module()(torch.randn(2, 9, 16)).shape == (2, 9, 8)


class Mixed(torch.nn.Module):
    """What stays float: a weight read both ways, one also read by another op, addmm with beta, bmm."""

    def __init__(self):
        super().__init__()
        self.both = torch.nn.Parameter(torch.randn(16, 16))
        self.shared = torch.nn.Parameter(torch.randn(16, 16))
        self.scaled = torch.nn.Parameter(torch.randn(16, 16))
        self.bias = torch.nn.Parameter(torch.randn(16))
        self.batched = torch.nn.Parameter(torch.randn(2, 16, 16))

    def forward(self, x):
        h = x @ self.both + x @ self.both.t()
        h = h @ self.shared + self.shared.sum()
        h = torch.addmm(self.bias, h, self.scaled, beta=2.0)
        return torch.bmm(h.unsqueeze(0).expand(2, -1, -1), self.batched)


def test_what_cannot_be_a_linear_stays_float_and_is_named(caplog):
    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(4, 16)
    ep = torch.export.export(model, (x,))
    with caplog.at_level(logging.WARNING):
        qp = mqcompile.quantize(ep, progress=False)
    named = qp.report["float_matmuls"]
    assert {n.rsplit("weight ", 1)[1].rstrip(")") for n in named} == {"both", "shared", "scaled", "batched"}
    assert len(named) == 5  # "both" twice
    assert "5 matmul-like nodes with a constant weight could not be made linears and stay float" in caplog.text
    assert "5 matmul-like nodes with constant weights left float" in qp.summary()
    torch.testing.assert_close(qp.module()(x), model(x))  # nothing quantized, nothing changed


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_gpt2_quantizes_its_eight_conv1d_linears(recipe):
    model = tiny_gpt2()
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    ep = torch.export.export(model, (), {"input_ids": ids})
    calibration = [{"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))}]
    qp = mqcompile.quantize(ep, QuantConfig(default="w8a8", algorithms=RECIPES[recipe]), calibration, progress=False)
    assert qp.report["canonicalize_linears"]["linears"] == 8
    schemes = {r.name: r.scheme for r in qp.linears()}
    assert len(schemes) == 9 and schemes.pop("lm_head") == "float"  # the tied output head stays float
    assert set(schemes.values()) == {"w8a8"} and "transformer.h.1.mlp.c_fc" in schemes
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        out = qp.module()(input_ids=ids).logits
    error = float((out - ref).norm() / ref.norm())
    assert error < 0.05, error
