"""select_schemes: decide each linear's quantization scheme from the config.

Needs: ``tag_modality``. Guarantees: each linear's meta has ``scheme`` (a key of ``mqcompile.config.SCHEMES``);
linears whose weight is not known ahead of time (``weight == "dynamic"``) get ``float`` with a warning.
"""

from __future__ import annotations

import logging

from torch.export import ExportedProgram

from ..config import SCHEMES
from ..graph import meta
from ..graph.linears import linear_nodes
from .base import PassContext, PassResult

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(ep: ExportedProgram, ctx: PassContext) -> PassResult:
    counts: dict[str, int] = {}
    for node in linear_nodes(ep.graph):
        info = meta.get(node)
        chosen = ctx.config.scheme_for(info["name"], info["modality"])
        if info["weight"] == "dynamic" and not chosen.is_float:
            log.warning("linear %s has a weight computed at run time; it stays float", info["name"])
            chosen = SCHEMES["float"]
        meta.set_fields(node, scheme=chosen.name)
        counts[chosen.name] = counts.get(chosen.name, 0) + 1
    return PassResult(ep, counts)
