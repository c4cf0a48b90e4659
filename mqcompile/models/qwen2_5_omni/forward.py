"""Qwen2.5-Omni export-friendly forward modules: masked tower attention, :class:`VisionTowerForExport`,
:class:`AudioTowerForExport` and :class:`ThinkerForExport`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import thinker_parts
from .sample import _special_ids

# --------------------------------------------------------------------------------------------------------------------
# Adapter modules (the exported forwards)
# --------------------------------------------------------------------------------------------------------------------


def _segment_mask(cu_seqlens: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) bool: True where query and key lie in the same packed segment of ``cu_seqlens``."""
    pos = torch.arange(n, device=cu_seqlens.device)
    segment = (pos[:, None] >= cu_seqlens[None, 1:].to(pos.dtype)).sum(-1)
    return segment[:, None] == segment[None, :]


def _masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Eager attention of (heads, n, d) tensors restricted by a (n, n) bool mask; returns (n, heads * d)."""
    weights = torch.matmul(q, k.transpose(-1, -2)) * scaling
    weights = weights.masked_fill(~mask, torch.finfo(weights.dtype).min)
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights, v)  # (heads, n, d)
    return out.transpose(0, 1).reshape(q.shape[1], -1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _vision_forward(
    visual: nn.Module,
    pixel_values: torch.Tensor,
    position_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    window_index: torch.Tensor,
    cu_window_seqlens: torch.Tensor,
) -> torch.Tensor:
    """Qwen2.5-Omni vision tower with precomputed indices; returns merged embeddings in original token order."""
    merge = int(visual.spatial_merge_size)
    unit = merge * merge
    full_blocks = {int(i) for i in visual.fullatt_block_indexes}
    hidden = visual.patch_embed(pixel_values.to(_module_dtype(visual.patch_embed)))
    n = hidden.shape[0]
    hidden = hidden.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
    pos = position_ids.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)

    rotary = visual.rotary_pos_emb
    freqs = pos[..., None].float() * rotary.inv_freq.float()  # (n, 2, head_dim / 4)
    freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
    emb = torch.cat([freqs, freqs], dim=-1)
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    cos, sin = (emb.cos() * scale)[:, None, :], (emb.sin() * scale)[:, None, :]

    full_mask = _segment_mask(cu_seqlens, n)
    window_mask = _segment_mask(cu_window_seqlens, n)
    for i, block in enumerate(visual.blocks):
        attn = block.attn
        x = block.norm1(hidden)
        if hasattr(attn, "qkv"):
            q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).unbind(1)
        else:
            q = attn.q(x).reshape(n, attn.num_heads, -1)
            k = attn.k(x).reshape(n, attn.num_heads, -1)
            v = attn.v(x).reshape(n, attn.num_heads, -1)
        in_dtype = q.dtype
        qf, kf = q.float(), k.float()
        q = (qf * cos + _rotate_half(qf) * sin).to(in_dtype)
        k = (kf * cos + _rotate_half(kf) * sin).to(in_dtype)
        scaling = getattr(attn, "scaling", None) or q.shape[-1] ** -0.5
        out = _masked_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            full_mask if i in full_blocks else window_mask,
            scaling,
        )
        hidden = hidden + attn.proj(out)
        hidden = hidden + block.mlp(block.norm2(hidden))
    merged = visual.merger(hidden)
    return merged[torch.argsort(window_index)]


def _audio_forward(
    tower: nn.Module,
    input_features: torch.Tensor,
    chunk_index: torch.Tensor,
    chunk_lengths: torch.Tensor,
    valid_indices: torch.Tensor,
    pool_indices: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> torch.Tensor:
    """Qwen2.5-Omni audio tower with precomputed chunking indices; returns (tokens, output_dim) embeddings."""
    features = input_features.to(_module_dtype(tower.conv1))
    padded = F.pad(features, (0, 1))[:, chunk_index].permute(1, 0, 2)  # (chunks, n_mels, max_chunk)
    length = padded.shape[2]
    mask = (torch.arange(length, device=padded.device) < chunk_lengths[:, None]).unsqueeze(1)
    embed = F.gelu(tower.conv1(padded)) * mask.to(padded.dtype)
    embed = F.gelu(tower.conv2(embed)).transpose(1, 2)
    table = tower.positional_embedding
    table = getattr(table, "positional_embedding", table)
    embed = embed + table[: embed.shape[1], :].unsqueeze(0).to(embed.dtype)
    hidden = embed.reshape(-1, embed.shape[-1])[valid_indices]
    n = hidden.shape[0]
    attn_mask = _segment_mask(cu_seqlens, n)
    for layer in tower.layers:
        attn = layer.self_attn
        x = layer.self_attn_layer_norm(hidden)
        q = attn.q_proj(x).reshape(n, attn.num_heads, -1).transpose(0, 1)
        k = attn.k_proj(x).reshape(n, attn.num_heads, -1).transpose(0, 1)
        v = attn.v_proj(x).reshape(n, attn.num_heads, -1).transpose(0, 1)
        hidden = hidden + attn.out_proj(_masked_attention(q, k, v, attn_mask, attn.scaling))
        x = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
        hidden = hidden + x
        if hidden.dtype == torch.float16:
            limit = torch.finfo(hidden.dtype).max - 1000
            hidden = hidden.clamp(-limit, limit)
    hidden = (hidden[pool_indices] + hidden[pool_indices + 1]) / 2
    return tower.proj(tower.ln_post(hidden))


def _module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class VisionTowerForExport(nn.Module):
    """Vision tower alone: ``pixel_values`` + image indices -> merged image embeddings (tokens, out_hidden_size).

    Registers only the tower (as ``visual``), so the program's parameters are ``visual.*``.

    Example::

        out = VisionTowerForExport(model)(**tower_sample(sample, "vision"))
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.visual = thinker_parts(model).visual

    def forward(self, pixel_values, image_position_ids, image_cu_seqlens, image_window_index, image_cu_window_seqlens):
        return _vision_forward(
            self.visual, pixel_values, image_position_ids, image_cu_seqlens, image_window_index, image_cu_window_seqlens
        )


