"""The one accessor for mqcompile's analysis results on fx nodes.

Everything lives under ``node.meta["custom"]["mqcompile"]`` as JSON-only values, so it survives
``torch.export.save``/``load`` and re-export (torch copies ``meta["custom"]`` through tracing).

Example:
    >>> import torch.fx as fx
    >>> g = fx.Graph(); n = g.placeholder("x")
    >>> set_fields(n, modality="vision"); get(n)["modality"]
    'vision'
"""

from __future__ import annotations

import json
from typing import Any

import torch.fx as fx

__all__ = ["KEY", "get", "set_fields", "has", "clear", "is_linear_output"]

KEY = "mqcompile"


def get(node: fx.Node) -> dict[str, Any]:
    """The mqcompile fields of ``node`` (a copy; empty when none)."""
    return dict(node.meta.get("custom", {}).get(KEY, {}))


def has(node: fx.Node, field: str) -> bool:
    return field in node.meta.get("custom", {}).get(KEY, {})


def set_fields(node: fx.Node, **fields: Any) -> None:
    """Merge ``fields`` into the node's mqcompile meta. Values must be JSON-serializable."""
    json.dumps(fields)  # fail here, not later inside torch.export.save
    custom = node.meta.setdefault("custom", {})
    custom.setdefault(KEY, {}).update(fields)


def clear(node: fx.Node) -> None:
    node.meta.get("custom", {}).pop(KEY, None)


def is_linear_output(node: fx.Node) -> bool:
    """The node computing a linear's output: the ``aten.linear`` itself, or ``qlinear``/``wlinear`` after rewrite
    (not ``quantize_act``, which carries the same linear's meta)."""
    info = get(node)
    quantizer = info.get("op", "linear") in ("quantize_act", "quantize_act_asym")
    return node.op == "call_function" and info.get("linear") is True and not quantizer
