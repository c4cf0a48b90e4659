"""The offline data ``mqcompile quantize --calibration builtin`` draws from, and the held-out data its fidelity table
measures on (the eval extra's assets, ``docs/assets.md``), split so that the two never share an item.

* text: Wikipedia articles of the suite's calibration half (odd articles) for calibration; Python's reference-manual
  prose (``pydoc_data``, another source) held out;
* speech: the speech task's sentences spoken by espeak-ng, its calibration sentences (the end of its seeded
  permutation) for calibration and its evaluation sentences held out;
* images: random crops of scikit-image's sample photos for calibration; rendered scenes (the mini-omni's evaluation
  scenes, another source) held out.

Example::

    waves = speech(calibration=True, count=4)   # 4 clips, 16 kHz mono
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["wiki_texts", "held_out_text", "speech", "photos", "scenes"]


def wiki_texts() -> list[str]:
    """The article texts of the suite's calibration half (its evaluation half stays unseen)."""
    from mqcompile.evaluation.text_lm import load_wiki_articles

    return [text for _, text in load_wiki_articles()[1::2]]


def held_out_text() -> str:
    """Python's reference-manual prose (``pydoc_data``, in every CPython): text the builtin calibration never reads."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics)[:40])


def _sentences(calibration: bool) -> list[str]:
    from mqcompile.evaluation.speech import SENTENCES, SpeechTask

    task = SpeechTask(quick=False)
    if calibration:  # the task's calibration sentences first, then the rest that it does not evaluate on
        rest = [s for s in SENTENCES if s not in task.eval_sentences and s not in task.calibration_sentences]
        return task.calibration_sentences + rest
    return task.eval_sentences


def speech(calibration: bool, count: int) -> tuple[list[str], list[np.ndarray]]:
    """``count`` sentences and their 16 kHz waveforms (espeak-ng, cached): calibration or held-out ones.

    Raises:
        CalibrationError: more calibration sentences asked for than there are.
    """
    from mqcompile.errors import CalibrationError
    from mqcompile.evaluation.omni_data import spoken

    sentences = _sentences(calibration)
    if count > len(sentences):
        raise CalibrationError(f"the builtin speech has {len(sentences)} sentences; ask for at most that many")
    chosen = sentences[:count]
    return chosen, spoken(chosen)


def photos(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``(count, size, size, 3)`` uint8 RGB crops of scikit-image's sample photos."""
    from mqcompile.evaluation.vision import calibration_images

    crops = calibration_images(count, seed, size, color=True)
    return (crops.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def scenes(count: int, size: int) -> np.ndarray:
    """``(count, size, size, 3)`` uint8 RGB rendered scenes (the mini-omni's evaluation scenes)."""
    from mqcompile.evaluation.omni import EVAL_SCENE_SEED
    from mqcompile.evaluation.omni_data import scenes as render

    images, _ = render(count, EVAL_SCENE_SEED, size)
    return np.asarray(images)
