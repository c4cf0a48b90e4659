"""Text-LM task: wiki cleaning/parsing, BIG-bench packing and length-normalized scoring, perplexity, and the causal-LM
export adapter (padding, segments) on a tiny random Qwen2 -- no assets; then a tiny slice of the real task
(Qwen2.5-Coder-0.5B, float vs W4A4) when the asset packages are installed."""

import io
import math
from types import SimpleNamespace

import pytest
import torch

from mqcompile.evaluation.text_lm import (
    MC_TASKS,
    TextLMTask,
    chunk_nll,
    clean_wiki_text,
    mc_correct,
    option_scores,
    pack_questions,
    parse_wiki_dump,
    perplexity,
)
from mqcompile.models.qwen2_text import SEGMENT_GROUP, CausalLMForExport, export_causal_lm

# ---- Wikipedia text --------------------------------------------------------------------------------------------------


def test_clean_wiki_text():
    raw = "\n\n'''Alpha''' is  a ''Greek''   letter.\n\n\n\n== History ==\n  Used\tsince   antiquity.  \n"
    raw += "===Later===\nYes."
    assert clean_wiki_text(raw) == "Alpha is a Greek letter.\n\nHistory\nUsed since antiquity.\nLater\nYes."
    assert clean_wiki_text("  \n\n ") == ""
    # a lone '=' inside a sentence is not a heading
    assert clean_wiki_text("x = 1 and y == 2") == "x = 1 and y == 2"


