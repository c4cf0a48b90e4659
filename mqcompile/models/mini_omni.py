"""mini-omni: an omni model with the Qwen2.5-Omni thinker's structure, assembled from real weights.

* audio tower: the Whisper-base encoder (real, frozen) on up to :attr:`MiniOmniSpec.audio_frames` log-mel frames
  (10 s at 100 frames/s; the positional table is cut to that length), its frames average-pooled by 2 over time (as
  Qwen2.5-Omni's audio tower pools after its Whisper-style encoder), then a small projector into the decoder width;
  a clip of ``n`` valid mel frames gives ``n // 4`` audio tokens;
* vision tower: DINOv2-S/14 (real, frozen) patch tokens of a 224 px image, 2x2-merged (Qwen2.5-VL's patch merger:
  four neighbouring patches concatenated), then a small projector: 64 tokens per image;
* decoder: Qwen2.5-Coder-0.5B (real, frozen). The placeholder ids of ``input_ids`` (``<|image_pad|>`` 151655 and
  151646, Qwen2.5-Omni's own image and audio token ids) are replaced in the graph by the projected tower outputs with
  ``masked_scatter``, the way the thinker does it, so every decoder linear sees text, image and audio tokens.
  Decoding is :func:`mqcompile.models.qwen2_text.decode_embeddings` (the plain decoder program's own code), so a
  text-only prompt gives exactly the plain decoder's logits.

Only the two projectors are trained (``tools/train_mini_omni.py``); their fp16 weights are committed beside this
module (:data:`PROJECTOR_FILE`, checked against :data:`PROJECTOR_SHA256`).

Example::

    model = build_mini_omni()                       # real towers + decoder + the committed projectors
    batch = make_inputs(model.spec, [prompt_ids(model.spec, "Question: ...", image=True)], images=[img])
    logits = model(**batch)
    ep = export_mini_omni(model, batch)             # one ExportedProgram, all modalities
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mqcompile.assets import sha256_file
from mqcompile.errors import CalibrationError, CheckpointError

from .qwen2_5_omni.forward import _scatter
from .qwen2_text import decode_embeddings

__all__ = [
    "MiniOmniSpec",
    "REAL_SPEC",
    "PROJECTOR_FILE",
    "PROJECTOR_SHA256",
    "TRAIN_COMMAND",
    "Projector",
    "MiniOmni",
    "build_mini_omni",
    "tiny_mini_omni",
    "load_projectors",
    "save_projectors",
    "image_pixels",
    "audio_features",
    "make_inputs",
    "check_inputs",
    "export_mini_omni",
    "modality_token_ids",
]

logger = logging.getLogger(__name__)

PROJECTOR_FILE = Path(__file__).with_name("mini_omni_projectors.safetensors")
#: sha256 of the committed projector weights (written by ``tools/train_mini_omni.py``)
PROJECTOR_SHA256 = "e933f06f5c4a6e87dfb2f488b96282404d04dfed5718423fec523e40fdf28171"
TRAIN_COMMAND = "python tools/train_mini_omni.py"
_IMAGE_MEAN = (0.485, 0.456, 0.406)  # DINOv2's ImageNet normalization
_IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MiniOmniSpec:
    """Shapes and special ids of a mini-omni model.

    Attributes:
        image_size: square input size in pixels (a multiple of ``patch * merge``).
        patch: the vision tower's patch size; ``merge``: patches merged per side into one token.
        audio_frames: mel frames of ``input_features`` (the longest clip; 100 frames a second).
        frames_per_token: mel frames per audio token (Whisper's conv stride 2 x the pooling 2).
        image_token_id / audio_token_id: placeholders in ``input_ids``; ``*_start_id`` / ``*_end_id`` frame them.
    """

    image_size: int = 224
    patch: int = 14
    merge: int = 2
    audio_frames: int = 1000
    frames_per_token: int = 4
    image_token_id: int = 151655
    audio_token_id: int = 151646
    vision_start_id: int = 151652
    vision_end_id: int = 151653
    audio_start_id: int = 151647
    audio_end_id: int = 151648

    def __post_init__(self):
        if self.image_size % (self.patch * self.merge):
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch x merge {self.patch * self.merge}"
            )
        if self.audio_frames % self.frames_per_token:
            raise ValueError(f"audio_frames {self.audio_frames} is not a multiple of {self.frames_per_token}")

    @property
    def image_tokens(self) -> int:
        side = self.image_size // (self.patch * self.merge)
        return side * side

    @property
    def audio_seconds(self) -> float:
        return self.audio_frames / 100.0

    def audio_tokens(self, valid_frames: int) -> int:
        return int(valid_frames) // self.frames_per_token


REAL_SPEC = MiniOmniSpec()


def modality_token_ids(spec: MiniOmniSpec) -> dict[str, tuple[int, ...]]:
    """``QuantConfig.modality_token_ids`` for a mini-omni program."""
    return {"vision": (spec.image_token_id,), "audio": (spec.audio_token_id,)}


class Projector(nn.Sequential):
    """Linear -> GELU -> Linear, from a tower's width into the decoder's."""

    def __init__(self, width_in: int, width_out: int):
        super().__init__(nn.Linear(width_in, width_out), nn.GELU(), nn.Linear(width_out, width_out))


class MiniOmni(nn.Module):
    """``(input_ids, attention_mask, pixel_values, input_features, feature_attention_mask) -> logits (B, S, vocab)``.

    ``pixel_values (images, 3, size, size)`` and ``input_features (clips, mels, audio_frames)`` are always given (a
    batch without images or audio passes one blank image / silent clip and no placeholders: the towers run, nothing
    is merged). ``feature_attention_mask (clips, audio_frames)`` marks valid mel frames (a prefix of each clip). The
    placeholders of ``input_ids`` take the image tokens in image order, then the audio tokens of the valid frames in
    clip order (:func:`check_inputs` checks the counts; eager calls check them, exported programs trust them).
    ``attention_mask`` follows :class:`mqcompile.models.qwen2_text.CausalLMForExport` (0 = padding, 1 = visible).
    """

    def __init__(self, lm: nn.Module, audio_encoder: nn.Module, visual: nn.Module, spec: MiniOmniSpec = REAL_SPEC):
        super().__init__()
        self.spec = spec
        self.visual = visual
        self.audio_tower = audio_encoder
        width = lm.config.hidden_size
        self.vision_projector = Projector(visual.config.hidden_size * spec.merge**2, width)
        self.audio_projector = Projector(audio_encoder.config.d_model, width)
        self.lm = lm  # registered last: the decoder's parameters keep their ``lm.`` names
        positions = audio_encoder.embed_positions.weight.shape[0]
        if spec.audio_frames // 2 > positions:
            raise CheckpointError(f"the audio encoder has {positions} positions, {spec.audio_frames // 2} needed")

    def projector_state(self) -> dict[str, torch.Tensor]:
        state = {f"vision.{k}": v for k, v in self.vision_projector.state_dict().items()}
        return state | {f"audio.{k}": v for k, v in self.audio_projector.state_dict().items()}

    def load_projector_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for prefix, module in (("vision.", self.vision_projector), ("audio.", self.audio_projector)):
            part = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part)

    def merged_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """DINOv2 patch tokens, 2x2-merged: ``(images, image_tokens, 4 * hidden)`` (the frozen part of the tower)."""
        patches = self.visual(pixel_values=pixel_values).last_hidden_state[:, 1:]  # drop CLS
        n, side, m = pixel_values.shape[0], self.spec.image_size // self.spec.patch, self.spec.merge
        grid = patches.reshape(n, side // m, m, side // m, m, patches.shape[-1])
        return grid.permute(0, 1, 3, 2, 4, 5).reshape(n, (side // m) ** 2, m * m * patches.shape[-1])

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(images * image_tokens, width)`` projected, merged patch tokens (row-major per image)."""
        return self.vision_projector(self.merged_patches(pixel_values)).flatten(0, 1)

    def audio_states(self, input_features: torch.Tensor) -> torch.Tensor:
        """Pooled Whisper encoder states ``(clips, audio_frames // 4, d_model)`` (the frozen part of the tower)."""
        enc = self.audio_tower
        x = F.gelu(enc.conv1(input_features))
        x = F.gelu(enc.conv2(x)).transpose(1, 2)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        x = enc.layer_norm(x)
        return F.avg_pool1d(x.transpose(1, 2), 2, 2).transpose(1, 2)

    def audio_embeddings(self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor) -> torch.Tensor:
        """``(clips * tokens, width)`` projected audio tokens, the valid ones of every clip first, in clip order."""
        tokens = self.audio_projector(self.audio_states(input_features))
        valid = feature_attention_mask.sum(-1) // self.spec.frames_per_token  # (clips,)
        keep = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < valid[:, None]
        # a stable sort puts the valid tokens first (static shapes; masked_scatter takes only as many as it needs)
        order = torch.argsort((~keep).flatten().to(torch.int8), stable=True)
        return tokens.flatten(0, 1)[order]

    def embed(self, input_ids, pixel_values, input_features, feature_attention_mask) -> torch.Tensor:
        embeds = self.lm.model.embed_tokens(input_ids)
        embeds = _scatter(embeds, input_ids == self.spec.image_token_id, self.image_embeddings(pixel_values))
        audio = self.audio_embeddings(input_features, feature_attention_mask)
        return _scatter(embeds, input_ids == self.spec.audio_token_id, audio)

    def forward(self, input_ids, attention_mask, pixel_values, input_features, feature_attention_mask):
        if not torch.compiler.is_compiling():
            check_inputs(self.spec, input_ids, attention_mask, pixel_values, input_features, feature_attention_mask)
        embeds = self.embed(input_ids, pixel_values, input_features, feature_attention_mask)
        return decode_embeddings(self.lm, embeds, attention_mask)


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def image_pixels(spec: MiniOmniSpec, images: Sequence[np.ndarray]) -> torch.Tensor:
    """``pixel_values (n, 3, size, size)`` from RGB uint8 ``(size, size, 3)`` images (ImageNet normalization).

    Raises:
        CalibrationError: an image is not ``(image_size, image_size, 3)`` uint8.
    """
    out = []
    for i, image in enumerate(images):
        arr = np.asarray(image)
        if arr.shape != (spec.image_size, spec.image_size, 3) or arr.dtype != np.uint8:
            raise CalibrationError(
                f"image {i} is {arr.dtype} {arr.shape}; mini-omni takes RGB uint8 images of "
                f"({spec.image_size}, {spec.image_size}, 3): resize or crop to {spec.image_size} x {spec.image_size}"
            )
        x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(_IMAGE_MEAN)[:, None, None], torch.tensor(_IMAGE_STD)[:, None, None]
        out.append((x - mean) / std)
    return torch.stack(out)


def audio_features(spec: MiniOmniSpec, waveforms: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_features (n, 80, audio_frames), feature_attention_mask (n, audio_frames))`` from 16 kHz mono clips.

    Raises:
        CalibrationError: a clip is longer than the tower accepts (``spec.audio_seconds``).
    """
    from transformers import WhisperFeatureExtractor

    limit = spec.audio_frames * 160  # 160 samples per 10 ms frame
    for i, wave in enumerate(waveforms):
        if len(wave) > limit:
            raise CalibrationError(
                f"audio clip {i} is {len(wave) / 16000:.2f} s; the mini-omni audio tower accepts at most "
                f"{spec.audio_seconds:.1f} s ({spec.audio_frames} mel frames): split the clip"
            )
    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, n_samples=limit)
    feats = extractor(
        [np.asarray(w, dtype=np.float32) for w in waveforms],
        sampling_rate=16000,
        return_tensors="np",
        return_attention_mask=True,
    )
    features = torch.from_numpy(np.ascontiguousarray(feats.input_features[..., : spec.audio_frames], np.float32))
    mask = torch.from_numpy(np.asarray(feats.attention_mask[..., : spec.audio_frames])).to(torch.long)
    return features, mask


def make_inputs(
    spec: MiniOmniSpec,
    rows: Sequence[Sequence[int]],
    pixel_values: torch.Tensor | None = None,
    audio: tuple[torch.Tensor, torch.Tensor] | None = None,
    pad_id: int = 0,
) -> dict[str, torch.Tensor]:
    """Right-padded model inputs for token rows; a blank image / silent clip stands in where none are given."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    if pixel_values is None:
        pixel_values = torch.zeros(1, 3, spec.image_size, spec.image_size)
    if audio is None:
        audio = (torch.full((1, 80, spec.audio_frames), -1.5), torch.zeros(1, spec.audio_frames, dtype=torch.long))
    features, feature_mask = audio
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": pixel_values,
        "input_features": features,
        "feature_attention_mask": feature_mask,
    }


