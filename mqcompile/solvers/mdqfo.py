"""MDQFO (Morphology-Directed Quantization Function Optimization) for one linear.

Jointly chooses the weight clip ``gamma`` (per output channel), the activation clip ``alpha_m`` (per modality) and
the DABC shifts (mask/centers, per modality) to minimize the modality-balanced loss

    L = mean_m [ |Y_m - Y^_m|^2 / |Y_m|^2  +  beta * morph_m ],
    morph_m = (|mean_t Y^_m - mean_t Y_m|^2 + |std_t Y^_m - std_t Y_m|^2) / (|mean_t Y_m|^2 + |std_t Y_m|^2)

on calibration tokens ``X_m`` (each modality's *relative* error, so 20 text tokens count as much as 1,000 vision
tokens; the morphology term keeps each modality's per-channel output mean/std). Steps: grid search of ``alpha_m``
(separable per modality), grid search of ``gamma_n`` (separable per output channel), ``alpha_m`` again, greedy
mask toggles, then straight-through (STE) gradient refinement of ``gamma``/``alpha`` on sub-sampled tokens. Every
step is accepted only if the full loss drops, so the result never has a higher loss than the start. With
``optimize_act_clips=False`` every ``alpha_m`` stays 1 (no activation clipping) and only ``gamma`` and the masks move.

Example:
    >>> res = optimize_linear(w, {"text": x}, MdqfoOptions())  # doctest: +SKIP
    >>> res.loss_after <= res.loss_start
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..kernels.reference import qrange, weight_scale
from .dabc import DabcPlan

__all__ = ["MdqfoOptions", "MdqfoResult", "fake_quant_weight", "fake_quant_act", "layer_loss", "optimize_linear"]


@dataclass(frozen=True)
class MdqfoOptions:
    w_bits: int = 4
    a_bits: int = 4
    act_asym: bool = False  # asymmetric per-token activation codes (the w4a4asym scheme)
    group_size: int = 0
    alpha_grid: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5)
    gamma_grid: tuple[float, ...] = (1.0, 0.975, 0.95, 0.925, 0.9, 0.875, 0.85, 0.8, 0.75, 0.7)
    morph_weight: float = 0.1
    optimize_clips: bool = True
    optimize_act_clips: bool = True  # False: alpha stays 1 (weight clips and masks only)
    optimize_masks: bool = True
    mask_tries: int = 8
    mask_min_gain: float = 1e-3  # a mask toggle must cut the loss by this fraction (guards against overfitting)
    ste_steps: int = 20
    ste_lr: float = 5e-3
    ste_tokens: int = 128
    time_budget_s: float | None = None
    seed: int = 0


@dataclass
class MdqfoResult:
    gamma: torch.Tensor  # [N, 1] fp32
    alpha: dict[str, float]
    shift: dict[str, torch.Tensor]  # modality -> [K] fp32 (mask * center)
    loss_rtn: float  # gamma = alpha = 1, no shift
    loss_start: float  # at the initial point (DABC plan if given)
    loss_after: float
    steps: list[str] = field(default_factory=list)  # accepted steps, for the report


def _round(x: torch.Tensor, ste: bool) -> torch.Tensor:
    return x + (torch.round(x) - x).detach() if ste else torch.round(x)


def fake_quant_weight(w: torch.Tensor, gamma: torch.Tensor, bits: int, group_size: int = 0, ste: bool = False):
    """Dequantized ``Q_w(W; gamma)`` on the deployed grid (:func:`mqcompile.kernels.reference.weight_scale`)."""
    qmin, qmax = qrange(bits)
    n, k = w.shape
    gs = group_size or k
    groups = -(-k // gs)
    wg = torch.nn.functional.pad(w, (0, groups * gs - k)).reshape(n, groups, gs)
    scale = weight_scale(w, bits, group_size, gamma)[..., None]
    q = torch.clamp(_round(wg / scale, ste), qmin, qmax)
    return (q * scale).reshape(n, -1)[:, :k]


def fake_quant_act(x: torch.Tensor, alpha, bits: int, ste: bool = False, asym: bool = False) -> torch.Tensor:
    """Dequantized per-token ``Q_a(x; alpha)``: the ``quantize_act`` op's numerics, or with ``asym`` those of
    ``quantize_act_asym`` (range ``alpha * [min(x, 0), max(x, 0)]`` on all codes, a zero point per token)."""
    qmin, qmax = qrange(bits)
    if not asym:
        amax = x.detach().abs().amax(-1, keepdim=True)
        scale = (alpha * amax / qmax).clamp_min(1e-12)
        return torch.clamp(_round(x / scale, ste), qmin, qmax) * scale
    lo = alpha * x.detach().amin(-1, keepdim=True).clamp(max=0)
    hi = alpha * x.detach().amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-12)
    zero = torch.clamp(qmin - torch.round(lo.detach() / scale.detach()), qmin, qmax)
    return (torch.clamp(_round(x / scale, ste) + zero, qmin, qmax) - zero) * scale


@dataclass
class _Modality:
    x: torch.Tensor  # [T, K]
    y: torch.Tensor  # [T, N] float output (no bias: it cancels in the error)
    y_norm: float
    y_mean: torch.Tensor
    y_std: torch.Tensor
    morph_norm: float


def _prepare(w: torch.Tensor, x: torch.Tensor) -> _Modality:
    y = x @ w.T
    mean, std = y.mean(0), y.std(0, unbiased=False)
    return _Modality(x, y, float(y.pow(2).sum()) or 1.0, mean, std, float((mean.pow(2) + std.pow(2)).sum()) or 1.0)


def _modality_loss(d: _Modality, y_hat: torch.Tensor, beta: float, per_channel: bool = False):
    err = (d.y - y_hat).pow(2).sum(0) / d.y_norm
    morph = ((y_hat.mean(0) - d.y_mean).pow(2) + (y_hat.std(0, unbiased=False) - d.y_std).pow(2)) / d.morph_norm
    per = err + beta * morph
    return per if per_channel else per.sum()


def _forward(w, wq, d: _Modality, alpha, shift, opts: MdqfoOptions, ste=False, rows=None) -> torch.Tensor:
    x = d.x if rows is None else d.x[rows]
    xq = fake_quant_act(x - shift, alpha, opts.a_bits, ste, opts.act_asym)
    return xq @ wq.T + shift @ w.T


def layer_loss(w, data: dict[str, _Modality], gamma, alpha, shift, opts: MdqfoOptions, per_modality=False):
    wq = fake_quant_weight(w, gamma, opts.w_bits, opts.group_size)
    losses = {
        m: float(_modality_loss(d, _forward(w, wq, d, alpha[m], shift[m], opts), opts.morph_weight))
        for m, d in data.items()
    }
    total = sum(losses.values()) / len(losses)
    return (total, losses) if per_modality else total


def _alpha_grid(w, data, gamma, alpha, shift, opts) -> dict[str, float]:
    wq = fake_quant_weight(w, gamma, opts.w_bits, opts.group_size)
    best = dict(alpha)
    for m, d in data.items():
        scores = {
            a: float(_modality_loss(d, _forward(w, wq, d, a, shift[m], opts), opts.morph_weight))
            for a in opts.alpha_grid
        }
        best[m] = min(scores, key=scores.get)
    return best


def _gamma_grid(w, data, alpha, shift, opts) -> torch.Tensor:
    n = w.shape[0]
    xq = {m: fake_quant_act(d.x - shift[m], alpha[m], opts.a_bits, asym=opts.act_asym) for m, d in data.items()}
    comp = {m: shift[m] @ w.T for m in data}
    errors = []
    for g in opts.gamma_grid:
        wq = fake_quant_weight(w, torch.full((n, 1), g), opts.w_bits, opts.group_size)
        per = sum(
            _modality_loss(d, xq[m] @ wq.T + comp[m], opts.morph_weight, per_channel=True) for m, d in data.items()
        )
        errors.append(per)
    choice = torch.stack(errors).argmin(0)
    return torch.tensor(opts.gamma_grid)[choice].reshape(n, 1)


def _mask_candidates(d: _Modality, mask: torch.Tensor, center: torch.Tensor, tries: int) -> list[int]:
    # channels whose robust offset is large relative to their spread, highest first; plus those already masked
    spread = (d.x - center).abs().mean(0) + 1e-6
    score = center.abs() / spread * d.x.abs().amax(0)
    score[mask] = -1
    add = score.topk(min(tries, int((~mask).sum()))).indices.tolist() if tries else []
    return mask.nonzero().flatten().tolist() + add


def _ste(w, data, gamma, alpha, shift, opts, gen) -> tuple[torch.Tensor, dict[str, float]]:
    g = gamma.clone().requires_grad_(True)
    a = {m: torch.tensor(float(alpha[m]), requires_grad=opts.optimize_act_clips) for m in data}
    optim = torch.optim.Adam([g, *(v for v in a.values() if v.requires_grad)], lr=opts.ste_lr)
    for _ in range(opts.ste_steps):
        optim.zero_grad()
        wq = fake_quant_weight(w, g, opts.w_bits, opts.group_size, ste=True)
        loss = 0.0
        for m, d in data.items():
            t = d.x.shape[0]
            rows = torch.randperm(t, generator=gen)[: opts.ste_tokens] if t > opts.ste_tokens else None
            sub = d if rows is None else _prepare(w, d.x[rows])
            loss = loss + _modality_loss(sub, _forward(w, wq, sub, a[m], shift[m], opts, ste=True), opts.morph_weight)
        (loss / len(data)).backward()
        optim.step()
        with torch.no_grad():
            g.clamp_(0.3, 1.0)
            for v in a.values():
                v.clamp_(0.3, 1.0)
    return g.detach(), {m: float(v.detach()) for m, v in a.items()}


@torch.no_grad()
def optimize_linear(
    weight: torch.Tensor,
    tokens: dict[str, torch.Tensor],
    opts: MdqfoOptions,
    plans: dict[str, DabcPlan] | None = None,
) -> MdqfoResult:
    """Optimize one linear. ``tokens``: modality -> calibration inputs ``[T, K]``; ``plans``: initial DABC plans
    (no shift for modalities without one). With ``optimize_clips=False`` and ``optimize_masks=False`` this only
    evaluates the starting point (the +DABC ablation)."""
    start_time = time.perf_counter()
    gen = torch.Generator().manual_seed(opts.seed)
    w = weight.detach().float()
    n, k = w.shape
    data = {m: _prepare(w, x.float()) for m, x in tokens.items()}
    plans = plans or {}
    center = {m: (plans[m].center if m in plans else torch.zeros(k)) for m in data}
    mask = {m: (plans[m].mask.clone() if m in plans else torch.zeros(k, dtype=torch.bool)) for m in data}
    gamma = torch.ones(n, 1)
    alpha = {m: 1.0 for m in data}
    zero = {m: torch.zeros(k) for m in data}
    shift = {m: center[m] * mask[m] for m in data}
    loss_rtn = layer_loss(w, data, gamma, alpha, zero, opts)
    best = layer_loss(w, data, gamma, alpha, shift, opts)
    result = MdqfoResult(gamma, alpha, shift, loss_rtn, best, best)

    def out_of_time() -> bool:
        return opts.time_budget_s is not None and time.perf_counter() - start_time > opts.time_budget_s

    def accept(name, g, a, s, min_gain: float = 0.0) -> None:
        loss = layer_loss(w, data, g, a, s, opts)
        if loss < result.loss_after * (1 - min_gain):
            result.gamma, result.alpha, result.shift, result.loss_after = g, dict(a), dict(s), loss
            result.steps.append(name)

    act_clips = opts.optimize_clips and opts.optimize_act_clips
    if act_clips:
        accept(
            "alpha_grid",
            result.gamma,
            _alpha_grid(w, data, result.gamma, result.alpha, result.shift, opts),
            result.shift,
        )
    if opts.optimize_clips:
        if not out_of_time():
            accept("gamma_grid", _gamma_grid(w, data, result.alpha, result.shift, opts), result.alpha, result.shift)
        if act_clips and not out_of_time():
            accept(
                "alpha_grid_2",
                result.gamma,
                _alpha_grid(w, data, result.gamma, result.alpha, result.shift, opts),
                result.shift,
            )
    if opts.optimize_masks and plans and not out_of_time():
        for m, d in data.items():
            for ch in _mask_candidates(d, mask[m], center[m], opts.mask_tries):
                trial = mask[m].clone()
                trial[ch] = ~trial[ch]
                before = result.loss_after
                trial_shift = {**result.shift, m: center[m] * trial}
                accept(f"mask_{m}_{ch}", result.gamma, result.alpha, trial_shift, opts.mask_min_gain)
                if result.loss_after < before:
                    mask[m] = trial
                if out_of_time():
                    break
    if opts.optimize_clips and opts.ste_steps and not out_of_time():
        with torch.enable_grad():
            g, a = _ste(w, data, result.gamma, result.alpha, result.shift, opts, gen)
        accept("ste", g, a, result.shift)
    return result