class AudioTowerForExport(nn.Module):
    """Audio tower alone: ``input_features`` + audio indices -> audio embeddings (tokens, output_dim).

    Example::

        out = AudioTowerForExport(model)(**tower_sample(sample, "audio"))
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.audio_tower = thinker_parts(model).audio_tower

    def forward(
        self,
        input_features,
        audio_chunk_index,
        audio_chunk_lengths,
        audio_valid_indices,
        audio_pool_indices,
        audio_cu_seqlens,
    ):
        return _audio_forward(
            self.audio_tower,
            input_features,
            audio_chunk_index,
            audio_chunk_lengths,
            audio_valid_indices,
            audio_pool_indices,
            audio_cu_seqlens,
        )


class ThinkerForExport(nn.Module):
    """The whole thinker forward (prefill, no KV cache) as one traceable module: inputs -> logits (1, S, vocab).

    Registers the thinker as ``thinker`` so parameter names and ``nn_module_stack`` paths are
    ``thinker.<HF name>``. Image and video pixels go through the vision tower in one pass (concatenated, with the
    video indices offset; attention stays within each frame/window, so this equals two separate passes). The
    embeddings are merged with ``masked_scatter`` at the placeholder tokens of ``input_ids``; the decoder runs the
    real decoder layers with an in-graph causal mask and the model's own M-RoPE rotary embedding.

    Example::

        logits = ThinkerForExport(model)(**sample)
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.thinker = model
        parts = thinker_parts(model)
        self._parts = parts  # a plain dataclass: the submodules stay registered only under `thinker`
        ids = _special_ids(model.config)
        self.image_token_id, self.video_token_id, self.audio_token_id = ids["image"], ids["video"], ids["audio"]

    def forward(
        self,
        input_ids,
        position_ids,
        pixel_values=None,
        image_position_ids=None,
        image_cu_seqlens=None,
        image_window_index=None,
        image_cu_window_seqlens=None,
        input_features=None,
        audio_chunk_index=None,
        audio_chunk_lengths=None,
        audio_valid_indices=None,
        audio_pool_indices=None,
        audio_cu_seqlens=None,
        pixel_values_videos=None,
        video_position_ids=None,
        video_cu_seqlens=None,
        video_window_index=None,
        video_cu_window_seqlens=None,
    ):
        parts = self._parts
        visual, audio_tower, text, lm_head = parts.visual, parts.audio_tower, parts.text, parts.lm_head
        embeds = text.embed_tokens(input_ids)

        if input_features is not None:
            audio = _audio_forward(
                audio_tower,
                input_features,
                audio_chunk_index,
                audio_chunk_lengths,
                audio_valid_indices,
                audio_pool_indices,
                audio_cu_seqlens,
            )
            embeds = _scatter(embeds, input_ids == self.audio_token_id, audio)

        visual_inputs = []
        if pixel_values is not None:
            visual_inputs.append(
                (pixel_values, image_position_ids, image_cu_seqlens, image_window_index, image_cu_window_seqlens)
            )
        if pixel_values_videos is not None:
            visual_inputs.append(
                (pixel_values_videos, video_position_ids, video_cu_seqlens, video_window_index, video_cu_window_seqlens)
            )
        if visual_inputs:
            merged = _vision_forward(visual, *_concat_vision(visual_inputs, int(visual.spatial_merge_size)))
            if pixel_values is not None and pixel_values_videos is not None:
                n_image = pixel_values.shape[0] // int(visual.spatial_merge_size) ** 2
                image, video = merged[:n_image], merged[n_image:]
                embeds = _scatter(embeds, input_ids == self.image_token_id, image)
                embeds = _scatter(embeds, input_ids == self.video_token_id, video)
            elif pixel_values is not None:
                embeds = _scatter(embeds, input_ids == self.image_token_id, merged)
            else:
                embeds = _scatter(embeds, input_ids == self.video_token_id, merged)

        hidden = embeds
        cos_sin = text.rotary_emb(hidden, position_ids)
        seq = hidden.shape[1]
        causal = torch.full((seq, seq), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        causal = torch.triu(causal, diagonal=1)[None, None]
        for layer in text.layers:
            out = layer(hidden, attention_mask=causal, position_embeddings=cos_sin)
            hidden = out[0] if isinstance(out, tuple) else out
        return lm_head(text.norm(hidden))


def _scatter(embeds: torch.Tensor, token_mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    mask = token_mask.unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(mask, features.to(embeds.dtype))


def _concat_vision(inputs: list[tuple[torch.Tensor, ...]], merge: int) -> tuple[torch.Tensor, ...]:
    """Concatenate image and video vision inputs into one packed sequence (indices offset by the earlier inputs)."""
    if len(inputs) == 1:
        return inputs[0]
    pixels, pos, cu, window, cu_window = [], [], [], [], []
    offset = 0
    for i, (p, position_ids, cu_seqlens, window_index, cu_window_seqlens) in enumerate(inputs):
        pixels.append(p)
        pos.append(position_ids)
        start = 0 if i == 0 else 1  # drop the leading 0 of later cu_seqlens
        cu.append(cu_seqlens[start:] + offset)
        cu_window.append(cu_window_seqlens[start:] + offset)
        window.append(window_index + offset // (merge * merge))
        offset += p.shape[0]
    return (torch.cat(pixels), torch.cat(pos), torch.cat(cu), torch.cat(window), torch.cat(cu_window))
