"""The mini-omni task of the evaluation suite: one program, three modalities through one fused decoder.

Program ``omni`` (:func:`mqcompile.models.mini_omni.export_mini_omni`): Whisper-base encoder + DINOv2-S/14 +
Qwen2.5-Coder-0.5B with the trained projectors. Held-out data (``omni_data`` says how it is made and why it is
disjoint from training and calibration):

* ``wer`` (%): greedy transcripts of espeak-ng sentences (audio + the transcribe prompt), scored as the Whisper task
  scores them; greedy decoding is :func:`mqcompile.evaluation.speech.greedy_decode` (exact step-by-step greedy,
  drafts only decide how many tokens one call confirms), at most the reference's tokens + 2 per sentence, on the
  first few evaluation sentences (a wrong transcript costs one call per token).
  ``speech_ppl``: perplexity of the reference transcripts (and ``<|endoftext|>``) given the audio, teacher-forced: a
  graded measure of the same thing, which still moves when greedy transcripts are all wrong.
* ``vision_acc`` (%): rendered scenes, three questions each (colour, shape, side), the answer the model ranks first
  among the question's candidates; ``acc_color`` / ``acc_shape`` / ``acc_side`` per question.
* ``ppl_wiki``: perplexity of text-only prompts on the suite's Wikipedia chunks (even articles, as the text task).

Calibration batches mix the modalities: each holds one scene with a question and its answer, one spoken sentence
with its transcript and one Wikipedia chunk of the calibration articles. The probe (per-linear SQNR) is one such
batch from the evaluation data, and the fused linears' SQNR is also reported per token modality (``fused/text``,
``fused/vision``, ``fused/audio``).

Example::

    task = OmniTask(quick=True)
    specs = task.programs()
    task.evaluate({"omni": specs["omni"].program.module()})
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from . import omni_data
from .base import Metric, ProgramSpec

__all__ = ["OmniTask", "EVAL_SCENE_SEED", "CALIBRATION_SCENE_SEED"]

log = logging.getLogger(__name__)

EVAL_SCENE_SEED = 3
CALIBRATION_SCENE_SEED = 2  # training uses seed 1 (tools/train_mini_omni.py)
# (evaluation sentences, of them transcribed, calibration sentences, scenes, wiki chunks, calibration batches) per
# mode. Greedy transcripts cost one full-model call per wrong token (measured: 20 calls, 336 s for 8 sentences with
# the committed projectors), so WER uses the first few evaluation sentences; speech_ppl uses them all.
_SIZES = {False: (8, 3, 4, 24, 4, 4), True: (4, 2, 2, 12, 2, 2)}
_SEQ = {False: 256, True: 128}
_ROWS = 8  # rows per forward


class OmniTask:
    """mini-omni on speech (WER), the scene questions (accuracy) and Wikipedia text (perplexity).

    Args:
        quick: small slices (4 sentences of which 2 transcribed, 12 scenes, 2 chunks of 128 tokens) instead of
            8 / 3 / 24 / 4 x 256.
        seed: permutes the speech sentences before the evaluation / calibration split.
        sizes: ``(evaluation sentences, of them transcribed, calibration sentences, scenes, text chunks, calibration
            batches)`` instead of the mode's (the demo's smaller slice).
        calibration_batches: the number of calibration batches instead of the mode's (or ``sizes``').
    """

    name = "mini-omni"
    metrics = (
        Metric("wer", higher_is_better=False),
        Metric("speech_ppl", higher_is_better=False),
        Metric("vision_acc", higher_is_better=True, fmt="{:.1f}"),
        Metric("acc_color", higher_is_better=True, fmt="{:.1f}"),
        Metric("acc_shape", higher_is_better=True, fmt="{:.1f}"),
        Metric("acc_side", higher_is_better=True, fmt="{:.1f}"),
        Metric("ppl_wiki", higher_is_better=False),
    )

    def __init__(
        self,
        quick: bool = False,
        seed: int = 0,
        sizes: tuple[int, ...] | None = None,
        calibration_batches: int | None = None,
    ):
        from .speech import SENTENCES

        self.quick, self.seed = quick, seed
        n_eval, self.n_transcribed, n_cal, self.n_scenes, self.n_chunks, self.n_batches = sizes or _SIZES[bool(quick)]
        self.seq_len = _SEQ[bool(quick)]
        if calibration_batches is not None:
            if calibration_batches < 1:
                raise ValueError(f"calibration_batches must be >= 1, got {calibration_batches}")
            self.n_batches = calibration_batches
        order = np.random.default_rng(seed).permutation(len(SENTENCES))
        self.eval_sentences = [SENTENCES[i] for i in order[:n_eval]]
        self.calibration_sentences = [SENTENCES[i] for i in order[len(SENTENCES) - n_cal :]]
        self.model = None
        self._tokenizer = None
        self._data: dict[str, Any] | None = None

    # ---- data ----------------------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from ..assets import cache_dir
            from .checkpoints.qwen2_text import CACHE_NAME, load_qwen2_text

            folder = cache_dir("models") / CACHE_NAME
            if not (folder / "tokenizer.json").is_file():
                load_qwen2_text()
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
        return self._tokenizer

    def _speech(self, sentences: list[str]) -> dict[str, Any]:
        from ..models.mini_omni import REAL_SPEC, audio_features

        waves = omni_data.spoken(sentences)
        features, mask = audio_features(REAL_SPEC, waves)
        tokens = [REAL_SPEC.audio_tokens(int(m.sum())) for m in mask]
        ids = [self.tokenizer(" " + s).input_ids for s in sentences]
        return {"features": features, "mask": mask, "tokens": tokens, "texts": list(sentences), "ids": ids}

    def data(self) -> dict[str, Any]:
        if self._data is None:
            from ..models.mini_omni import REAL_SPEC, image_pixels
            from .text_lm import load_wiki_articles

            start = time.perf_counter()
            articles = load_wiki_articles()
            images, facts = omni_data.scenes(self.n_scenes, EVAL_SCENE_SEED, REAL_SPEC.image_size)
            cal_images, cal_facts = omni_data.scenes(self.n_batches, CALIBRATION_SCENE_SEED, REAL_SPEC.image_size)
            self._data = {
                "speech": self._speech(self.eval_sentences),
                "cal_speech": self._speech(self.calibration_sentences),
                "pixels": image_pixels(REAL_SPEC, images),
                "facts": facts,
                "cal_pixels": image_pixels(REAL_SPEC, cal_images),
                "cal_facts": cal_facts,
                "wiki": self._chunks(articles[0::2], self.n_chunks, self.seq_len),
                "cal_wiki": self._chunks(articles[1::2], self.n_batches, 128),
            }
            log.info("mini-omni data ready in %.1f s", time.perf_counter() - start)
        return self._data

    def _chunks(self, articles, n: int, seq_len: int) -> torch.Tensor:
        rows = []
        for _title, text in articles:
            ids = self.tokenizer(text[: seq_len * 8]).input_ids
            if len(ids) >= seq_len:
                rows.append(ids[:seq_len])
            if len(rows) == n:
                return torch.tensor(rows, dtype=torch.long)
        raise ValueError(f"only {len(rows)} articles have {seq_len} tokens")

    # ---- rows ----------------------------------------------------------------------------------------------------

    def _scene_row(self, facts: Mapping[str, str] | None) -> tuple[list[int], list[int], list[int]]:
        from ..models.mini_omni import REAL_SPEC

        return omni_data.scene_row(self.tokenizer, REAL_SPEC, facts)

    def _inputs(self, rows, segments=None, pixels=None, audio=None) -> dict[str, torch.Tensor]:
        from ..models.mini_omni import REAL_SPEC, make_inputs

        batch = make_inputs(REAL_SPEC, rows, pixels, audio, pad_id=int(self.tokenizer.pad_token_id or 0))
        if segments is not None:
            for i, seg in enumerate(segments):
                batch["attention_mask"][i, : len(seg)] = torch.tensor(seg)
        return batch

    def _mixed_batch(self, speech: Mapping[str, Any], i: int, pixels, facts, wiki) -> dict[str, torch.Tensor]:
        """One scene (with answers), one spoken sentence (with transcript) and one text chunk."""
        from ..models.mini_omni import REAL_SPEC

        scene, scene_seg, _ = self._scene_row(facts)
        spoken, _ = omni_data.speech_row(self.tokenizer, REAL_SPEC, speech["tokens"][i], speech["ids"][i])
        text = wiki.tolist()
        audio = (speech["features"][i : i + 1], speech["mask"][i : i + 1])
        return self._inputs([scene, spoken, text], [scene_seg, [1] * len(spoken), [1] * len(text)], pixels, audio)

    # ---- Task protocol -------------------------------------------------------------------------------------------

    def programs(self) -> dict[str, ProgramSpec]:
        from ..config import MODALITIES
        from ..graph.linears import token_modality_ids
        from ..models.mini_omni import REAL_SPEC, build_mini_omni, export_mini_omni, modality_token_ids

        data = self.data()
        if self.model is None:
            self.model = build_mini_omni()
        cal, n_cal = data["cal_speech"], len(self.calibration_sentences)
        calibration = [
            self._mixed_batch(cal, b % n_cal, data["cal_pixels"][b : b + 1], data["cal_facts"][b], data["cal_wiki"][b])
            for b in range(self.n_batches)
        ]
        probe = self._mixed_batch(data["speech"], 0, data["pixels"][:1], data["facts"][0], data["wiki"][0, :128])
        example = dict(calibration[0])
        example["pixel_values"] = calibration[0]["pixel_values"].expand(2, -1, -1, -1).clone()
        ids = example["input_ids"]
        n_img = int((ids == REAL_SPEC.image_token_id).sum(-1).argmax())
        example["input_ids"] = torch.cat([ids, ids[n_img : n_img + 1]])  # two images need two rows of placeholders
        example["attention_mask"] = torch.cat([example["attention_mask"], example["attention_mask"][n_img : n_img + 1]])
        example["input_features"] = example["input_features"].expand(2, -1, -1).clone()
        example["feature_attention_mask"] = torch.cat(
            [example["feature_attention_mask"], torch.zeros_like(example["feature_attention_mask"])]
        )
        program = export_mini_omni(self.model, example)
        token_ids = modality_token_ids(REAL_SPEC)
        mods = token_modality_ids(probe["input_ids"], token_ids)
        groups = {m: (mods == MODALITIES.index(m)) & (probe["attention_mask"] > 0) for m in ("text", "vision", "audio")}
        config = {"modality_token_ids": token_ids}
        spec = ProgramSpec(program=program, calibration=calibration, probe=probe, config=config, probe_groups=groups)
        return {"omni": spec}

    def _vision(self, module: Callable[..., torch.Tensor]) -> dict[str, float]:
        data = self.data()
        row, segments, positions = self._scene_row(None)
        candidates = {k: omni_data.answer_ids(self.tokenizer, a) for k, (_q, a) in omni_data.QUESTIONS.items()}
        right = {k: 0 for k in omni_data.QUESTIONS}
        self.last_answers: list[dict[str, str]] = []
        n = len(data["facts"])
        for start in range(0, n, _ROWS):
            count = min(_ROWS, n - start)
            batch = self._inputs([row] * count, [segments] * count, data["pixels"][start : start + count])
            logits = module(**batch)
            for b in range(count):
                facts, said = data["facts"][start + b], {}
                for (kind, (_q, answers)), pos in zip(omni_data.QUESTIONS.items(), positions):
                    said[kind] = answers[int(logits[b, pos, candidates[kind]].argmax())]
                    right[kind] += said[kind] == facts[kind]
                self.last_answers.append(said)
            del logits
        out = {f"acc_{k}": 100.0 * v / n for k, v in right.items()}
        out["vision_acc"] = sum(out.values()) / len(out)
        return out

    def _ppl(self, module: Callable[..., torch.Tensor]) -> float:
        chunks = self.data()["wiki"]
        total = 0.0
        for start in range(0, len(chunks), _ROWS):
            ids = chunks[start : start + _ROWS]
            logits = module(**self._inputs(ids.tolist()))
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
            total += float(nll) * ids.shape[0]
            del logits
        return math.exp(total / len(chunks))

    def _speech_ppl(self, module: Callable[..., torch.Tensor]) -> float:
        from ..models.mini_omni import REAL_SPEC

        speech = self.data()["speech"]
        nll, count = 0.0, 0
        for start in range(0, len(speech["ids"]), _ROWS):
            picks = list(range(start, min(start + _ROWS, len(speech["ids"]))))
            rows = [
                omni_data.speech_row(self.tokenizer, REAL_SPEC, speech["tokens"][i], speech["ids"][i]) for i in picks
            ]
            audio = (speech["features"][picks], speech["mask"][picks])
            logits = module(**self._inputs([r for r, _ in rows], None, None, audio))
            for b, (row, n) in enumerate(rows):
                scored = logits[b, n - 1 : len(row) - 1].float()
                nll += float(torch.nn.functional.cross_entropy(scored, torch.tensor(row[n:]), reduction="sum"))
                count += len(row) - n
            del logits
        return math.exp(nll / count)

    def transcribe(self, module: Callable[..., torch.Tensor]) -> list[str]:
        """Greedy transcripts of the first ``n_transcribed`` evaluation sentences (one row per sentence)."""
        from ..models.mini_omni import REAL_SPEC
        from .speech import greedy_decode

        speech = {k: v[: self.n_transcribed] for k, v in self.data()["speech"].items()}
        eot = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        prompt = self.tokenizer(omni_data.TRANSCRIBE).input_ids
        heads = [omni_data.audio_prompt(self.tokenizer, REAL_SPEC, t)[: t + 2] for t in speech["tokens"]]

        def decoder(encoder_hidden_states: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
            # greedy_decode passes rows as "encoder states": here each row's index, so its audio joins the prefix
            rows = encoder_hidden_states[:, 0].tolist()
            seqs = [heads[r] + decoder_input_ids[i].tolist() for i, r in enumerate(rows)]
            audio = (speech["features"][rows], speech["mask"][rows])
            logits = module(**self._inputs(seqs, None, None, audio))
            length = decoder_input_ids.shape[1]
            return torch.stack([logits[i, len(heads[r]) : len(heads[r]) + length] for i, r in enumerate(rows)])

        rows = torch.arange(len(heads))[:, None]
        limits = [len(ids) + 2 for ids in speech["ids"]]  # a wrong transcript costs a call per token: bounded
        drafts = [[*ids, eot] for ids in speech["ids"]]
        tokens, counts = greedy_decode(decoder, rows, prompt, eot, drafts, limits)
        log.info("mini-omni speech: %d decoder calls, %d row-calls", counts["calls"], counts["row_calls"])
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    def evaluate(self, modules: Mapping[str, Callable[..., Any]]) -> dict[str, float]:
        from .speech import word_error_rate

        module = modules["omni"]
        with torch.inference_mode():
            start = time.perf_counter()
            out = self._vision(module)
            vision_s = time.perf_counter() - start
            out["ppl_wiki"] = self._ppl(module)
            out["speech_ppl"] = self._speech_ppl(module)
            ppl_s = time.perf_counter() - start - vision_s
            texts = self.transcribe(module)
            out["wer"] = word_error_rate(self.data()["speech"]["texts"][: self.n_transcribed], texts)
        log.info(
            "mini-omni: %s (vision %.0f s, text + speech ppl %.0f s, transcripts %.0f s); transcripts: %s",
            out,
            vision_s,
            ppl_s,
            time.perf_counter() - start - vision_s - ppl_s,
            texts[:2],
        )
        self.last_transcripts = texts
        return out
