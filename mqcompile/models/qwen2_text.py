"""Qwen2.5-Coder-0.5B-Instruct (and any Qwen2-style causal LM): the torch.export entry point.

The real weights (the evaluation suite's text decoder, converted from its offline GGUF asset) are loaded by
:func:`mqcompile.evaluation.checkpoints.qwen2_text.load_qwen2_text`; this module only wraps and exports the model.

* :func:`export_causal_lm` exports ``(input_ids, attention_mask) -> logits`` for a padded batch with dynamic batch and
  sequence dims, through :class:`CausalLMForExport` (no KV cache, an in-graph causal + padding mask, position ids
  from the attention mask). Linears stay ``aten.linear.default``.
* :func:`export_causal_lm_with_cache` exports the same model with a key/value cache (:class:`CausalLMWithCache`):
  ``(input_ids, attention_mask, past_keys, past_values) -> (logits, keys, values)``, one program for prefill and for
  one-token decode (what an edge runtime runs, issue #18). :func:`empty_cache_inputs` turns a prefill batch into its
  inputs (a one-slot past that nobody sees), so it calibrates on the same data and scores the same logits.

Example::

    from mqcompile.evaluation.checkpoints.qwen2_text import load_qwen2_text

    model, tokenizer = load_qwen2_text()
    batch = tokenizer(["def f(x):", "hello"], return_tensors="pt", padding=True)
    ep = export_causal_lm(model, batch["input_ids"], batch["attention_mask"])
    logits = ep.module()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
"""

from __future__ import annotations

import inspect
import logging
import time

import torch
from torch import nn

from ..errors import CalibrationError, CheckpointError

__all__ = [
    "SEGMENT_GROUP",
    "CausalLMForExport",
    "CausalLMWithCache",
    "decode_embeddings",
    "decoder_states",
    "empty_cache_inputs",
    "export_causal_lm",
    "export_causal_lm_with_cache",
]

logger = logging.getLogger(__name__)

#: attention-mask value ``SEGMENT_GROUP * g`` is the context of group ``g`` (see :class:`CausalLMForExport`)
SEGMENT_GROUP = 64


class CausalLMForExport(nn.Module):
    """A Qwen2-style causal LM forward without KV cache: ``(input_ids, attention_mask) -> logits (B, S, vocab)``.

    Registers the HF model as ``lm`` (parameter names ``lm.model.layers.0.self_attn.q_proj.weight``, ...). It runs the
    model's own embedding, rotary embedding, decoder layers, final norm and lm_head, with an in-graph additive mask
    built from ``attention_mask`` (int64, ``(B, S)``); every rule below is causal (a token sees earlier ones only):

    * ``0``: padding, seen by nobody (its own logits are garbage and must be ignored);
    * ``1``: shared, seen by every later token of the row;
    * ``2 .. 63``: a private segment, seen only by later tokens of the same value;
    * ``64 * g`` (``g >= 1``): the context of group ``g``, seen by later tokens of the same value and by the
      group's branches ``64 * g + k`` (``1 <= k <= 63``), which are otherwise private.

    A plain 0/1 mask is the usual padding mask (left or right padding), so the program is a normal causal LM.
    Segments let continuations share context in one row: ``[task prefix: 1][question 1: 64][option A: 65][option B:
    66][question 2: 128][option A: 129]...``: each option sees the prefix, its question and itself, exactly as if it
    were alone after them. Position ids are the number of visible tokens before each token (the position it would
    have in its unpacked sequence; ``cumsum(mask) - 1`` for a 0/1 mask).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.lm = model
        base = model.model
        if not all(hasattr(base, a) for a in ("embed_tokens", "rotary_emb", "layers", "norm")):
            raise CheckpointError(f"{type(model).__name__} is not a Qwen2/Llama-style causal LM")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return decode_embeddings(self.lm, self.lm.model.embed_tokens(input_ids), attention_mask)


def decode_embeddings(lm: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits of a Qwen2-style causal LM ``lm`` for input embeddings ``hidden (B, S, width)``, with the segment mask
    rules of :class:`CausalLMForExport` (which calls this on ``embed_tokens(input_ids)``; the mini-omni model calls it
    on embeddings with tower outputs merged in, so its text-only prompts give exactly this program's logits)."""
    return lm.lm_head(decoder_states(lm, hidden, attention_mask))


