"""Calibration statistics of every linear's input, per modality of its tokens.

For each linear (by name) and each modality key (``text``/``vision``/``audio`` for routed fused linears and
single-modality linears; ``shared`` for fused linears without per-token routing) this keeps per-channel ``absmax``,
``min``, ``max``, ``sum``, the token ``count``, and a bounded uniform reservoir of input tokens (for reconstruction
losses and robust quantiles). Memory is bounded by ``reservoir_tokens`` per linear and modality, whatever the
number of batches.

Example:
    >>> stats = collect(ep, batches, token_ids={"vision": (151655,)})  # doctest: +SKIP
    >>> stats["model.layers.0.mlp.down_proj"].modalities["text"].absmax.shape  # doctest: +SKIP
    torch.Size([4864])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.export import ExportedProgram
from tqdm.auto import tqdm

from .config import MODALITIES
from .errors import CalibrationError, NonFiniteError
from .graph import meta
from .graph.interpret import flat_inputs, run_observed
from .graph.linears import token_modality_ids
from .solvers.rotation import rotate_act

__all__ = ["ChannelStats", "LinearStats", "collect"]

log = logging.getLogger(__name__)


@dataclass
class ChannelStats:
    absmax: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    sum: torch.Tensor
    count: int
    reservoir: torch.Tensor  # [<= reservoir_tokens, K] fp32
    seen: int = 0  # tokens offered to the reservoir

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    def quantile(self, q: float) -> torch.Tensor:
        """Per-channel quantile of |x| estimated from the reservoir."""
        return torch.quantile(self.reservoir.abs(), q, dim=0)


@dataclass
class LinearStats:
    name: str
    modality: str  # the linear's path tag
    modalities: dict[str, ChannelStats] = field(default_factory=dict)

    def merged_absmax(self) -> torch.Tensor:
        return torch.stack([s.absmax for s in self.modalities.values()]).amax(0)

    def token_groups(self, expected: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Reservoir tokens by modality key. When ``expected`` modalities (a routed fused linear) are not all
        present, everything is merged into one ``shared`` group, with a warning naming the linear."""
        groups = {k: v.reservoir for k, v in self.modalities.items() if v.reservoir.shape[0]}
        if expected is not None and set(expected) - set(groups):
            log.warning(
                "linear %s: calibration has no %s tokens; it uses shared parameters for all modalities",
                self.name,
                sorted(set(expected) - set(groups)),
            )
            return {"shared": torch.cat(list(groups.values()))}
        return groups


def _update(stats: ChannelStats | None, x: torch.Tensor, limit: int, gen: torch.Generator) -> ChannelStats:
    if stats is None:
        k = x.shape[-1]
        stats = ChannelStats(
            absmax=torch.zeros(k),
            min=torch.full((k,), float("inf")),
            max=torch.full((k,), float("-inf")),
            sum=torch.zeros(k, dtype=torch.float64),
            count=0,
            reservoir=torch.empty(0, k),
        )
    stats.absmax = torch.maximum(stats.absmax, x.abs().amax(0))
    stats.min = torch.minimum(stats.min, x.amin(0))
    stats.max = torch.maximum(stats.max, x.amax(0))
    stats.sum += x.double().sum(0)
    stats.count += x.shape[0]
    # reservoir sampling (Algorithm R, vectorized per batch): token i of the stream replaces a random slot
    # with probability limit / (i + 1)
    free = max(limit - stats.reservoir.shape[0], 0)
    stats.reservoir = torch.cat([stats.reservoir, x[:free]])
    rest = x[free:]
    if rest.shape[0]:
        positions = torch.arange(stats.seen + free, stats.seen + x.shape[0], dtype=torch.float64)
        slots = (torch.rand(rest.shape[0], generator=gen, dtype=torch.float64) * (positions + 1)).long()
        keep = slots < limit
        stats.reservoir[slots[keep]] = rest[keep]
    stats.seen += x.shape[0]
    return stats


def collect(
    ep: ExportedProgram,
    batches: Sequence[tuple[tuple, dict]],
    token_ids: Mapping[str, Sequence[int]] | None = None,
    *,
    reservoir_tokens: int = 256,
    seed: int = 0,
    progress: bool = True,
    rotations: Mapping[str, torch.Tensor] | None = None,
    text_input: str | None = "input_ids",
) -> dict[str, LinearStats]:
    """Run ``ep`` (already analysed by find_linears/tag_modality) on calibration batches and gather statistics.

    ``rotations`` (linear name -> ``[B, B]`` block) makes the statistics describe the rotated input the quantizer
    will see (the ``rotate`` pass). ``text_input``: the placeholder whose token ids give each token's modality
    (:func:`mqcompile.graph.linears.text_source`), by the graph's own rule."""
    rotations = dict(rotations or {})
    if not batches:
        raise CalibrationError(
            "this method needs calibration data: pass calibration=[batch, ...] (kwargs dicts shaped like the "
            "exported example) to mqcompile.quantize"
        )
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, LinearStats] = {}
    token_ids = dict(token_ids or {})
    places = [n.name for n in ep.graph.nodes if n.op == "placeholder"]
    text_at = places.index(text_input) if text_input in places else None

    for index, (args, kwargs) in enumerate(
        tqdm(batches, desc="calibrate", unit="batch", disable=None if progress else True)
    ):
        ids = None if text_at is None else flat_inputs(ep, args, kwargs)[text_at]
        per_token = token_modality_ids(ids, token_ids) if ids is not None and token_ids else None

        def observe(node: fx.Node, node_args: tuple, out, index=index, per_token=per_token) -> None:
            info = meta.get(node)
            x = node_args[0].detach()
            if not torch.isfinite(x).all():
                raise NonFiniteError(
                    f"calibration batch {index}: NaN/Inf in the input of linear {info['name']}; "
                    "check that batch (and the model's dtype range)"
                )
            entry = stats.setdefault(info["name"], LinearStats(info["name"], info["modality"]))
            flat = x.reshape(-1, x.shape[-1]).float()
            if info["name"] in rotations:
                flat = rotate_act(flat, rotations[info["name"]])
            path = info["modality"]
            if path != "fused":
                groups = {path: flat}
            elif per_token is not None and tuple(x.shape[:-1]) == tuple(per_token.shape):
                mods = per_token.reshape(-1)
                groups = {m: flat[mods == i] for i, m in enumerate(MODALITIES) if bool((mods == i).any())}
            else:
                groups = {"shared": flat}
            for key, rows in groups.items():
                entry.modalities[key] = _update(entry.modalities.get(key), rows, reservoir_tokens, gen)

        run_observed(ep, args, kwargs, lambda n: n.op == "call_function" and meta.get(n).get("linear") is True, observe)
    log.info("calibrated %d linears on %d batches", len(stats), len(batches))
    return stats
