"""select_schemes: decide each linear's quantization scheme from the config.

Needs: ``tag_modality``. Guarantees: each linear's meta has ``scheme`` (a key of ``mqcompile.config.SCHEMES``);
linears whose weight is not known ahead of time (``weight == "dynamic"``) get ``float`` with a warning. An
``overrides`` or (non-default) ``keep_float`` pattern that matches no linear is warned about with examples of the
names there are: a typo there would otherwise silently quantize what was meant to be kept.
"""

from __future__ import annotations

import logging
from fnmatch import fnmatchcase

from torch.export import ExportedProgram

from ..config import KEEP_FLOAT, SCHEMES
from ..graph import meta
from ..graph.linears import base_name, linear_nodes
from .base import PassContext, PassResult

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts: dict[str, int] = {}
    names = [base_name(meta.get(n)["name"]) for n in linear_nodes(ep.graph)]
    patterns = [p for p, _ in ctx.config.overrides] + [p for p in ctx.config.keep_float if p not in KEEP_FLOAT]
    for pattern in patterns:
        if names and not any(fnmatchcase(name, pattern) for name in names):
            log.warning("pattern %r matches no linear (names look like %s)", pattern, names[:3])
    for node in linear_nodes(ep.graph):
        info = meta.get(node)
        chosen = ctx.config.scheme_for(base_name(info["name"]), info["modality"])
        if info["weight"] == "dynamic" and not chosen.is_float:
            log.warning("linear %s has a weight computed at run time; it stays float", info["name"])
            chosen = SCHEMES["float"]
        meta.set_fields(node, scheme=chosen.name)
        counts[chosen.name] = counts.get(chosen.name, 0) + 1
    return PassResult(ep, counts)