def decoder_states(lm: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The final-normed hidden states behind :func:`decode_embeddings` (training scores only a few positions)."""
    return _layers(lm, hidden, attention_mask, None)


def _segment_mask(segments: torch.Tensor, seq: int, dtype: torch.dtype):
    """The additive mask ``(B, 1, seq, total)`` and position ids ``(B, seq)`` of the last ``seq`` of ``total`` tokens
    whose attention-mask values are ``segments (B, total)`` (rules: :class:`CausalLMForExport`)."""
    seg = segments.to(torch.long)
    total = seg.shape[1]
    past = total - seq
    idx = torch.arange(total, device=seg.device)
    causal = idx[None, :] <= idx[past:, None]  # (S_q, S_k): query i sits at position past + i
    key, query = seg[:, None, :], seg[:, past:, None]  # (B, 1, S_k), (B, S_q, 1)
    context = query - query % SEGMENT_GROUP  # the group context a branch also sees (0: none)
    allowed = causal[None] & (key > 0) & ((key == 1) | (key == query) | (key == context))  # (B, S_q, S_k)
    position_ids = (allowed.sum(-1) - 1).clamp(min=0)
    zero = torch.zeros((), dtype=dtype, device=seg.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=seg.device)
    return torch.where(allowed[:, None], zero, neg), position_ids


class _StackedCache:
    """What the HF attention layers call ``cache.update`` on: each layer's keys/values are its slice of the past
    tensors with the new ones appended (a plain object inside the traced forward, not a program input)."""

    def __init__(self, past_keys: torch.Tensor, past_values: torch.Tensor):
        self.past_keys, self.past_values = past_keys, past_values
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        key = torch.cat([self.past_keys[layer_idx], key], dim=2)
        value = torch.cat([self.past_values[layer_idx], value], dim=2)
        self.keys.append(key)
        self.values.append(value)
        return key, value


def _cache_keyword(layer: nn.Module) -> str:
    """The decoder layers' name for the cache (transformers 5.24 renamed ``past_key_values`` to ``cache``)."""
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


def _layers(lm: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, cache: _StackedCache | None):
    base = lm.model
    mask, position_ids = _segment_mask(attention_mask, hidden.shape[1], hidden.dtype)
    cos_sin = base.rotary_emb(hidden, position_ids)
    extra = {} if cache is None else {_cache_keyword(base.layers[0]): cache}
    for layer in base.layers:
        out = layer(hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=position_ids, **extra)
        hidden = out[0] if isinstance(out, tuple) else out
    return base.norm(hidden)


class CausalLMWithCache(nn.Module):
    """A Qwen2-style causal LM step with a key/value cache:
    ``(input_ids (B, S), attention_mask (B, S), past_mask (B, P), past_keys, past_values) -> (logits (B, S, vocab),
    keys, values)``.

    ``past_keys`` and ``past_values`` stack every layer's cache, ``(layers, B, kv_heads, P, head_dim)``; the outputs
    are the same with the ``S`` new tokens appended (``P + S``), ready to be the next step's past (and
    ``[past_mask, attention_mask]`` its mask). The two masks are the past's and the new tokens' parts of one mask with
    the rules of :class:`CausalLMForExport` (two inputs, so that the three lengths are independent dynamic dims); a
    past slot of value 0 is seen by nobody, so a prefill passes a one-slot zero past (:func:`empty_cache_inputs`).
    Position ids count the visible tokens, as there. Same parameter names as :class:`CausalLMForExport`
    (``lm.model.layers.0...``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        CausalLMForExport(model)  # the same layout checks
        self.lm = model

    def forward(self, input_ids, attention_mask, past_mask, past_keys, past_values):
        cache = _StackedCache(past_keys, past_values)
        segments = torch.cat([past_mask, attention_mask], dim=1)
        hidden = _layers(self.lm, self.lm.model.embed_tokens(input_ids), segments, cache)
        return self.lm.lm_head(hidden), torch.stack(cache.keys), torch.stack(cache.values)


def _cache_shape(config, batch: int, past: int) -> tuple[int, int, int, int, int]:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (config.num_hidden_layers, batch, getattr(config, "num_key_value_heads", heads), past, head_dim)


def empty_cache_inputs(config, input_ids: torch.Tensor, attention_mask: torch.Tensor, dtype=torch.float32) -> dict:
    """The :class:`CausalLMWithCache` inputs of a prefill batch ``(input_ids, attention_mask)`` of the model with HF
    config ``config``: a one-slot past of zeros behind a 0 in the mask (no token sees it), so the logits are the
    prefill program's."""
    batch = input_ids.shape[0]
    past = torch.zeros(_cache_shape(config, batch, 1), dtype=dtype)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask.to(torch.long),
        "past_mask": torch.zeros((batch, 1), dtype=torch.long),
        "past_keys": past,
        "past_values": past.clone(),
    }


