"""The linears of a program and the inputs that carry each modality: helpers every pass and calibration share.

Example:
    >>> [n.name for n in linear_nodes(ep.graph)]  # doctest: +SKIP
    ['linear', 'linear_1']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.fx as fx
from torch.export import ExportedProgram

from ..config import MODALITIES, SCHEMES
from ..errors import ConfigError
from . import meta
from .export import placeholder_targets, user_input_nodes

__all__ = [
    "DEFAULT_SOURCES",
    "linear_nodes",
    "act_quantized",
    "base_name",
    "float_matmuls",
    "resolve_sources",
    "text_source",
    "modality_id_steps",
    "token_modality_ids",
]

log = logging.getLogger(__name__)

# Input names that carry a modality when ``QuantConfig.sources`` is empty.
DEFAULT_SOURCES = {
    "input_ids": "text",
    "inputs_embeds": "text",
    "pixel_values": "vision",
    "pixel_values_videos": "vision",
    "input_features": "audio",
    "decoder_input_ids": "text",
}


def linear_nodes(graph: fx.Graph) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default]


# matmul-like ops, with the operand index a weight would be
_MATMULS = {
    torch.ops.aten.addmm.default: 2,  # GPT-2's Conv1D: addmm(bias, x, W [K, N])
    torch.ops.aten.mm.default: 1,
    torch.ops.aten.matmul.default: 1,
    torch.ops.aten.bmm.default: 1,
}
_VIEWS = {torch.ops.aten.t.default, torch.ops.aten.permute.default, torch.ops.aten.transpose.int}


def float_matmuls(ep: ExportedProgram) -> list[str]:
    """Matmul-like nodes (``addmm``, ``mm``, ``matmul``, ``bmm``) whose weight operand is a parameter, buffer or
    constant (possibly transposed): after ``canonicalize_linears``, the linears it could not make ``aten.linear``,
    which stay float. Each as
    ``"<node> (<op>, weight <state-dict name>)"``."""
    targets = placeholder_targets(ep)
    out = []
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target not in _MATMULS or len(node.args) <= _MATMULS[node.target]:
            continue
        w = node.args[_MATMULS[node.target]]
        while isinstance(w, fx.Node) and w.op == "call_function" and w.target in _VIEWS:
            w = w.args[0]
        target = targets.get(w.name, (None, None))[1] if isinstance(w, fx.Node) and w.op == "placeholder" else None
        if target is not None:
            out.append(f"{node.name} ({node.target.__name__}, weight {target})")
    return out


def base_name(name: str) -> str:
    """A linear's name without the ``#k`` that ``find_linears`` gives the k-th further use of a shared weight (the
    name config patterns match)."""
    return name.split("#", 1)[0]


def act_quantized(node: fx.Node) -> bool:
    """The linear's activations are quantized and its weight is known ahead of time."""
    info = meta.get(node)
    return SCHEMES[info["scheme"]].act_bits is not None and info["weight"] != "dynamic"


def resolve_sources(ep: ExportedProgram, configured: Mapping[str, str]) -> dict[str, str]:
    """Input name -> modality: ``configured`` (checked against the program's inputs), else the defaults present,
    else every input as text."""
    inputs = user_input_nodes(ep)
    if configured:
        missing = sorted(set(configured) - set(inputs))
        if missing:
            raise ConfigError(f"QuantConfig.sources names {missing}, but the program's inputs are {sorted(inputs)}")
        return dict(configured)
    found = {name: mod for name, mod in DEFAULT_SOURCES.items() if name in inputs}
    if not found:
        log.info("no known modality inputs among %s; treating all inputs as text", sorted(inputs))
        found = {name: "text" for name in inputs}
    return found


def text_source(ep: ExportedProgram, configured: Mapping[str, str]) -> fx.Node | None:
    """The integer text input whose token ids mark each token's modality (None when there is none)."""
    inputs = user_input_nodes(ep)
    for name, modality in resolve_sources(ep, configured).items():
        val = inputs[name].meta.get("val")
        if modality == "text" and isinstance(val, torch.Tensor) and not val.is_floating_point():
            return inputs[name]
    return None


def modality_id_steps(token_ids: Mapping[str, Sequence[int]]) -> list[tuple[int, int]]:
    """The per-token modality rule as ``(token id, index into MODALITIES)`` steps, applied in order from all-text:
    ``ids = where(tokens == token_id, index, ids)``. The graph (``insert_modality_ids``) and calibration
    (:func:`token_modality_ids`) both build their ids from these steps."""
    return [(int(value), MODALITIES.index(modality)) for modality, values in token_ids.items() for value in values]


def token_modality_ids(tokens: torch.Tensor, token_ids: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """Per-token index into MODALITIES, eagerly, with the same aten ops the graph uses."""
    ids = torch.ops.aten.zeros_like.default(tokens)
    for value, index in modality_id_steps(token_ids):
        ids = torch.ops.aten.where.ScalarSelf(torch.ops.aten.eq.Scalar(tokens, value), index, ids)
    return ids
