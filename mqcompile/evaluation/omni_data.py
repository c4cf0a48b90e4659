"""Data of the mini-omni model: rendered shape scenes (vision), espeak-ng sentences (speech), prompts.

Vision task: one filled shape (circle, square or triangle) in one of six colours on a noisy, lightly tinted
background, left or right of centre. Three questions per image, each answered by one word (one token of the Qwen2
vocabulary): its colour, its shape, its side. Scored by the answer the model ranks first among the question's
candidates (chance 1/6, 1/3, 1/2). Images come from a seeded generator, so training, calibration and evaluation
scenes are disjoint draws (different seeds) that any machine reproduces.

Speech task: sentences spoken by espeak-ng (as the Whisper suite task makes them: ``speech.synthesize``) -> their
transcript. Training sentences are plain-word sentences (8-25 words, letters and simple punctuation, no digits) of
the Wikipedia articles the text task calibrates on (odd article indices); evaluation and calibration sentences are
the suite's fixed :data:`mqcompile.evaluation.speech.SENTENCES`, split by a seeded permutation, so none of them is
ever trained on.

Example:
    >>> image, facts = render_scene(np.random.default_rng(0), 224)
    >>> image.shape, sorted(facts)
    ((224, 224, 3), ['color', 'shape', 'side'])
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from ..assets import cache_dir

__all__ = [
    "COLORS",
    "SHAPES",
    "SIDES",
    "QUESTIONS",
    "render_scene",
    "scenes",
    "training_sentences",
    "spoken",
    "vision_prompt",
    "audio_prompt",
    "answer_ids",
    "scene_row",
    "speech_row",
    "TRANSCRIBE",
]

log = logging.getLogger(__name__)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 50, 170),
    "orange": (240, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIDES: tuple[str, ...] = ("left", "right")
#: question kind -> (question text, candidate answers)
QUESTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "color": ("What color is the shape?", tuple(COLORS)),
    "shape": ("What shape is in the picture?", SHAPES),
    "side": ("Is the shape on the left or on the right?", SIDES),
}
TRANSCRIBE = "Transcribe the speech.\nTranscript:"
_SCENE_VERSION = "1"


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict[str, str]]:
    """One RGB uint8 ``(size, size, 3)`` scene and its facts ``{"color", "shape", "side"}``."""
    color, shape, side = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(SIDES)
    tint = rng.uniform(170, 245, size=3)
    image = tint[None, None, :] + rng.normal(0, 12, size=(size, size, 3))
    radius = rng.uniform(0.12, 0.2) * size
    # the centre stays clear of the middle column, so left/right is never ambiguous
    cx = rng.uniform(radius + 2, size / 2 - 0.6 * radius)
    cx = cx if side == "left" else size - cx
    cy = rng.uniform(radius + 2, size - radius - 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        inside = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        half = radius * 0.85
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:  # an upward triangle inscribed in the circle
        top, bottom = -radius, radius * 0.6
        width = (dy - top) / (bottom - top) * radius * 1.1
        inside = (dy >= top) & (dy <= bottom) & (np.abs(dx) <= width)
    shade = np.asarray(COLORS[color], dtype=np.float64) * rng.uniform(0.85, 1.1)
    image[inside] = shade + rng.normal(0, 6, size=(int(inside.sum()), 3))
    facts = {"color": str(color), "shape": str(shape), "side": str(side)}
    return np.clip(image, 0, 255).astype(np.uint8), facts


def scenes(count: int, seed: int, size: int) -> tuple[np.ndarray, list[dict[str, str]]]:
    """``count`` scenes from the generator seeded ``("mini-omni scenes", seed)``: ``(images (n, size, size, 3),
    facts)``."""
    rng = np.random.default_rng([_seed_int("mini-omni scenes"), seed])
    drawn = [render_scene(rng, size) for _ in range(count)]
    return np.stack([d[0] for d in drawn]), [d[1] for d in drawn]


def _seed_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


_PLAIN = re.compile(r"^[A-Z][a-z]+(?: [A-Za-z]+| [a-z]+,)*(?: [a-z]+)\.$")


def training_sentences(limit: int) -> list[str]:
    """Up to ``limit`` plain sentences (8-25 words, letters, commas, a final period; no names after the first word)
    from the odd-indexed Wikipedia articles, in file order."""
    from .text_lm import load_wiki_articles

    out: list[str] = []
    seen: set[str] = set()
    for _title, text in load_wiki_articles()[1::2]:
        for raw in re.split(r"(?<=\.)\s+", text.replace("\n", " ")):
            sentence = " ".join(raw.split())
            words = sentence.split()
            if not 8 <= len(words) <= 25 or sentence in seen or not _PLAIN.match(sentence):
                continue
            if any(w[0].isupper() for w in words[1:]):
                continue
            seen.add(sentence)
            out.append(sentence)
            if len(out) == limit:
                return out
    return out


def spoken(sentences: Sequence[str]) -> list[np.ndarray]:
    """16 kHz waveforms of ``sentences`` by espeak-ng (cached by text and espeak version)."""
    from .speech import _espeak_version, synthesize

    key = json.dumps([_SCENE_VERSION, list(sentences), _espeak_version()])
    path = cache_dir("data", "omni") / f"speech-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    if path.is_file():
        data = np.load(path)
        return [data[f"a{i}"] for i in range(len(sentences))]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        waves = [synthesize(s, tmp) for s in sentences]
    np.savez(path, **{f"a{i}": w for i, w in enumerate(waves)})
    longest = max(len(w) for w in waves) / 16000
    log.info("spoke %d sentences in %.1f s (longest %.1f s)", len(waves), time.perf_counter() - start, longest)
    return waves


def vision_prompt(tokenizer, spec, question: str) -> list[int]:
    """``<|vision_start|> image tokens <|vision_end|> Question: ...\\nAnswer:`` as token ids."""
    text = tokenizer(f"Question: {question}\nAnswer:").input_ids
    return [spec.vision_start_id, *[spec.image_token_id] * spec.image_tokens, spec.vision_end_id, *text]


def audio_prompt(tokenizer, spec, audio_tokens: int) -> list[int]:
    """``<audio start> audio tokens <audio end> Transcribe the speech.\\nTranscript:`` as token ids."""
    text = tokenizer(TRANSCRIBE).input_ids
    return [spec.audio_start_id, *[spec.audio_token_id] * audio_tokens, spec.audio_end_id, *text]


def answer_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The one token of each ``" word"`` (every candidate answer is one Qwen2 token; checked)."""
    out = []
    for word in words:
        ids = tokenizer(" " + word).input_ids
        if len(ids) != 1:
            raise ValueError(f"answer {word!r} is {len(ids)} tokens; every candidate must be one token")
        out.append(ids[0])
    return out