def export_causal_lm(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    dynamic: bool = True,
    max_batch: int = 1024,
    max_seq: int = 4096,
) -> torch.export.ExportedProgram:
    """Export ``(input_ids, attention_mask) -> logits`` of a causal LM (:class:`CausalLMForExport`).

    Inputs are keyword arguments named ``input_ids`` and ``attention_mask`` (so mqcompile tags the linears as text by
    data flow). With ``dynamic=True`` the batch and sequence dims are dynamic (``Dim("batch")``, ``Dim("seq")``); the
    example needs batch >= 2 and seq >= 2 (torch.export specializes size-1 dims). Linears stay ``aten.linear.default``
    (no decompositions are run). About 20 s for the 0.5B model on 2 cores.

    Raises:
        CalibrationError: the example tensors have the wrong rank, dtype or shape.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise CalibrationError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be "
            "(batch, seq) of the same shape"
        )
    if input_ids.dtype != torch.long:
        raise CalibrationError(f"input_ids must be int64 (torch.long), got {input_ids.dtype}")
    if dynamic and min(input_ids.shape) < 2:
        raise CalibrationError(
            f"dynamic export needs an example with batch >= 2 and seq >= 2, got {tuple(input_ids.shape)}"
        )
    dynamic_shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        seq = torch.export.Dim("seq", min=1, max=max_seq)
        dynamic_shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    # fresh contiguous tensors: a strided slice would make export guard on its strides (e.g. ``seq != 128``)
    kwargs = {"input_ids": input_ids.clone(), "attention_mask": attention_mask.to(torch.long).clone()}
    return _export(CausalLMForExport(model), kwargs, dynamic_shapes, "the causal LM")


def _export(adapter: nn.Module, kwargs: dict, dynamic_shapes: dict | None, what: str) -> torch.export.ExportedProgram:
    model = adapter.lm
    previous = getattr(model.config, "_attn_implementation", "eager")
    if previous != "eager":  # sdpa does not export (data-dependent guard); the layers dispatch on the config
        model.set_attn_implementation("eager")
    start = time.perf_counter()
    try:
        with torch.no_grad():
            ep = torch.export.export(
                adapter.eval(), args=(), kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=False
            )
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)
    logger.info("exported %s in %.1f s", what, time.perf_counter() - start)
    return ep


def export_causal_lm_with_cache(
    model: nn.Module, *, max_batch: int = 64, max_seq: int = 4096
) -> torch.export.ExportedProgram:
    """Export :class:`CausalLMWithCache` of ``model`` with dynamic batch, new-token and past dims (an example of
    batch 2, 3 new tokens, 2 past slots is made here; size-1 dims work at run time). Linears stay
    ``aten.linear.default``."""
    config = model.config
    batch, seq, past = 2, 3, 2
    ids = torch.zeros((batch, seq), dtype=torch.long)
    cache = torch.zeros(_cache_shape(config, batch, past), dtype=next(model.parameters()).dtype)
    kwargs = {
        "input_ids": ids,
        "attention_mask": torch.ones((batch, seq), dtype=torch.long),
        "past_mask": torch.ones((batch, past), dtype=torch.long),
        "past_keys": cache,
        "past_values": cache.clone(),
    }
    b = torch.export.Dim("batch", min=1, max=max_batch)
    s = torch.export.Dim("seq", min=1, max=max_seq)
    p = torch.export.Dim("past", min=1, max=max_seq)
    dynamic_shapes = {
        "input_ids": {0: b, 1: s},
        "attention_mask": {0: b, 1: s},
        "past_mask": {0: b, 1: p},
        "past_keys": {1: b, 3: p},
        "past_values": {1: b, 3: p},
    }
    return _export(CausalLMWithCache(model), kwargs, dynamic_shapes, "the causal LM with its KV cache")