def check_inputs(spec, input_ids, attention_mask, pixel_values, input_features, feature_attention_mask) -> None:
    """Shapes and placeholder counts of one call.

    Raises:
        CalibrationError: a tensor has the wrong shape (the message gives the one expected), a clip is longer than
            ``spec.audio_frames``, or the placeholders in ``input_ids`` do not match the tower outputs (both counts).
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise CalibrationError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must be (batch, seq)"
        )
    size = spec.image_size
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
        raise CalibrationError(
            f"pixel_values is {tuple(pixel_values.shape)}; mini-omni expects (images, 3, {size}, {size}) "
            f"({size} x {size} RGB, see image_pixels)"
        )
    frames = input_features.shape[-1] if input_features.dim() == 3 else -1
    if frames > spec.audio_frames:
        raise CalibrationError(
            f"input_features has {frames} frames; the audio tower accepts at most {spec.audio_frames} "
            f"({spec.audio_seconds:.1f} s)"
        )
    if input_features.dim() != 3 or frames != spec.audio_frames:
        raise CalibrationError(
            f"input_features is {tuple(input_features.shape)}; expected (clips, 80, {spec.audio_frames}) "
            "(padded log-mel features, see audio_features)"
        )
    if tuple(feature_attention_mask.shape) != (input_features.shape[0], spec.audio_frames):
        raise CalibrationError(
            f"feature_attention_mask is {tuple(feature_attention_mask.shape)}; expected "
            f"({input_features.shape[0]}, {spec.audio_frames})"
        )
    image_slots = int((input_ids == spec.image_token_id).sum())
    image_tokens = pixel_values.shape[0] * spec.image_tokens
    if image_slots not in (0, image_tokens):
        raise CalibrationError(
            f"input_ids has {image_slots} image placeholders but the vision tower gives {image_tokens} tokens "
            f"({pixel_values.shape[0]} images x {spec.image_tokens})"
        )
    audio_slots = int((input_ids == spec.audio_token_id).sum())
    audio_tokens = int((feature_attention_mask.sum(-1) // spec.frames_per_token).sum())
    if audio_slots != audio_tokens and not (audio_slots == 0 and not feature_attention_mask.any()):
        raise CalibrationError(
            f"input_ids has {audio_slots} audio placeholders but the audio tower gives {audio_tokens} tokens "
            f"(valid mel frames // {spec.frames_per_token} per clip)"
        )
    if image_slots == 0 and pixel_values.shape[0] > 1:
        raise CalibrationError(f"{pixel_values.shape[0]} images but input_ids has no image placeholders")


# --------------------------------------------------------------------------------------------------------------------
# Building and export
# --------------------------------------------------------------------------------------------------------------------


def save_projectors(model: MiniOmni, path: str | Path) -> str:
    """Write the projector weights (fp16 safetensors); returns their sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.projector_state().items()}
    save_file(state, str(path))
    return sha256_file(Path(path))


