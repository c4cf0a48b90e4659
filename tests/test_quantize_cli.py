"""Issue #17: ``mqcompile quantize SOURCE OUT.pt2`` on a saved exported program and on a checkpoint directory: the
output loads, runs and equals ``mqcompile.quantize`` with the same recipe bit for bit; every bad input is one
``mqcompile quantize: error: ...`` line with exit code 2."""

import json

import pytest
import torch

import mqcompile
from mqcompile import QuantConfig, QuantizedProgram, recipes
from mqcompile.cli import main
from tests.conftest import toy_inputs


@pytest.fixture
def saved_toy(toy, tmp_path):
    _, kwargs, ep = toy
    path = tmp_path / "toy.pt2"
    torch.export.save(ep, path)
    calib = tmp_path / "calib.pt"
    torch.save([toy_inputs(1), toy_inputs(2)], calib)
    return ep, path, calib


@pytest.fixture
def one_thread():
    """Calibrated recipes move by last-bit float noise under several threads (docs/method.md): bit-for-bit
    comparisons of two quantize runs need one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _equal_programs(a: QuantizedProgram, b: QuantizedProgram, inputs) -> bool:
    return torch.equal(a.module()(**inputs), b.module()(**inputs))


def test_a_saved_exported_program_round_trips(saved_toy, tmp_path, capsys, one_thread):
    ep, path, calib = saved_toy
    out = tmp_path / "q" / "toy_w4a4.pt2"
    args = ["quantize", str(path), str(out), "--recipe", "SMOOTHQUANT", "--calibration", str(calib), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "exported program" in printed and "recipes.SMOOTHQUANT, calibration 2 batches" in printed
    assert "Output fidelity vs float on 1 held-out batches" in printed  # the program's own example inputs
    got = QuantizedProgram.load(out)
    want = mqcompile.quantize(
        ep, QuantConfig(algorithms=recipes.SMOOTHQUANT), calibration=[toy_inputs(1), toy_inputs(2)], progress=False
    )
    assert _equal_programs(got, want, toy_inputs(5))


def test_json_output_and_flags(saved_toy, tmp_path, capsys):
    ep, path, _ = saved_toy
    out = tmp_path / "toy.pt2"
    assert main(["quantize", str(path), str(out), "--default", "w8a8", "--modality", "audio=w4a16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"] == "recipes.RTN" and result["config"]["default"] == "w8a8"
    assert result["linears"].get("audio/w4a16", 0) >= 1
    assert {k.split("/")[1] for k in result["linears"] if not k.startswith("audio/")} <= {"w8a8", "float"}
    assert result["bytes_after"] < result["bytes_before"] and set(result["fidelity"]) == {"all"}
    want = mqcompile.quantize(ep, QuantConfig(default="w8a8", modality={"audio": "w4a16"}), progress=False)
    assert _equal_programs(QuantizedProgram.load(out), want, toy_inputs(3))


def test_the_tiny_thinker_directory_round_trips(tiny_thinker, tmp_path, capsys):
    from mqcompile.models import export_thinker, load_thinker, make_sample, modality_token_ids

    folder = tmp_path / "thinker"
    tiny_thinker.save_pretrained(folder)
    out = tmp_path / "thinker_w4a4.pt2"
    assert main(["quantize", str(folder), str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Qwen2.5-Omni thinker" in printed
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.split()[:1] in (["text"], ["audio"])}
    assert 0.9 < float(rows["audio"][-2]) < 1.0  # fidelity per token modality on a held-out sample
    model = load_thinker(folder)
    sample = make_sample(model, seed=0)
    token_ids = {k: tuple(v) for k, v in modality_token_ids(model.config).items()}
    want = mqcompile.quantize(export_thinker(model, sample), QuantConfig(modality_token_ids=token_ids), progress=False)
    assert _equal_programs(QuantizedProgram.load(out), want, make_sample(model, seed=3))


def _error(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mqcompile quantize: error: ") and "Traceback" not in err
    return err


def test_bad_inputs_say_what_to_do(saved_toy, tmp_path, capsys):
    ep, path, calib = saved_toy
    out = str(tmp_path / "o.pt2")
    q = tmp_path / "already.pt2"
    mqcompile.quantize(ep, progress=False).save(q)
    (tmp_path / "empty").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "llama"}')
    wrong = tmp_path / "wrong.pt"
    torch.save([{"input_ids": torch.zeros(1, 3, dtype=torch.long)}], wrong)
    evil = tmp_path / "evil.pt"
    torch.save([{"x": torch.nn.Linear(2, 2)}], evil)  # a module: only a full unpickle could read it
    cases = [
        ([str(tmp_path / "nope.pt2"), out], "does not exist"),
        ([str(tmp_path / "empty"), out], "has no config.json"),
        ([str(other), out], "holds a 'llama' model; the adapters know"),
        ([str(q), out], "already a QuantizedProgram"),
        ([str(path), str(tmp_path / "o.bin")], "name the output file .pt2"),
        ([str(path), out, "--recipe", "FASTQUANT"], "unknown recipe part 'FASTQUANT'"),
        ([str(path), out, "--recipe", str(tmp_path / "r.json")], "no such file"),
        ([str(path), out, "--modality", "audio:w8a8"], "write PATH=SCHEME"),
        ([str(path), out, "--modality", "audio=w3a3"], "unknown scheme"),
        ([str(path), out, "--recipe", "MORPHOQUANT"], "calibrates, and no calibration was given; pass --calibration"),
        (
            [str(path), out, "--recipe", "MORPHOQUANT", "--calibration", "builtin"],
            "no builtin data for this source",
        ),
        ([str(path), out, "--calibration", str(tmp_path / "c.pt")], "no such file"),
        ([str(path), out, "--recipe", "SMOOTHQUANT", "--calibration", str(evil)], "weights_only=True"),
        ([str(path), out, "--recipe", "SMOOTHQUANT", "--calibration", str(wrong)], "calibration batch 0: got inputs"),
        ([str(path), out, "--calibration", str(calib), "--samples", "0"], "--samples 0: must be >= 1"),
    ]
    for args, message in cases:
        assert message in _error(["quantize", *args, "--no-progress"], capsys), (args, message)
    assert not (tmp_path / "o.pt2").exists()


def test_report_flag_writes_the_report(saved_toy, tmp_path, capsys):
    _, path, calib = saved_toy
    args = ["quantize", str(path), str(tmp_path / "q.pt2"), "--recipe", "DABC_ONLY", "--calibration", str(calib)]
    assert main([*args, "--report", str(tmp_path / "rep"), "--no-progress"]) == 0
    assert f"report: {tmp_path / 'rep' / 'report.html'}" in capsys.readouterr().out
    assert (tmp_path / "rep" / "layers.png").is_file() and (tmp_path / "rep" / "dabc.png").is_file()


def _byte_tokenizer(specials: tuple[str, ...] = ()):
    """A byte-level tokenizer (every byte one token, ids 0-255; ``specials`` from 256 on): no download."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def _tiny_qwen2_folder(folder):
    """A tiny random Qwen2 causal LM with a byte-level tokenizer of its own."""
    from tests.tiny_models import tiny_qwen2

    tokenizer = _byte_tokenizer()
    tokenizer.save_pretrained(folder)
    tiny_qwen2(vocab_size=len(tokenizer)).save_pretrained(folder)


