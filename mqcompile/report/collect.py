"""What the quantization report shows, measured on a few batches: per-linear output SQNR along the depth (by
modality path and, for fused linears, by token modality), the activations of chosen linears before and as
quantized (after the rotation and DABC's shift), the channels DABC moved, MDQFO's losses, bytes.

Example:
    >>> data = collect(float_ep, qp, [batch])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.export import ExportedProgram

from ..config import MODALITIES
from ..graph import meta
from ..graph.interpret import run_observed
from ..graph.linears import token_modality_ids
from ..inputs import as_batch

__all__ = ["ReportData", "collect"]

_ROWS = 4096  # activation rows kept per linear and token group (histograms and profiles need no more)


@dataclass
class ReportData:
    layers: list[tuple[str, str, float]] = field(default_factory=list)  # (linear, modality path, SQNR dB), in order
    token_layers: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # token modality -> (index, dB)
    # chosen linear -> {"path": modality path, "before": {group: [T, K]}, "after": {group: [T, K]}}
    morphology: dict[str, dict] = field(default_factory=dict)
    dabc: dict[str, dict[str, int]] = field(default_factory=dict)  # linear -> {shift row: channels moved}
    mdqfo: dict[str, list[float]] = field(default_factory=dict)  # linear -> [RTN, start, after] loss
    bytes: dict[str, int] = field(default_factory=dict)
    summary: str = ""
    recipe: str = ""


def _groups(x: torch.Tensor, ids: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Rows of ``x`` ([..., K]) by token modality when ``ids`` (per-token indices into MODALITIES) matches its
    leading dims, else all as ``all``; at most ``_ROWS`` rows each, evenly spaced."""
    rows = x.detach().float().reshape(-1, x.shape[-1])
    out = {}
    if ids is not None and tuple(ids.shape) == tuple(x.shape[:-1]):
        flat = ids.reshape(-1)
        for index, name in enumerate(MODALITIES):
            if (flat == index).any():
                out[name] = rows[flat == index]
    else:
        out["all"] = rows
    return {k: v[:: max(1, len(v) // _ROWS)][:_ROWS] for k, v in out.items()}


def _append(store: dict, name: str, groups: dict[str, torch.Tensor]) -> None:
    for key, rows in groups.items():
        store.setdefault(name, {}).setdefault(key, []).append(rows)


def collect(
    float_ep: ExportedProgram, qp, batches: Sequence, linears: Sequence[str] | None = None, per_path: int = 1
) -> ReportData:
    """Measure the report's data on ``batches`` (kwargs dicts or ``(args, kwargs)``). ``linears``: names whose
    activations to show; default the ``per_path`` worst (lowest SQNR) of each modality path."""
    from ..evaluation.layer_sqnr import layer_sqnr, tagged_reference

    config = qp.config
    reference = tagged_reference(float_ep, config)  # once: the analysis passes cost a copy of the program
    token_ids = dict(config.modality_token_ids)
    data = ReportData(summary=qp.summary(), recipe=config.recipe)
    per_layer: dict[str, list] = {}
    for batch in batches:
        args, kwargs = as_batch(batch)
        ids = kwargs.get("input_ids")
        groups = None
        if token_ids and isinstance(ids, torch.Tensor):
            mods = token_modality_ids(ids, token_ids)
            groups = {name: mods == i for i, name in enumerate(MODALITIES) if (mods == i).any()}
        for name, (path, value) in layer_sqnr(float_ep, qp.exported_program, kwargs, config, groups, reference).items():
            per_layer.setdefault(name, [path, []])[1].append(value)
    order = [r.name for r in qp.linears()]
    mean = {name: sum(v) / len(v) for name, (_, v) in per_layer.items()}
    data.layers = [(name, per_layer[name][0], mean[name]) for name in order if name in per_layer]
    for index, name in enumerate(order):
        for group in MODALITIES:
            key = f"{name}@{group}"
            if key in mean and per_layer[name][0] == "fused":
                data.token_layers.setdefault(group, []).append((index, mean[key]))
    if linears is None:
        finite = [(v, n, p) for n, p, v in data.layers if v != float("inf")]
        linears = []
        for path in sorted({p for _, _, p in finite}):
            linears += [n for _, n, p in sorted(x for x in finite if x[2] == path)[:per_path]]
    data.morphology = _morphology(reference, qp, batches, list(linears), token_ids)
    data.dabc = _dabc_moves(qp)
    data.mdqfo = dict(qp.report.get("mdqfo", {}).get("losses", {}))
    data.bytes = {k: int(qp.report.get(k, 0)) for k in ("bytes_before", "bytes_after", "bytes_rotation")}
    return data


def _is_quantize_act(node) -> bool:
    quantizers = (torch.ops.mqcompile.quantize_act.default, torch.ops.mqcompile.quantize_act_asym.default)
    return node.op == "call_function" and node.target in quantizers


def _morphology(ref_ep, qp, batches, names: list[str], token_ids: dict) -> dict[str, dict]:
    """Inputs of the chosen linears in the (tagged) float program, and in the quantized program as ``quantize_act``
    sees them less the DABC shift of each token's modality (what is rounded to the int grid)."""
    wanted = set(names)
    paths = {r.name: r.modality for r in qp.linears()}
    before: dict = {}
    after: dict = {}
    for batch in batches:
        args, kwargs = as_batch(batch)
        ids = kwargs.get("input_ids")
        mods = token_modality_ids(ids, token_ids) if token_ids and isinstance(ids, torch.Tensor) else None

        def float_input(node, a, out, mods=mods):
            name = meta.get(node)["name"]
            if name in wanted:
                _append(before, name, _groups(a[0], mods))

        def quantized_input(node, a, out, mods=mods):
            name = meta.get(node)["name"]
            if name not in wanted:
                return
            x, row_ids, shift = a[0], a[2], a[4] if len(a) > 4 else None
            if shift is not None:
                index = row_ids if row_ids is not None else torch.zeros(x.shape[:-1], dtype=torch.long)
                x = x.float() - shift.float()[index]
            _append(after, name, _groups(x, mods))

        run_observed(ref_ep, args, kwargs, meta.is_linear_output, float_input)
        run_observed(qp.exported_program, args, kwargs, _is_quantize_act, quantized_input)
    out = {}
    for name in names:
        if name in before:
            out[name] = {
                "path": paths.get(name, "?"),
                "before": {k: torch.cat(v) for k, v in before[name].items()},
                "after": {k: torch.cat(v) for k, v in after.get(name, {}).items()},
            }
    return out


def _dabc_moves(qp) -> dict[str, dict[str, int]]:
    """Channels with a DABC shift, per linear and shift row, from the program's ``mq_shift`` tables (rows are
    MODALITIES for a routed linear, else one row)."""
    state = qp.exported_program.state_dict
    out = {}
    for node in qp.exported_program.graph.nodes:
        info = meta.get(node)
        if not _is_quantize_act(node) or len(node.args) < 5 or node.args[4] is None:
            continue
        target = next(
            (s.target for s in qp.exported_program.graph_signature.input_specs if s.arg.name == node.args[4].name), None
        )
        table = state.get(target) if target is not None else qp.exported_program.constants.get(target)
        if table is None:
            continue
        rows = MODALITIES if table.shape[0] == len(MODALITIES) else ("all",)
        out[info["name"]] = {row: int((table[i] != 0).sum()) for i, row in enumerate(rows)}
    return out
