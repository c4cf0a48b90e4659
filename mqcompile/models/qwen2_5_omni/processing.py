"""Real content for a thinker sample: an RGB image as vision patches and a 16 kHz waveform as log-mel features, the
way the Qwen2.5-Omni processor prepares them, then :func:`real_sample` lays them out with text ids
(:func:`.sample.make_sample`).

The processor pieces come from transformers (the Qwen2-VL image processor that Qwen2.5-Omni uses, Whisper's feature
extractor with the thinker's mel bins), configured from the model config instead of a ``preprocessor_config.json``
so that a checkpoint without one (the tests' tiny thinker) works too; the defaults they keep (CLIP mean and std,
Whisper's window and hop) are the ones the real checkpoints ship.

Example::

    sample = real_sample(model, tokenizer("Some text").input_ids, image=rgb_uint8_112x112, wave=speech_16khz)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mqcompile.errors import CalibrationError

from .sample import make_sample

__all__ = ["image_patches", "audio_features", "real_sample", "SAMPLE_RATE"]

SAMPLE_RATE = 16_000


def _image_processor(vcfg, pixels: int):
    try:  # the PIL backend: no torchvision needed (the default backend asks for it and warns without it)
        from transformers import Qwen2VLImageProcessorPil as processor
    except ImportError:  # older transformers name it without the suffix
        from transformers import Qwen2VLImageProcessor as processor
    return processor(
        patch_size=int(vcfg.patch_size),
        temporal_patch_size=int(vcfg.temporal_patch_size),
        merge_size=int(vcfg.spatial_merge_size),
        min_pixels=pixels,
        max_pixels=pixels,
    )


def image_patches(config, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``(pixel_values (t*h*w, patch_dim), (t, h, w))`` of one RGB uint8 ``(H, W, 3)`` image whose sides are
    multiples of ``patch_size * spatial_merge_size`` (kept at its size: the processor's pixel bounds are set to it).

    Raises:
        CalibrationError: not an RGB uint8 image, or a side that is not a multiple of patch x merge.
    """
    vcfg = config.vision_config
    unit = int(vcfg.patch_size) * int(vcfg.spatial_merge_size)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise CalibrationError(f"the image is {arr.dtype} {arr.shape}; pass RGB uint8 (H, W, 3)")
    if arr.shape[0] % unit or arr.shape[1] % unit:
        raise CalibrationError(f"image sides {arr.shape[:2]} must be multiples of patch x merge = {unit}")
    out = _image_processor(vcfg, arr.shape[0] * arr.shape[1])(images=[arr], return_tensors="pt")
    grid = tuple(int(v) for v in out["image_grid_thw"][0])
    return out["pixel_values"].float(), grid  # type: ignore[return-value]


def audio_features(config, wave: np.ndarray, frames: int | None = None) -> torch.Tensor:
    """``(n_mels, frames)`` log-mel features of a 16 kHz mono clip of at most 30 s: its valid frames (as the thinker
    reads ``input_features`` through ``feature_attention_mask``), or exactly ``frames`` (the extractor's padding past
    the clip's end, or the clip cut there): the exported thinker's audio shapes are static."""
    from transformers import WhisperFeatureExtractor

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or not len(wave):
        raise CalibrationError(f"the waveform is {wave.shape}; pass one non-empty mono 16 kHz clip")
    extractor = WhisperFeatureExtractor(feature_size=int(config.audio_config.num_mel_bins), sampling_rate=SAMPLE_RATE)
    if len(wave) > extractor.n_samples:
        raise CalibrationError(f"the clip is {len(wave) / SAMPLE_RATE:.1f} s; split it into clips of at most 30 s")
    feats = extractor([wave], sampling_rate=SAMPLE_RATE, return_tensors="np", return_attention_mask=True)
    valid = int(feats.attention_mask[0].sum()) if frames is None else int(frames)
    if not 4 <= valid <= feats.input_features.shape[-1]:
        raise CalibrationError(f"frames={frames}: give 4 to {feats.input_features.shape[-1]} (30 s)")
    return torch.from_numpy(np.ascontiguousarray(feats.input_features[0, :, :valid], dtype=np.float32))


def real_sample(
    model,
    text_ids: Sequence[int],
    image: np.ndarray | None = None,
    wave: np.ndarray | None = None,
    audio_frames: int | None = None,
) -> dict[str, torch.Tensor]:
    """A thinker sample (:func:`.sample.make_sample`'s keys) of real content: the first half of ``text_ids``, the
    image, the clip (``audio_frames`` as :func:`audio_features`' ``frames``), the rest of the text; a missing image
    or clip leaves that modality out."""
    pixels, grid = image_patches(model.config, image) if image is not None else (None, None)
    features = audio_features(model.config, wave, audio_frames) if wave is not None else None
    return make_sample(
        model,
        image_grid=grid,
        audio_frames=None,
        text_ids=text_ids,
        pixel_values=pixels,
        input_features=features,
    )
