"""Tests of the Whisper speech task: text normalization, WER, greedy decoding with drafts (synthetic), packing and
resampling; and a two-sentence slice of the real task, skipped without the asset packages or espeak-ng."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mqcompile
from mqcompile.evaluation import speech
from mqcompile.evaluation.speech import greedy_decode, normalize_text, word_error_rate, word_errors

# ------------------------------------------------------------------------------------------------------------ WER


def test_normalize_text():
    assert normalize_text("Don't stop, Bob-Smith!") == ["dont", "stop", "bob", "smith"]
    assert normalize_text("  The  CAT\u2019s hat.\n") == ["the", "cats", "hat"]
    assert normalize_text("It costs 20 dollars; (really)?") == ["it", "costs", "20", "dollars", "really"]
    assert normalize_text("...") == []


def test_word_errors():
    assert word_errors([], []) == 0
    assert word_errors(["a", "b"], []) == 2
    assert word_errors([], ["a", "b", "c"]) == 3
    assert word_errors("the cat sat".split(), "the cat sat".split()) == 0
    assert word_errors("the cat sat".split(), "the bat sat".split()) == 1  # substitution
    assert word_errors("the cat sat".split(), "the sat".split()) == 1  # deletion
    assert word_errors("the cat sat".split(), "the black cat sat".split()) == 1  # insertion
    assert word_errors("a b c d e f".split(), "a x c d f g".split()) == 3
    assert word_errors("kitten".split(), "sitting".split()) == 1  # words, not characters


def test_word_error_rate_pools_over_sentences_and_normalizes():
    refs = ["The cat sat on the mat.", "Hello world"]
    hyps = [" the cat sat on a mat", "hello, World!"]
    assert word_error_rate(refs, hyps) == pytest.approx(100 * 1 / 8)
    assert word_error_rate(refs, refs) == 0.0
    assert word_error_rate(["a b"], [""]) == 100.0
    assert word_error_rate(["a"], ["a b c"]) == 200.0  # insertions can push WER past 100%
    with pytest.raises(ValueError, match="references"):
        word_error_rate(["a"], [])
    with pytest.raises(ValueError, match="no words"):
        word_error_rate(["..."], ["a"])


# ---------------------------------------------------------------------------------------------------- greedy decode

EOT, VOCAB, PROMPT = 19, 20, (16, 17, 18)


def _next_token(prefix: list[int], row: int) -> int:
    """A deterministic 'model': some rows end, some fall into a repetition loop, some run to the limit."""
    generated = prefix[len(PROMPT) :]
    if row == 0:
        return EOT if len(generated) >= 12 else (sum(prefix) * 7 + len(prefix) * 3 + row) % 16
    if row == 1:
        return (1, 2, 3)[len(generated) % 3] if len(generated) > 4 else (len(prefix) * 5) % 16
    if row == 2:
        return EOT  # nothing to say
    return (sum(prefix) * 11 + row) % 16  # never ends


class FakeDecoder:
    """Causal by construction: the logits at position i depend only on the tokens up to i."""

    def __init__(self):
        self.calls = 0

    def __call__(self, encoder_hidden_states, decoder_input_ids):
        self.calls += 1
        rows = encoder_hidden_states[:, 0, 0].long().tolist()
        logits = torch.zeros(*decoder_input_ids.shape, VOCAB)
        for b, row in enumerate(rows):
            seq = decoder_input_ids[b].tolist()
            for i in range(len(seq)):
                logits[b, i, _next_token(seq[: i + 1], row)] = 1.0
        return logits


def _naive(row: int, limit: int) -> list[int]:
    out: list[int] = []
    while len(out) < limit:
        token = _next_token([*PROMPT, *out], row)
        if token == EOT:
            break
        out.append(token)
    return out


@pytest.mark.parametrize("draft_kind", ["none", "exact", "wrong", "shifted", "partial"])
def test_greedy_decode_equals_step_by_step_greedy(draft_kind):
    rows, limits = [0, 1, 2, 3], [30, 40, 30, 25]
    states = torch.tensor(rows, dtype=torch.float32).reshape(-1, 1, 1).expand(-1, 5, 2).contiguous()
    want = [_naive(r, limit) for r, limit in zip(rows, limits)]
    drafts = {
        "none": None,
        "exact": [[*w, EOT] for w in want],
        "wrong": [[(t + 1) % 16 for t in w] for w in want],
        "shifted": [[5, *w[:3], *w[4:]] for w in want],  # an inserted and a deleted token
        "partial": [w[: len(w) // 2] for w in want],
    }[draft_kind]
    decoder = FakeDecoder()
    got, counts = greedy_decode(decoder, states, PROMPT, EOT, drafts, limits)
    assert got == want
    assert counts["calls"] == decoder.calls and counts["row_calls"] >= counts["calls"]
    if draft_kind == "exact":
        assert counts["calls"] == 1
    if draft_kind == "none":  # only the repetition loop (row 1) gets drafts, from its own output
        assert counts["calls"] < max(limits)


def test_greedy_decode_single_limit_and_zero():
    states = torch.zeros(1, 3, 2)
    out, counts = greedy_decode(FakeDecoder(), states, PROMPT, EOT, max_new_tokens=5)
    assert out == [_naive(0, 5)] and len(out[0]) == 5
    out, counts = greedy_decode(FakeDecoder(), states, PROMPT, EOT, max_new_tokens=0)
    assert out == [[]] and counts["calls"] == 0


def test_greedy_decode_ignores_right_padding():
    """Rows of different lengths share a call; padding after a row never changes its predictions."""
    states = torch.tensor([0.0, 3.0]).reshape(2, 1, 1).expand(-1, 4, 1).contiguous()
    good = [*_naive(0, 30), EOT]
    out, _ = greedy_decode(FakeDecoder(), states, PROMPT, EOT, [good, []], [30, 10])
    assert out == [_naive(0, 30), _naive(3, 10)]


# ------------------------------------------------------------------------------------------------ audio and packing


def test_pack_clips():
    assert speech.pack_clips([5, 5, 5, 5, 5, 5], 28.0, 0.5) == [[0, 1, 2, 3, 4], [5]]
    assert speech.pack_clips([10, 10, 10], 21.0, 0.5) == [[0, 1], [2]]
    assert speech.pack_clips([10, 10, 10], 0.0) == [[0], [1], [2]]
    assert speech.pack_clips([40, 1], 28.0) == [[0], [1]]  # an overlong item still gets its own clip
    assert speech.pack_clips([], 28.0) == []


def test_resample_keeps_a_tone():
    rate, seconds, freq = 22050, 1.0, 440.0
    t = np.arange(int(rate * seconds)) / rate
    out = speech.resample(np.sin(2 * math.pi * freq * t), rate)
    assert out.dtype == np.float32 and len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == pytest.approx(freq * seconds, abs=1)
    assert np.max(np.abs(out[100:-100])) == pytest.approx(1.0, abs=0.02)


def test_task_split_is_disjoint_and_seeded():
    task = speech.SpeechTask()
    assert len(task.eval_sentences) >= 40 and not set(task.eval_sentences) & set(task.calibration_sentences)
    quick = speech.SpeechTask(quick=True)
    assert len(quick.eval_sentences) == 8 and not set(quick.eval_sentences) & set(quick.calibration_sentences)
    assert speech.SpeechTask(seed=1).eval_sentences != task.eval_sentences
    assert speech.SpeechTask(seed=0).eval_sentences == task.eval_sentences
    for sentence in speech.SENTENCES:
        assert 8 <= len(sentence.split()) <= 25 and normalize_text(sentence)
    assert task.name == "whisper-base" and [m.name for m in task.metrics] == ["wer", "wer_hard"]
    assert not task.metrics[0].higher_is_better
    with pytest.raises(ValueError):
        speech.SpeechTask(eval_sentences=50, calibration_sentences=10)


def test_missing_espeak_names_the_package(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(mqcompile.errors.CheckpointError, match="apt-get install espeak-ng"):
        speech.synthesize("hello there", "/tmp")


# ---------------------------------------------------------------------------------------------------- real slice


@pytest.mark.assets
def test_real_slice_float_vs_w4a4():
    task = speech.SpeechTask(eval_sentences=2, calibration_sentences=2)
    specs = task.programs()
    assert set(specs) == {"encoder", "decoder"}
    assert dict(specs["decoder"].config) == {"sources": {"encoder_hidden_states": "audio", "decoder_input_ids": "text"}}
    floats = task.evaluate({k: s.program.module() for k, s in specs.items()})
    float_wer = floats["wer"]
    assert float_wer < 25.0 and math.isfinite(floats["wer_hard"])
    # the harder set: the same sentences, another voice, faster, in noise (not the easy clips again)
    hard, easy = task._split("hard"), task._split("eval")
    assert hard["texts"] == easy["texts"] and not torch.equal(hard["features"], easy["features"])
    quantized = {
        k: mqcompile.quantize(s.program, mqcompile.QuantConfig(**s.config), s.calibration, progress=False)
        for k, s in specs.items()
    }
    tags = {rec.modality for rec in quantized["decoder"].linears()}
    assert tags == {"text", "audio", "fused"}
    assert {rec.modality for rec in quantized["encoder"].linears()} == {"audio"}
    w4a4_wer = task.evaluate({k: q.module() for k, q in quantized.items()})["wer"]
    assert math.isfinite(w4a4_wer) and w4a4_wer >= float_wer