WIKI_XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
<siteinfo><sitename>Wikipedia</sitename></siteinfo>
<page><title>Alpha</title><ns>0</ns><id>1</id><revision><id>9</id>
<text>'''Alpha''' is the first [[letter|Greek letter]].
{{Infobox letter|name=Alpha}}
== History ==
It was used in [[Greece]].</text></revision></page>
<page><title>Beta</title><ns>0</ns><id>2</id><revision><id>10</id><text>#REDIRECT [[Alpha]]</text></revision></page>
<page><title>Empty</title><ns>0</ns><id>3</id><revision><id>11</id><text></text></revision></page>
<page><title>Gamma</title><ns>0</ns><id>4</id><revision><id>12</id>
<text>Gamma is the ''third'' letter.</text></revision></page>
</mediawiki>"""


@pytest.mark.assets  # gensim parses the wiki text
def test_parse_wiki_dump_skips_redirects_and_filters_markup():
    articles = parse_wiki_dump(io.BytesIO(WIKI_XML.encode()))
    assert [title for title, _ in articles] == ["Alpha", "Gamma"]
    alpha = articles[0][1]
    assert alpha.startswith("Alpha is the first Greek letter.")
    assert "History" in alpha and "Greece" in alpha
    assert "[[" not in alpha and "{{" not in alpha and "'''" not in alpha and "==" not in alpha
    assert articles[1][1] == "Gamma is the third letter."


# ---- BIG-bench scoring -----------------------------------------------------------------------------------------------


def test_pack_questions_layout():
    ids, seg, layout = pack_questions([1, 2], [([5, 6], [[7], [8, 9]]), ([4], [[3], [2], [1, 1]])])
    assert ids == [1, 2, 5, 6, 7, 8, 9, 4, 3, 2, 1, 1]
    g = SEGMENT_GROUP
    assert seg == [1, 1, g, g, g + 1, g + 2, g + 2, 2 * g, 2 * g + 1, 2 * g + 2, 2 * g + 3, 2 * g + 3]
    assert layout == [(3, [(4, 5), (5, 7)]), (7, [(8, 9), (9, 10), (10, 12)])]
    assert pack_questions([], [([5], [[6]])])[1] == [g, g + 1]
    with pytest.raises(ValueError):
        pack_questions([], [([5], [[6], []])])
    with pytest.raises(ValueError):
        pack_questions([], [([5], [[6]] * SEGMENT_GROUP)])


def test_option_scores_are_length_normalized():
    vocab = 4
    # row: question [0, 0] then option A = [1, 2] and option B = [3]
    ids, last, spans = [0, 0, 1, 2, 3], 1, [(2, 4), (4, 5)]
    logits = torch.full((5, vocab), -30.0)
    logits[1, 1] = logits[1, 3] = 0.0  # after the question: tokens 1 and 3 equally likely (p = 1/2 each)
    logits[2, 2] = 0.0  # inside option A: token 2 certain after token 1
    a, b = option_scores(logits, ids, last, spans)
    assert a == pytest.approx(math.log(0.5) / 2, abs=1e-6)  # mean of log(1/2) and log(1)
    assert b == pytest.approx(math.log(0.5), abs=1e-6)
    assert a > b  # the sum would tie them; the mean prefers the longer, confident option
    # the first token of every option is predicted from the question's last token, not from the previous option
    logits[3, 3] = 50.0  # position 3 (end of option A) must not matter for option B
    assert option_scores(logits, ids, last, spans)[1] == pytest.approx(b, abs=1e-6)


def test_mc_correct():
    assert mc_correct([0, 1, 0], [-3.0, -1.0, -2.0])
    assert not mc_correct([0, 1, 0], [-1.0, -3.0, -2.0])
    assert mc_correct([1, 0, 1], [-2.0, -3.0, -1.0])  # tied top targets both count
    assert not mc_correct([0, 1], [-1.0, -1.0])  # tied scores: the first option wins
    with pytest.raises(ValueError):
        mc_correct([0, 1], [-1.0])


def test_perplexity_on_synthetic_modules():
    chunks = torch.randint(0, 10, (5, 7), generator=torch.Generator().manual_seed(0))

    def uniform(input_ids, attention_mask):
        return torch.zeros(*input_ids.shape, 10)

    def oracle(input_ids, attention_mask):  # knows the next token of the batch it is given
        out = torch.full((*input_ids.shape, 10), -50.0)
        out[:, :-1].scatter_(-1, input_ids[:, 1:, None], 50.0)
        return out

    assert perplexity(uniform, chunks, batch_size=2) == pytest.approx(10.0, rel=1e-6)
    assert perplexity(oracle, chunks, batch_size=3) == pytest.approx(1.0, abs=1e-6)
    assert chunk_nll(uniform, chunks, 4).shape == (5,)


# ---- the export adapter on a tiny random Qwen2 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation="eager",
    )
    model = Qwen2ForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 10))
    return model, export_causal_lm(model, ids, torch.ones_like(ids))


def test_export_matches_hf_with_padding_and_dynamic_shapes(tiny_lm):
    model, ep = tiny_lm
    names = [n.name for n in ep.graph.nodes if n.op == "placeholder" and n.name in ("input_ids", "attention_mask")]
    assert names == ["input_ids", "attention_mask"]
    assert sum(n.target is torch.ops.aten.linear.default for n in ep.graph.nodes) == 2 * 7 + 1
    module = ep.module()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for shape in [(3, 13), (1, 5), (4, 2)]:
            ids = torch.randint(0, 64, shape, generator=g)
            mask = torch.ones_like(ids)
            if shape[0] > 1:
                mask[1, shape[1] // 2 :] = 0  # right padding
                mask[-1, :1] = 0  # left padding
            got = module(input_ids=ids, attention_mask=mask)
            for row in range(shape[0]):  # every row equals the HF forward of its unpadded tokens
                keep = mask[row].bool()
                ref = model(input_ids=ids[row, keep][None], use_cache=False).logits[0]
                torch.testing.assert_close(got[row, keep], ref, atol=1e-5, rtol=1e-5)
            # and the batched HF forward on the all-real / right-padded rows (same positions there)
            ref = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            right = [r for r in range(shape[0]) if mask[r, 0] == 1]
            keep = mask[right].bool()
            torch.testing.assert_close(got[right][keep], ref[right][keep], atol=1e-5, rtol=1e-5)


def test_export_rejects_bad_examples(tiny_lm):
    from mqcompile.errors import CalibrationError

    model, _ = tiny_lm
    with pytest.raises(CalibrationError):
        export_causal_lm(model, torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.long))
    with pytest.raises(CalibrationError):
        export_causal_lm(model, torch.zeros(2, 8), torch.ones(2, 8))
    with pytest.raises(CalibrationError):
        export_causal_lm(model, torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 7, dtype=torch.long))


def test_packed_rows_score_like_separate_sequences(tiny_lm):
    """Segments: each option of each question sees the prefix, its question and itself, exactly as unpacked."""
    model, ep = tiny_lm
    module = ep.module()
    g = torch.Generator().manual_seed(2)

    def rand(n):
        return torch.randint(0, 64, (n,), generator=g).tolist()

    prefix = rand(3)
    questions = [(rand(4), [rand(2), rand(3), rand(1)]), (rand(5), [rand(2), rand(2)])]
    ids, seg, layout = pack_questions(prefix, questions)
    width = len(ids) + 4
    row_ids = torch.zeros(2, width, dtype=torch.long)
    row_mask = torch.zeros(2, width, dtype=torch.long)
    row_ids[0, : len(ids)] = torch.tensor(ids)
    row_mask[0, : len(ids)] = torch.tensor(seg)
    row_ids[1, :3] = torch.tensor(prefix)  # a shorter second row: padding after it
    row_mask[1, :3] = 1
    with torch.no_grad():
        logits = module(input_ids=row_ids, attention_mask=row_mask)
        packed = [option_scores(logits[0], ids, last, spans) for last, spans in layout]
        for (question, options), scores in zip(questions, packed):
            for option, score in zip(options, scores):
                alone = prefix + question + option
                ref = model(input_ids=torch.tensor([alone]), use_cache=False).logits[0]
                n = len(prefix) + len(question)
                expected = option_scores(ref, alone, n - 1, [(n, len(alone))])[0]
                assert score == pytest.approx(expected, abs=1e-5)


def test_mc_batches_mix_tasks_and_pad(tiny_lm):
    """``_mc_correct`` batches rows of several lengths and tasks; the tally matches scoring each row alone."""
    model, ep = tiny_lm
    module = ep.module()
    g = torch.Generator().manual_seed(3)

    def rand(n):
        return torch.randint(1, 64, (n,), generator=g).tolist()

    rows = []
    for k in range(5):
        questions = [(rand(3 + k), [rand(1 + (i + k) % 3) for i in range(3)]) for _ in range(1 + k % 2)]
        ids, seg, layout = pack_questions(rand(2) if k % 2 else [], questions)
        targets = [[float(i == (k + j) % 3) for i in range(3)] for j in range(len(questions))]
        rows.append({"task": MC_TASKS[k % 3], "ids": ids, "segments": seg, "layout": layout, "targets": targets})
    task = TextLMTask(quick=True)
    task._tokenizer = SimpleNamespace(pad_token_id=0)
    task.mc_token_budget = 40  # forces several batches with padding
    with torch.no_grad():
        tally = task._mc_correct(module, rows)
        expected: dict[str, list[int]] = {}
        for r in rows:
            logits = module(input_ids=torch.tensor([r["ids"]]), attention_mask=torch.tensor([r["segments"]]))[0]
            counts = expected.setdefault(r["task"], [0, 0])
            for (last, spans), targets in zip(r["layout"], r["targets"]):
                counts[0] += mc_correct(targets, option_scores(logits, r["ids"], last, spans))
                counts[1] += 1
    assert tally == expected
    assert sum(t for _, t in tally.values()) == sum(len(r["layout"]) for r in rows)


def test_adapter_requires_a_causal_lm():
    from mqcompile.errors import CheckpointError

    with pytest.raises(CheckpointError):
        CausalLMForExport(SimpleNamespace(model=torch.nn.Linear(2, 2)))


# ---- the real task, a tiny slice -------------------------------------------------------------------------------------


@pytest.mark.assets
def test_real_slice_float_vs_w4a4():
    """Qwen2.5-Coder-0.5B on one 48-token chunk of each text and one question per BIG-bench task: export parity with
    the HF forward on a padded batch, float metrics in a sane range (random weights give perplexity ~1e5), and a W4A4
    program (first two decoder layers only, to stay fast) through the same ``evaluate``. The first run converts the
    GGUF (~2-3 min); later runs take ~50 s on 2 cores."""
    import mqcompile
    from mqcompile import QuantConfig

    task = TextLMTask(quick=True, ppl_chunks=1, seq_len=48, mc_questions=1, calib_batches=1)
    spec = task.programs()["lm"]
    assert set(spec.probe) == {"input_ids", "attention_mask"} and len(spec.calibration) == 1
    module = spec.program.module()

    model, tokenizer = task.model, task.tokenizer
    texts = ["def add(a, b):\n    return a + b", "The capital of France is"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(**batch, use_cache=False).logits
        got = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-4, rtol=1e-4)

    floats = task.evaluate({"lm": module})
    assert set(floats) == {m.name for m in task.metrics}
    assert all(1.0 < floats[f"ppl_{s}"] < 150.0 for s in ("wiki", "pydoc", "news")), floats
    assert all(floats[f"acc_{t}"] in (0.0, 100.0) for t in MC_TASKS)

    later_layers = tuple(f"*layers.{i}.*" for i in range(2, model.config.num_hidden_layers))
    config = QuantConfig(keep_float=("lm_head", "*.lm_head", *later_layers))
    qp = mqcompile.quantize(spec.program, config, calibration=spec.calibration, progress=False)
    assert sum(r.scheme == "w4a4" for r in qp.linears()) == 2 * 7
    quantized = task.evaluate({"lm": qp.module()})
    assert set(quantized) == set(floats) and all(math.isfinite(v) for v in quantized.values())
    assert quantized["ppl_wiki"] != floats["ppl_wiki"]


def test_calibration_sources_are_checked():
    with pytest.raises(ValueError, match="choose one or more of"):
        TextLMTask(calib_sources=("wiki", "pydoc"))  # pydoc is held out: never a calibration source
    with pytest.raises(ValueError, match="choose one or more of"):
        TextLMTask(calib_sources=())


@pytest.mark.assets
def test_mixed_calibration_takes_the_sources_in_turn():
    from mqcompile.evaluation.text_lm import load_bigbench_prose

    wiki = TextLMTask(quick=True, seq_len=32, calib_batches=2, calib_sources=("wiki",)).data()["calibration"]
    assert TextLMTask().calib_sources == ("wiki", "bigbench")  # the suite's default
    mixed = TextLMTask(quick=True, seq_len=32, calib_batches=3, calib_sources=("wiki", "bigbench"))
    rows = mixed.data()["calibration"]
    assert rows.shape == (3, 32)
    assert torch.equal(rows[0], wiki[0]) and torch.equal(rows[2], wiki[1])  # wiki, prose, wiki
    prose = mixed.tokenizer(load_bigbench_prose()).input_ids
    assert rows[1].tolist() == prose[:32]  # the first evenly spaced window of the prose