@pytest.mark.assets  # the builtin calibration reads the eval extra's Wikipedia dump
def test_a_causal_lm_directory_with_builtin_calibration_round_trips(tmp_path, capsys, one_thread):
    from transformers import AutoModelForCausalLM

    from mqcompile.models.qwen2_text import export_causal_lm
    from mqcompile.models.sources import load_source

    folder = tmp_path / "lm"
    _tiny_qwen2_folder(folder)
    out = tmp_path / "lm_w4a4.pt2"
    args = ["quantize", str(folder), str(out), "--recipe", "SMOOTHQUANT", "--calibration", "builtin", "--samples", "2"]
    assert main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Qwen2-family causal LM" in printed and "calibration 2 batches (builtin: Wikipedia" in printed
    assert "Output fidelity vs float on 1 held-out batches" in printed
    source = load_source(folder)
    batches = source.builtin(2)
    assert [b["input_ids"].shape for b in batches] == [(1, 256), (1, 256)]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    ep = export_causal_lm(
        model, source.program.example_inputs[1]["input_ids"], source.program.example_inputs[1]["attention_mask"]
    )
    want = mqcompile.quantize(ep, QuantConfig(algorithms=recipes.SMOOTHQUANT), calibration=batches, progress=False)
    probe = source.held_out[0]
    assert torch.equal(QuantizedProgram.load(out).module()(**probe), want.module()(**probe))


@pytest.mark.assets  # the builtin calibration reads the eval extra's Wikipedia dump
def test_kv_cache_quantizes_the_decode_program_that_onnx_runtime_serves(tmp_path, capsys, one_thread):
    """--kv-cache: the saved program takes a past and returns the grown cache; calibrated on prefills of an empty
    past (so its prefill logits are the prefill program's, to quantization), and export-onnx serves a decode step."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoConfig

    from mqcompile.models.qwen2_text import empty_cache_inputs
    from mqcompile.models.sources import load_source

    folder = tmp_path / "lm"
    _tiny_qwen2_folder(folder)
    out, onnx_path = tmp_path / "lm_kv.pt2", tmp_path / "lm_kv.onnx"
    args = ["quantize", str(folder), str(out), "--recipe", "MORPHOQUANT+Rotate", "--calibration", "builtin"]
    assert main([*args, "--samples", "2", "--kv-cache", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "Qwen2-family causal LM with its KV cache"
    assert result["fidelity"]["all"]["cosine"] > 0.9
    qp = QuantizedProgram.load(out)
    assert list(qp.exported_program.graph_signature.user_inputs) == [
        "input_ids",
        "attention_mask",
        "past_mask",
        "past_keys",
        "past_values",
    ]
    assert main(["export-onnx", str(out), str(onnx_path), "--variant", "w4a4int"]) == 0
    prefill = load_source(folder).held_out[0]  # a held-out batch of the prefill program
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    config = AutoConfig.from_pretrained(folder)
    feed = {k: v.numpy() for k, v in empty_cache_inputs(config, **prefill).items()}
    logits, keys, values = session.run(None, feed)
    want = qp.module()(**{k: torch.from_numpy(v) for k, v in feed.items()})
    np.testing.assert_allclose(logits, want[0].detach().numpy(), atol=1e-4)
    step = {
        "input_ids": feed["input_ids"][:, :1],
        "attention_mask": np.ones((1, 1), dtype=np.int64),
        "past_mask": np.concatenate([feed["past_mask"], feed["attention_mask"]], axis=1),
        "past_keys": keys,
        "past_values": values,
    }
    assert session.run(None, step)[1].shape[3] == keys.shape[3] + 1
    capsys.readouterr()
    assert main(["quantize", "mini-omni", str(tmp_path / "x.pt2"), "--kv-cache"]) != 0
    assert "--kv-cache: 'mini-omni' is not a Qwen2-family causal LM" in capsys.readouterr().err


@pytest.mark.assets  # the builtin calibration and the held-out images are scikit-image's, from the eval extra
def test_a_vit_directory_with_builtin_calibration_round_trips(tmp_path, capsys, one_thread):
    from mqcompile.models.sources import load_source
    from tests.tiny_models import tiny_dinov2

    folder = tmp_path / "vit"
    tiny_dinov2().save_pretrained(folder)
    out = tmp_path / "vit_w4a4.pt2"
    args = ["quantize", str(folder), str(out), "--recipe", "DABC_ONLY", "--calibration", "builtin", "--samples", "2"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "DINOv2-style ViT" and result["calibration"]["batches"] == 2
    assert set(result["fidelity"]) == {"all"} and result["fidelity"]["all"]["rows"] > 0
    source = load_source(folder)
    assert list(source.program.graph_signature.user_inputs) == ["pixel_values"]
    want = mqcompile.quantize(
        source.program, QuantConfig(algorithms=recipes.DABC_ONLY), source.builtin(2), progress=False
    )
    probe = source.held_out[0]
    assert torch.equal(QuantizedProgram.load(out).module()(**probe), want.module()(**probe))


_WHISPER_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")  # ids 256, 257, 258


def _tiny_whisper_folder(folder, tokenizer: bool = True):
    """A tiny random Whisper (8 mel bins, 32 frames, 32 decoder positions) with a byte-level tokenizer."""
    from tests.tiny_models import tiny_whisper

    tiny_whisper(vocab_size=259, end_id=256, start_id=257).save_pretrained(folder)
    if tokenizer:
        _byte_tokenizer(_WHISPER_SPECIALS).save_pretrained(folder)
    return folder


@pytest.mark.assets  # the builtin calibration and the held-out clips are espeak-ng speech
def test_a_whisper_directory_with_builtin_calibration_round_trips(tmp_path, capsys, one_thread):
    from mqcompile.evaluation.speech import SpeechTask
    from mqcompile.models.sources import load_source

    folder = _tiny_whisper_folder(tmp_path / "whisper")
    out = tmp_path / "whisper_w4a4.pt2"
    args = ["quantize", str(folder), str(out), "--recipe", "SMOOTHQUANT", "--calibration", "builtin", "--samples", "2"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "Whisper" and result["calibration"]["batches"] == 2
    # the encoder's q, k, v, out, fc1, fc2 and the decoder's cross-attention k, v read only audio
    assert result["linears"]["audio/w4a4"] == 2 * 6 + 2 * 2
    assert result["fidelity"]["all"]["rows"] > 0 and result["held_out_batches"] == 2
    source = load_source(folder)
    batches = source.builtin(2)
    tokenizer = _byte_tokenizer(_WHISPER_SPECIALS)
    task = SpeechTask()
    for batch, sentence in zip(batches, task.calibration_sentences):
        assert batch["input_features"].shape == (1, 8, 32)
        ids = batch["decoder_input_ids"][0].tolist()
        text = tokenizer(" " + sentence, add_special_tokens=False).input_ids
        assert ids == ([257, 258] + text)[:31] + [256]  # prompt, teacher-forced transcript cut to 32, end of text
    assert not torch.equal(batches[0]["input_features"], batches[1]["input_features"])
    assert not torch.equal(batches[0]["input_features"], source.held_out[0]["input_features"])
    want = mqcompile.quantize(
        source.program, QuantConfig(algorithms=recipes.SMOOTHQUANT), calibration=batches, progress=False
    )
    probe = source.held_out[0]
    assert torch.equal(QuantizedProgram.load(out).module()(**probe), want.module()(**probe))


def test_a_whisper_directory_without_its_tokenizer_is_refused(tmp_path, capsys):
    folder = _tiny_whisper_folder(tmp_path / "whisper", tokenizer=False)
    capsys.readouterr()  # transformers' shard-writing bar
    err = _error(["quantize", str(folder), str(tmp_path / "o.pt2"), "--no-progress"], capsys)
    assert "has no tokenizer files; a Whisper directory needs them" in err


@pytest.mark.assets  # Wikipedia text, scikit-image photos, espeak-ng speech
def test_a_thinker_directory_with_a_tokenizer_calibrates_on_real_data(tiny_thinker, tmp_path, capsys, one_thread):
    from mqcompile.models import builtin_data
    from mqcompile.models.qwen2_5_omni.processing import image_patches
    from mqcompile.models.sources import load_source

    folder = tmp_path / "thinker"
    tiny_thinker.save_pretrained(folder)
    tokenizer = _byte_tokenizer()
    tokenizer.save_pretrained(folder)
    out = tmp_path / "thinker_w4a4.pt2"
    args = ["quantize", str(folder), str(out), "--recipe", "SMOOTHQUANT", "--calibration", "builtin", "--samples", "2"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["calibration"]["from"].startswith("builtin: one Wikipedia passage")
    assert set(result["fidelity"]) == {"text", "vision", "audio"}
    source = load_source(folder)
    batches = source.builtin(2)
    config = tiny_thinker.config
    texts, photos = builtin_data.wiki_texts(), builtin_data.photos(2, 112)
    for i, batch in enumerate(batches):
        ids = batch["input_ids"][0]
        assert int((ids == config.image_token_id).sum()) == 16 and int((ids == config.audio_token_id).sum()) == 150
        assert batch["input_features"].shape == (128, 600)
        assert ids[ids < 256].tolist() == tokenizer(texts[i][:512]).input_ids[:64]
        assert torch.equal(batch["pixel_values"], image_patches(config, photos[i])[0])
    assert not torch.equal(batches[0]["input_features"], batches[1]["input_features"])
    want = mqcompile.quantize(
        source.program,
        QuantConfig(algorithms=recipes.SMOOTHQUANT, modality_token_ids=source.modality_token_ids),
        calibration=batches,
        progress=False,
    )
    probe = source.held_out[0]
    assert torch.equal(QuantizedProgram.load(out).module()(**probe), want.module()(**probe))


@pytest.mark.assets  # the mini-omni is the eval extra's real weights
def test_the_mini_omni_source(tmp_path, capsys):
    out = tmp_path / "omni.pt2"
    assert main(["quantize", "mini-omni", str(out), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "mini-omni" and set(result["fidelity"]) == {"text", "vision", "audio"}
    assert {k.split("/")[0] for k in result["linears"]} >= {"vision", "audio", "fused"}
    assert all(f["cosine"] > 0.5 for f in result["fidelity"].values())
