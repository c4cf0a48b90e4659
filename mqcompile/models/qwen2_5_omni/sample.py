"""Qwen2.5-Omni samples: host-side index precomputation, :func:`make_sample`, :func:`check_sample`,
:func:`reference_inputs` and :func:`tower_sample`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from mqcompile.errors import CalibrationError, NonFiniteError

from .model import (
    _AUDIO_SUFFIXES,
    _INDEX_INT_KEYS,
    _VISION_SUFFIXES,
    AUDIO_TOWER_KEYS,
    VIDEO_SECONDS_PER_GRID,
    VISION_TOWER_KEYS,
)

# --------------------------------------------------------------------------------------------------------------------
# Host-side index precomputation (the HF code does this with .tolist() and Python loops)
# --------------------------------------------------------------------------------------------------------------------


def _vision_indices(
    grids: list[tuple[int, int, int]], *, merge: int, window_size: int, patch_size: int
) -> dict[str, torch.Tensor]:
    """Rotary position ids, per-frame cu_seqlens, window permutation and window cu_seqlens (HF vision_utils logic)."""
    position_ids, window_index, cu_window = [], [], [0]
    seqlens: list[int] = []
    window_offset = 0
    merger_window = window_size // merge // patch_size
    unit = merge * merge
    for t, h, w in grids:
        if h % merge or w % merge:
            raise CalibrationError(f"image grid h={h}, w={w} must be multiples of spatial_merge_size={merge}")
        hpos = torch.arange(h).view(h, 1).expand(h, w)
        wpos = torch.arange(w).view(1, w).expand(h, w)
        block = (h // merge, merge, w // merge, merge)
        hpos = hpos.reshape(block).transpose(1, 2).flatten()
        wpos = wpos.reshape(block).transpose(1, 2).flatten()
        position_ids.append(torch.stack([hpos, wpos], dim=-1).repeat(t, 1))
        seqlens.extend([h * w] * t)

        gh, gw = h // merge, w // merge
        index = torch.arange(t * gh * gw).reshape(t, gh, gw)
        pad_h = merger_window - gh % merger_window
        pad_w = merger_window - gw % merger_window
        nwh, nww = (gh + pad_h) // merger_window, (gw + pad_w) // merger_window
        padded = F.pad(index, (0, pad_w, 0, pad_h), "constant", -100)
        padded = padded.reshape(t, nwh, merger_window, nww, merger_window).permute(0, 1, 3, 2, 4)
        padded = padded.reshape(t, nwh * nww, merger_window, merger_window)
        window_lens = (padded != -100).sum([2, 3]).reshape(-1)
        flat = padded.reshape(-1)
        window_index.append(flat[flat != -100] + window_offset)
        for n in (window_lens.cumsum(0) * unit + cu_window[-1]).tolist():
            if n != cu_window[-1]:  # empty (all-padding) windows add no boundary, like unique_consecutive
                cu_window.append(int(n))
        window_offset += t * gh * gw
    cu_seqlens = F.pad(torch.tensor(seqlens, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0), value=0)
    return {
        "position_ids": torch.cat(position_ids, dim=0),
        "cu_seqlens": cu_seqlens,
        "window_index": torch.cat(window_index, dim=0),
        "cu_window_seqlens": torch.tensor(cu_window, dtype=torch.int32),
    }


def _audio_after_cnn(frames: int) -> tuple[int, int]:
    """Frames after conv2 (stride 2) and tokens after the stride-2 average pool."""
    after_conv = (frames - 1) // 2 + 1
    return after_conv, (after_conv - 2) // 2 + 1


def _audio_indices(feature_lens: list[int], *, n_window: int) -> dict[str, torch.Tensor]:
    """Chunking, valid-position, pooling and attention indices of the audio tower (HF chunk_and_pad_features logic).

    ``chunk_index[c, j]`` is the frame (column of ``input_features``) at position ``j`` of chunk ``c``, or
    ``total_frames`` for padding: the adapter gathers ``pad(input_features, (0, 1))[:, chunk_index]`` in the graph, so
    ``input_features`` stays the data source of the audio tower (HF passes a precomputed ``padded_feature`` instead).
    """
    chunk = n_window * 2
    lengths: list[int] = []
    starts: list[int] = []
    offset = 0
    for n in feature_lens:
        if n <= 0:
            raise CalibrationError(f"audio feature length must be positive, got {n}")
        for start in range(0, n, chunk):
            starts.append(offset + start)
            lengths.append(min(chunk, n - start))
        offset += n
    total = offset
    max_len = max(lengths)
    pos = torch.arange(max_len)
    starts_t, lengths_t = torch.tensor(starts), torch.tensor(lengths)
    chunk_index = torch.where(pos < lengths_t[:, None], starts_t[:, None] + pos, torch.full_like(pos, total))
    after_conv = (lengths_t - 1) // 2 + 1
    max_after = int(after_conv.max())
    valid = (torch.arange(max_after) < after_conv[:, None]).flatten().nonzero().squeeze(-1)
    cu_seqlens = F.pad(after_conv.cumsum(0), (1, 0), value=0).to(torch.int32)
    pool: list[int] = []
    base = 0
    for n in feature_lens:
        conv_len, pooled = _audio_after_cnn(n)
        pool.extend(base + 2 * i for i in range(pooled))
        base += conv_len
    return {
        "chunk_index": chunk_index,
        "chunk_lengths": lengths_t,
        "valid_indices": valid,
        "pool_indices": torch.tensor(pool, dtype=torch.long),
        "cu_seqlens": cu_seqlens,
    }


def _check_grid(grid, name: str) -> tuple[int, int, int]:
    if grid is None or len(grid) != 3 or any(int(v) <= 0 for v in grid):
        raise CalibrationError(f"{name} must be (t, h, w) in patches with positive entries, got {grid!r}")
    return int(grid[0]), int(grid[1]), int(grid[2])


def make_sample(
    model,
    *,
    text_tokens: int = 8,
    image_grid: tuple[int, int, int] | None = (1, 4, 4),
    audio_frames: int | None = 100,
    video: bool = False,
    video_grid: tuple[int, int, int] = (2, 4, 6),
    seed: int = 0,
    text_ids: Sequence[int] | None = None,
    pixel_values: torch.Tensor | None = None,
    input_features: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """A multimodal sample (batch 1) for ``model``, laid out like the Qwen2.5-Omni processor output.

    Sequence: half of the text tokens, ``<vision_bos> <IMAGE>*N <vision_eos>`` with ``N = t*h*w / merge**2``,
    ``<audio_bos> <AUDIO>*M <audio_eos>`` with ``M`` from the audio tower's conv + pool length formula,
    optionally ``<vision_bos> <VIDEO>*K <vision_eos>``, then the other text tokens. ``image_grid=None`` or
    ``audio_frames=None`` leaves that modality out.

    Random content by default; real content where given (:func:`real_sample` builds it): ``text_ids`` (replaces the
    ``text_tokens`` random ids), ``pixel_values`` (``(t*h*w, patch_dim)`` patches of ``image_grid``, as the image
    processor lays them out) and ``input_features`` (``(n_mels, frames)``; sets ``audio_frames``).

    Keys (the keyword arguments of :class:`ThinkerForExport`, i.e. the exported program's placeholder names):

    * ``input_ids`` (1, S) int64 and ``position_ids`` (3, 1, S) int64 (M-RoPE ids from ``get_rope_index``);
    * image: ``pixel_values`` (t*h*w, C*temporal_patch*patch*patch) float, ``image_position_ids`` (t*h*w, 2),
      ``image_cu_seqlens`` (frames+1,) int32, ``image_window_index`` (t*h*w/merge**2,),
      ``image_cu_window_seqlens`` (windows+1,) int32;
    * video (``video=True``): the same with ``pixel_values_videos`` and the ``video_`` prefix;
    * audio: ``input_features`` (n_mels, frames) float, ``audio_chunk_index`` (chunks, max_chunk) int64,
      ``audio_chunk_lengths`` (chunks,), ``audio_valid_indices``, ``audio_pool_indices``, ``audio_cu_seqlens`` int32.

    Example::

        sample = make_sample(build_tiny_thinker(), text_tokens=8, image_grid=(1, 4, 4), audio_frames=100)
        assert sample["pixel_values"].shape == (16, 1176)
    """
    config = model.config
    vcfg, acfg, tcfg = config.vision_config, config.audio_config, config.get_text_config()
    if text_tokens < 0:
        raise CalibrationError(f"text_tokens must be >= 0, got {text_tokens}")
    generator = torch.Generator().manual_seed(seed)
    merge = int(vcfg.spatial_merge_size)
    patch_dim = int(vcfg.in_channels) * int(vcfg.temporal_patch_size) * int(vcfg.patch_size) ** 2
    ids = _special_ids(config)
    specials = set(ids.values())
    allowed = torch.tensor([i for i in range(int(tcfg.vocab_size)) if i not in specials])
    text = allowed[torch.randint(len(allowed), (text_tokens,), generator=generator)].tolist()
    if pixel_values is not None and image_grid is None:
        raise CalibrationError("pixel_values were given without their image_grid (t, h, w): pass both")
    if text_ids is not None:
        text = [int(i) for i in text_ids]
        bad = [i for i in text if i in specials or not 0 <= i < int(tcfg.vocab_size)]
        if bad:
            raise CalibrationError(f"text_ids hold special or out-of-vocabulary ids {bad[:5]}")
    head, tail = text[: len(text) // 2], text[len(text) // 2 :]

    sample: dict[str, torch.Tensor] = {}
    tokens = list(head)
    image_grid_thw = video_grid_thw = feature_lens = None
    if image_grid is not None:
        t, h, w = _check_grid(image_grid, "image_grid")
        n = t * h * w // merge**2
        tokens += [ids["vision_start"]] + [ids["image"]] * n + [ids["vision_end"]]
        sample["pixel_values"] = torch.randn(t * h * w, patch_dim, generator=generator)
        if pixel_values is not None:
            if tuple(pixel_values.shape) != (t * h * w, patch_dim):
                raise CalibrationError(
                    f"pixel_values is {tuple(pixel_values.shape)}; image_grid {(t, h, w)} takes "
                    f"{(t * h * w, patch_dim)}"
                )
            sample["pixel_values"] = pixel_values.float().contiguous()
        for key, value in _vision_indices(
            [(t, h, w)], merge=merge, window_size=int(vcfg.window_size), patch_size=int(vcfg.patch_size)
        ).items():
            sample[f"image_{key}"] = value
        image_grid_thw = torch.tensor([[t, h, w]])
    if input_features is not None:
        if input_features.dim() != 2 or input_features.shape[0] != int(acfg.num_mel_bins):
            raise CalibrationError(
                f"input_features is {tuple(input_features.shape)}; the audio tower takes ({acfg.num_mel_bins}, frames)"
            )
        audio_frames = int(input_features.shape[1])
    if audio_frames is not None:
        if audio_frames < 4:
            raise CalibrationError(f"audio_frames must be >= 4 (one pooled audio token), got {audio_frames}")
        m = _audio_after_cnn(audio_frames)[1]
        tokens += [ids["audio_start"]] + [ids["audio"]] * m + [ids["audio_end"]]
        sample["input_features"] = torch.randn(int(acfg.num_mel_bins), audio_frames, generator=generator)
        if input_features is not None:
            sample["input_features"] = input_features.float().contiguous()
        for key, value in _audio_indices([audio_frames], n_window=int(acfg.n_window)).items():
            sample[f"audio_{key}"] = value
        feature_lens = torch.tensor([audio_frames])
    if video:
        t, h, w = _check_grid(video_grid, "video_grid")
        k = t * h * w // merge**2
        tokens += [ids["vision_start"]] + [ids["video"]] * k + [ids["vision_end"]]
        sample["pixel_values_videos"] = torch.randn(t * h * w, patch_dim, generator=generator)
        for key, value in _vision_indices(
            [(t, h, w)], merge=merge, window_size=int(vcfg.window_size), patch_size=int(vcfg.patch_size)
        ).items():
            sample[f"video_{key}"] = value
        video_grid_thw = torch.tensor([[t, h, w]])
    tokens += tail
    if not tokens:
        raise CalibrationError("the sample would be empty: give text_tokens > 0 or at least one modality")
    input_ids = torch.tensor([tokens], dtype=torch.long)
    sample = {
        "input_ids": input_ids,
        "position_ids": _rope_position_ids(model, input_ids, image_grid_thw, video_grid_thw, feature_lens),
        **sample,
    }
    return sample


def _special_ids(config) -> dict[str, int]:
    return {
        "image": int(config.image_token_id),
        "video": int(config.video_token_id),
        "audio": int(config.audio_token_id),
        "vision_start": int(config.vision_start_token_id),
        "vision_end": int(config.vision_end_token_id),
        "audio_start": int(config.audio_start_token_id),
        "audio_end": int(config.audio_end_token_id),
    }


def _rope_position_ids(model, input_ids, image_grid_thw, video_grid_thw, feature_lens) -> torch.Tensor:
    """3D M-RoPE position ids (3, 1, S) from the model's own ``get_rope_index`` (1D positions without vision)."""
    second_per_grids = torch.tensor([VIDEO_SECONDS_PER_GRID]) if video_grid_thw is not None else None
    position_ids, _ = model.get_rope_index(
        input_ids, image_grid_thw, video_grid_thw, torch.ones_like(input_ids), False, feature_lens, second_per_grids
    )
    return position_ids.contiguous()


def check_sample(sample: Mapping[str, torch.Tensor], *, required: tuple[str, ...] = ("input_ids",)) -> None:
    """Validate a sample before export or calibration.

    Raises:
        CalibrationError: a value is not a tensor, a required key is missing, a modality source lacks its index
            tensors, or ``input_ids``/``position_ids`` are not integer tensors.
        NonFiniteError: ``pixel_values``, ``pixel_values_videos`` or ``input_features`` contain NaN or Inf.

    Example::

        check_sample(make_sample(build_tiny_thinker()))
    """
    if not isinstance(sample, Mapping):
        raise CalibrationError(f"a sample is a dict of tensors, got {type(sample).__name__}")
    for key, value in sample.items():
        if not isinstance(value, torch.Tensor):
            raise CalibrationError(f"sample[{key!r}] is a {type(value).__name__}, expected a torch.Tensor")
    missing = [k for k in required if k not in sample]
    if missing:
        raise CalibrationError(f"sample lacks required keys {missing}; present: {sorted(sample)}")
    groups = {"pixel_values": "image_", "pixel_values_videos": "video_", "input_features": "audio_"}
    for source, prefix in groups.items():
        if source not in sample:
            continue
        suffixes = _AUDIO_SUFFIXES if prefix == "audio_" else _VISION_SUFFIXES
        lacking = [prefix + s for s in suffixes if prefix + s not in sample]
        if lacking:
            raise CalibrationError(
                f"sample has {source!r} but lacks its index tensors {lacking}; build samples with make_sample()"
            )
        value = sample[source]
        if not value.is_floating_point():
            raise CalibrationError(f"sample[{source!r}] must be a floating tensor, got {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise NonFiniteError(
                f"sample[{source!r}] has {bad} NaN/Inf values (shape {tuple(value.shape)}); "
                "clean the inputs before calibration or export"
            )
    for key in _INDEX_INT_KEYS:
        if key in sample and sample[key].is_floating_point():
            raise CalibrationError(f"sample[{key!r}] must be an integer tensor, got {sample[key].dtype}")


def reference_inputs(sample: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keyword arguments for the HF thinker forward equivalent to a :func:`make_sample` sample.

    Recovers ``image_grid_thw``/``video_grid_thw`` from the vision index tensors (one image and one video per sample,
    as :func:`make_sample` builds them) and turns ``input_features`` (n_mels, frames) into the processor's batched
    ``(1, n_mels, frames)`` + ``feature_attention_mask``.

    Example::

        logits = model(**reference_inputs(sample)).logits
    """
    out: dict[str, torch.Tensor] = {
        "input_ids": sample["input_ids"],
        "attention_mask": torch.ones_like(sample["input_ids"]),
    }
    for source, prefix, grid_key in (
        ("pixel_values", "image_", "image_grid_thw"),
        ("pixel_values_videos", "video_", "video_grid_thw"),
    ):
        if source in sample:
            out[source] = sample[source]
            out[grid_key] = _grid_from_indices(sample[prefix + "position_ids"], sample[prefix + "cu_seqlens"])
    if "pixel_values_videos" in sample:
        out["video_second_per_grid"] = torch.tensor([VIDEO_SECONDS_PER_GRID])
    if "input_features" in sample:
        features = sample["input_features"]
        out["input_features"] = features.unsqueeze(0)
        out["feature_attention_mask"] = torch.ones(1, features.shape[1], dtype=torch.long)
    return out


def _grid_from_indices(position_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    t = cu_seqlens.numel() - 1
    h = int(position_ids[:, 0].max()) + 1
    w = int(position_ids[:, 1].max()) + 1
    if t * h * w != position_ids.shape[0]:
        raise CalibrationError("cannot recover the vision grid: the sample holds more than one image/video")
    return torch.tensor([[t, h, w]])


def tower_sample(sample: Mapping[str, torch.Tensor], tower: str) -> dict[str, torch.Tensor]:
    """The subset of a thinker sample that a tower program takes (``tower`` is ``"vision"`` or ``"audio"``).

    Example::

        ep = export_vision_tower(model, sample)
        image_embeds = ep.module()(**tower_sample(sample, "vision"))
    """
    keys = {"vision": VISION_TOWER_KEYS, "audio": AUDIO_TOWER_KEYS}.get(tower)
    if keys is None:
        raise CalibrationError(f"tower must be 'vision' or 'audio', got {tower!r}")
    missing = [k for k in keys if k not in sample]
    if missing:
        raise CalibrationError(f"sample lacks {missing} needed by the {tower} tower")
    return {k: sample[k] for k in keys}
