"""Whisper: torch.export entry points.

The real Whisper-base checkpoint (CTranslate2 reader, conversion, the offline asset) is loaded by
:func:`mqcompile.evaluation.checkpoints.whisper.load_whisper_base`; this module only wraps and exports a
``transformers.WhisperForConditionalGeneration``.

What it provides and guarantees:

* :func:`export_whisper_encoder`, :func:`export_whisper_decoder`, :func:`export_whisper`: ``ExportedProgram`` s whose
  linears stay ``aten.linear.default`` (no decomposition is run) and whose outputs are checked against the HF
  forward. Placeholders are named ``input_features`` (the default audio source), ``encoder_hidden_states`` and
  ``decoder_input_ids`` (not a default source name: pass ``QuantConfig(sources=...)``); decoder length and (except in
  the combined program) batch are dynamic.

The adapters register the output projection last, as ``lm_head``. Whisper ties it to the token embedding, and
torch.export names a tied weight after the module registered last, so the output linear is called ``lm_head`` (not
``decoder.embed_tokens``) and the default ``QuantConfig.keep_float`` keeps it float like every other model's output
head (the tests check the name).

Example::

    from mqcompile.evaluation.checkpoints.whisper import load_whisper_base

    model, tokenizer = load_whisper_base()
    feats = torch.zeros(2, 80, 3000)
    ids = torch.tensor([[50258, 50259, 50359, 50363]] * 2)
    ep = export_whisper(model, feats, ids)
    logits = ep.module()(input_features=feats, decoder_input_ids=ids)
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from mqcompile.errors import CalibrationError, UnsupportedProgramError

__all__ = [
    "WhisperEncoderForExport",
    "WhisperDecoderForExport",
    "WhisperForExport",
    "export_whisper_encoder",
    "export_whisper_decoder",
    "export_whisper",
    "log_mel",
    "decoder_prompt",
]

logger = logging.getLogger(__name__)

_ATOL = 1e-4  # exported vs HF forward, float32


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------


class WhisperEncoderForExport(nn.Module):
    """``input_features (B, mels, 2 * max_source_positions)`` -> encoder hidden states ``(B, positions, d_model)``."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features=input_features).last_hidden_state


class WhisperDecoderForExport(nn.Module):
    """``encoder_hidden_states``, ``decoder_input_ids`` -> logits (no KV cache: the whole prefix every call)."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.model.decoder
        self.lm_head = model.proj_out  # registered last: names the tied weight (see the module doc)

    def forward(self, encoder_hidden_states: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder(
            input_ids=decoder_input_ids, encoder_hidden_states=encoder_hidden_states, use_cache=False
        ).last_hidden_state
        return self.lm_head(hidden)


class WhisperForExport(nn.Module):
    """``input_features``, ``decoder_input_ids`` -> logits: encoder and decoder in one program."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.encoder
        self.decoder = model.model.decoder
        self.lm_head = model.proj_out  # registered last: names the tied weight (see the module doc)

    def forward(self, input_features: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_features=input_features).last_hidden_state
        hidden = self.decoder(
            input_ids=decoder_input_ids, encoder_hidden_states=states, use_cache=False
        ).last_hidden_state
        return self.lm_head(hidden)


def _check_features(model, input_features: torch.Tensor) -> None:
    cfg = model.config
    frames = 2 * cfg.max_source_positions
    if not isinstance(input_features, torch.Tensor) or input_features.dim() != 3:
        raise CalibrationError("input_features must be a (batch, mel bins, frames) tensor")
    if tuple(input_features.shape[1:]) != (cfg.num_mel_bins, frames):
        raise CalibrationError(
            f"input_features has shape {tuple(input_features.shape)}; Whisper wants (batch, {cfg.num_mel_bins}, "
            f"{frames}) (log-mel features padded to {frames} frames, as WhisperFeatureExtractor makes them)"
        )
    if not input_features.is_floating_point():
        raise CalibrationError(f"input_features must be floating point, got {input_features.dtype}")