def load_projectors(path: str | Path = PROJECTOR_FILE, sha256: str | None = PROJECTOR_SHA256) -> dict:
    """The projector weights, checked against ``sha256`` (None: not checked).

    Raises:
        CheckpointError: the file is missing or its sha256 differs (names the file, the hash and the command that
            rebuilds it).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"mini-omni projector file {path} is missing; rebuild it with `{TRAIN_COMMAND}`")
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256:
            raise CheckpointError(
                f"mini-omni projector file {path} has sha256 {got}, expected {sha256}; restore it from git or "
                f"rebuild it with `{TRAIN_COMMAND}`"
            )
    return load_file(str(path))


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def build_mini_omni(projectors: str | Path | Mapping[str, torch.Tensor] | None = PROJECTOR_FILE) -> MiniOmni:
    """The real mini-omni model: Whisper-base encoder, DINOv2-S/14, Qwen2.5-Coder-0.5B (all frozen, eval mode) and
    the projectors (the committed file by default; a mapping as returned by :func:`load_projectors`; None keeps a
    seeded random initialization, for training)."""
    from mqcompile.evaluation.checkpoints import load_dinov2_small, load_qwen2_text, load_whisper_base

    start = time.perf_counter()
    lm, _ = load_qwen2_text()
    whisper, _ = load_whisper_base()
    visual = load_dinov2_small()
    torch.manual_seed(0)
    model = MiniOmni(_freeze(lm), _freeze(whisper.model.encoder), _freeze(visual), REAL_SPEC)
    if projectors is not None:
        state = load_projectors(projectors) if isinstance(projectors, (str, Path)) else projectors
        model.load_projector_state(state)
    logger.info("built mini-omni in %.1f s", time.perf_counter() - start)
    return model.eval()


def tiny_mini_omni(seed: int = 0) -> MiniOmni:
    """A random mini-omni with tiny towers and decoder (tests): 28 px images (4 tokens), 64-frame clips."""
    from transformers import Dinov2Config, Dinov2Model, Qwen2Config, Qwen2ForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(seed)
    spec = MiniOmniSpec(image_size=28, patch=7, audio_frames=64)
    lm_config = Qwen2Config(
        vocab_size=151936,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    lm = Qwen2ForCausalLM(lm_config)
    whisper_config = WhisperConfig(
        d_model=24, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=48, max_source_positions=32
    )
    whisper_config._attn_implementation = "eager"
    audio = WhisperEncoder(whisper_config)
    vision_config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=7, image_size=28
    )
    vision_config._attn_implementation = "eager"
    visual = Dinov2Model(vision_config)
    return MiniOmni(_freeze(lm), _freeze(audio), _freeze(visual), spec).eval()


def export_mini_omni(model: MiniOmni, example: Mapping[str, torch.Tensor]) -> torch.export.ExportedProgram:
    """The whole forward as one ExportedProgram: inputs of :func:`make_inputs` -> logits.

    Dynamic dims: batch and sequence of ``input_ids`` / ``attention_mask``, the number of images and of clips; the
    example needs >= 2 of each (torch.export specializes size-1 dims). Linears stay ``aten.linear.default``.
    """
    check_inputs(model.spec, **example)
    for name, dims in (("input_ids", (0, 1)), ("pixel_values", (0,)), ("input_features", (0,))):
        if any(example[name].shape[d] < 2 for d in dims):
            raise CalibrationError(f"export needs an example with >= 2 along dims {dims} of {name}")
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=1, max=4096)
    images, clips = torch.export.Dim("images", min=1, max=1024), torch.export.Dim("clips", min=1, max=1024)
    shapes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: seq},
        "pixel_values": {0: images},
        "input_features": {0: clips},
        "feature_attention_mask": {0: clips},
    }
    kwargs = {k: v.clone() for k, v in example.items()}
    start = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(model.eval(), args=(), kwargs=kwargs, dynamic_shapes=shapes, strict=False)
    logger.info("exported mini-omni in %.1f s", time.perf_counter() - start)
    return ep
