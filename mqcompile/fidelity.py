"""Output fidelity of a quantized program against its float one on batches, by token modality: what
``mqcompile quantize`` and ``mqcompile demo`` print.

Example:
    >>> output_fidelity(ep.module(), qp.module(), [sample], {"audio": (151646,)})  # doctest: +SKIP
    {'text': {'rows': 8, 'cosine': 0.99, 'sqnr_db': 17.2}, 'audio': {...}}
"""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from .config import MODALITIES
from .errors import CalibrationError
from .graph.linears import token_modality_ids
from .inputs import as_batch
from .metrics import cosine, sqnr_db

__all__ = ["output_fidelity"]


def _first_tensor(output) -> torch.Tensor:
    leaves = [x for x in pytree.tree_leaves(output) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    if not leaves:
        raise CalibrationError("the program's output holds no floating tensor to compare")
    return leaves[0]


def output_fidelity(float_module, quant_module, batches: list, token_ids: dict) -> dict[str, dict[str, float]]:
    """Cosine and SQNR of the first floating output, float vs quantized, by token modality (when the output has one
    row per input token and token ids mark modalities) else over all of it."""
    groups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for batch in batches:
        args, kwargs = as_batch(batch)
        with torch.no_grad():
            ref = _first_tensor(float_module(*args, **kwargs)).float()
            test = _first_tensor(quant_module(*args, **kwargs)).float()
        ids = kwargs.get("input_ids")
        if token_ids and isinstance(ids, torch.Tensor) and tuple(ref.shape[: ids.dim()]) == tuple(ids.shape):
            mods = token_modality_ids(ids, token_ids)
            for index, name in enumerate(MODALITIES):
                mask = mods == index
                if mask.any():
                    groups.setdefault(name, []).append((ref[mask], test[mask]))
        else:
            width = ref.shape[-1] if ref.dim() else 1
            groups.setdefault("all", []).append((ref.reshape(-1, width), test.reshape(-1, width)))
    out = {}
    for name, pairs in groups.items():
        a, b = torch.cat([p[0].flatten() for p in pairs]), torch.cat([p[1].flatten() for p in pairs])
        rows = sum(len(p[0]) for p in pairs)
        out[name] = {"rows": rows, "cosine": cosine(a, b), "sqnr_db": sqnr_db(a, b)}
    return out