def _check_ids(model, decoder_input_ids: torch.Tensor) -> None:
    cfg = model.config
    if not isinstance(decoder_input_ids, torch.Tensor) or decoder_input_ids.dim() != 2:
        raise CalibrationError("decoder_input_ids must be a (batch, length) integer tensor")
    if decoder_input_ids.dtype != torch.long:
        raise CalibrationError(f"decoder_input_ids must be int64, got {decoder_input_ids.dtype}")
    if decoder_input_ids.shape[1] > cfg.max_target_positions:
        raise CalibrationError(f"decoder_input_ids is longer than {cfg.max_target_positions} positions")


def _dims(batch: int, length: int | None, max_length: int):
    # An example size of 1 would be specialized by torch.export, so a size-1 example keeps that dim static.
    static = torch.export.Dim.STATIC
    b = torch.export.Dim("batch", min=1, max=1024) if batch > 1 else static
    t = torch.export.Dim("decoder_tokens", min=1, max=max_length) if length is not None and length > 1 else static
    return b, t


def _export(module: nn.Module, kwargs: dict[str, torch.Tensor], dynamic_shapes, what: str):
    start = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(module.eval(), args=(), kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    logger.info("exported Whisper %s in %.1f s", what, time.perf_counter() - start)
    return ep


def _verify(ep, kwargs: dict[str, torch.Tensor], reference: torch.Tensor, what: str) -> None:
    with torch.no_grad():
        got = ep.module()(**kwargs)
    if got.shape != reference.shape or not torch.allclose(got, reference, atol=_ATOL, rtol=1e-4):
        err = (got - reference).abs().max().item() if got.shape == reference.shape else float("nan")
        raise UnsupportedProgramError(f"exported Whisper {what} differs from the HF forward (max |diff| {err:.3g})")


def export_whisper_encoder(model, input_features: torch.Tensor, *, check: bool = True):
    """Export the encoder: ``input_features`` -> last hidden state (the encoder's final layer norm applied).

    The batch dim is dynamic when the example batch is > 1. With ``check`` the program's output is compared with
    ``model.model.encoder`` on the example (UnsupportedProgramError when they differ).

    Example::

        ep = export_whisper_encoder(model, torch.zeros(2, 80, 3000))
    """
    _check_features(model, input_features)
    batch, _ = _dims(input_features.shape[0], None, 1)
    kwargs = {"input_features": input_features.contiguous()}
    ep = _export(WhisperEncoderForExport(model), kwargs, {"input_features": {0: batch}}, "encoder")
    if check:
        with torch.no_grad():
            reference = model.model.encoder(input_features=input_features).last_hidden_state
        _verify(ep, kwargs, reference, "encoder")
    return ep


def export_whisper_decoder(
    model, encoder_hidden_states: torch.Tensor, decoder_input_ids: torch.Tensor, *, check: bool = True
):
    """Export the decoder with the output projection: ``encoder_hidden_states``, ``decoder_input_ids`` -> logits.

    Batch (example batch > 1) and decoder length (example length > 1, up to ``max_target_positions``) are dynamic;
    the encoder length is static. There is no KV cache: every call recomputes the whole prefix. With ``check`` the
    output is compared with ``model(encoder_outputs=..., decoder_input_ids=...).logits``.

    Example::

        ep = export_whisper_decoder(model, states, torch.tensor([[50258, 50259, 50359, 50363]] * 2))
    """
    _check_ids(model, decoder_input_ids)
    if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[0] != decoder_input_ids.shape[0]:
        raise CalibrationError(
            f"encoder_hidden_states {tuple(encoder_hidden_states.shape)} must be (batch, positions, d_model) with "
            f"the batch of decoder_input_ids {tuple(decoder_input_ids.shape)}"
        )
    batch, tokens = _dims(*decoder_input_ids.shape, model.config.max_target_positions)
    # contiguous examples: a strided view would add guards on its strides (e.g. a length != the parent's length)
    kwargs = {
        "encoder_hidden_states": encoder_hidden_states.contiguous(),
        "decoder_input_ids": decoder_input_ids.contiguous(),
    }
    shapes = {"encoder_hidden_states": {0: batch}, "decoder_input_ids": {0: batch, 1: tokens}}
    ep = _export(WhisperDecoderForExport(model), kwargs, shapes, "decoder")
    if check:
        with torch.no_grad():
            reference = model(
                encoder_outputs=(encoder_hidden_states,), decoder_input_ids=decoder_input_ids, use_cache=False
            ).logits
        _verify(ep, kwargs, reference, "decoder")
    return ep


def export_whisper(
    model,
    input_features: torch.Tensor,
    decoder_input_ids: torch.Tensor,
    *,
    dynamic_batch: bool = False,
    check: bool = True,
):
    """Export encoder + decoder as one program: ``input_features``, ``decoder_input_ids`` -> logits.

    The decoder length is dynamic as in :func:`export_whisper_decoder`. The batch is static unless ``dynamic_batch``:
    a dynamic batch is one symbol shared by both inputs, and torch.export reads it off ``decoder_input_ids``
    (``sym_size``) for every reshape, the encoder's included, so a data-flow tagger that follows shape edges would
    see the text input reach every encoder linear. With ``check`` the output is compared with
    ``model(input_features=..., decoder_input_ids=...).logits``.

    Example::

        ep = export_whisper(model, torch.zeros(2, 80, 3000), torch.tensor([[50258, 50259, 50359, 50363]] * 2))
    """
    _check_features(model, input_features)
    _check_ids(model, decoder_input_ids)
    if input_features.shape[0] != decoder_input_ids.shape[0]:
        raise CalibrationError("input_features and decoder_input_ids must have the same batch size")
    batch, tokens = _dims(*decoder_input_ids.shape, model.config.max_target_positions)
    batch = batch if dynamic_batch else torch.export.Dim.STATIC
    kwargs = {"input_features": input_features.contiguous(), "decoder_input_ids": decoder_input_ids.contiguous()}
    shapes = {"input_features": {0: batch}, "decoder_input_ids": {0: batch, 1: tokens}}
    ep = _export(WhisperForExport(model), kwargs, shapes, "encoder+decoder")
    if check:
        with torch.no_grad():
            reference = model(input_features=input_features, decoder_input_ids=decoder_input_ids, use_cache=False)
        _verify(ep, kwargs, reference.logits, "encoder+decoder")
    return ep


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def log_mel(config, waves) -> torch.Tensor:
    """``(n, num_mel_bins, 2 * max_source_positions)`` log-mel features of 16 kHz mono clips, as
    ``WhisperFeatureExtractor`` makes them for this config (padded with silence, or cut, to the encoder's window)."""
    import numpy as np
    from transformers import WhisperFeatureExtractor

    frames = 2 * int(config.max_source_positions)
    extractor = WhisperFeatureExtractor(
        feature_size=int(config.num_mel_bins), sampling_rate=16_000, n_samples=frames * 160
    )
    feats = extractor([np.asarray(w, dtype=np.float32) for w in waves], sampling_rate=16_000, return_tensors="np")
    return torch.from_numpy(np.ascontiguousarray(feats.input_features[..., :frames], dtype=np.float32))


def decoder_prompt(config, tokenizer) -> list[int]:
    """The transcription prompt: the start token, then English, transcribe and no-timestamps where the tokenizer
    has them (an English-only model has no language or task token)."""
    prompt = [int(config.decoder_start_token_id)]
    for token in ("<|en|>", "<|transcribe|>", "<|notimestamps|>"):
        i = tokenizer.convert_tokens_to_ids(token)
        if isinstance(i, int) and i != tokenizer.unk_token_id and i not in prompt:
            prompt.append(i)
    return prompt