def scene_row(tokenizer, spec, facts: dict[str, str] | None) -> tuple[list[int], list[int], list[int]]:
    """A scene's three questions as branches of one row: ``(ids, attention-mask segments, positions)``.

    The image tokens are shared (segment 1), each question is a private branch (segments 2, 3, 4) that sees the
    image and itself (``qwen2_text.CausalLMForExport``'s mask rules). Without ``facts`` a position is the last token
    of a question (its logits rank the answers); with ``facts`` the answers follow their questions (training and
    calibration) and a position is still the token whose logits predict the answer."""
    head = vision_prompt(tokenizer, spec, "")[: spec.image_tokens + 2]
    ids, segments, positions = list(head), [1] * len(head), []
    for k, (kind, (question, _answers)) in enumerate(QUESTIONS.items(), start=1):
        q = tokenizer(f"Question: {question}\nAnswer:").input_ids
        if facts is not None:
            q = q + answer_ids(tokenizer, [facts[kind]])
        positions.append(len(ids) + len(q) - 1 - (facts is not None))
        ids += q
        segments += [1 + k] * len(q)
    return ids, segments, positions


def speech_row(tokenizer, spec, audio_tokens: int, transcript: list[int]) -> tuple[list[int], int]:
    """``audio prompt + transcript + <|endoftext|>`` and the prompt's length (the transcript starts there)."""
    prompt = audio_prompt(tokenizer, spec, audio_tokens)
    return prompt + list(transcript) + [tokenizer.convert_tokens_to_ids("<|endoftext|>")], len(prompt)
