"""mini-omni data and the task's rows (the Qwen2 tokenizer of the eval extra; no model forward)."""

import numpy as np
import pytest

from mqcompile.evaluation import omni_data
from mqcompile.evaluation.omni import OmniTask
from mqcompile.evaluation.speech import SENTENCES
from mqcompile.models.mini_omni import REAL_SPEC

pytestmark = pytest.mark.assets  # the Qwen2 tokenizer, the wiki text and the rendered scenes


def test_scenes_are_seeded_and_match_their_facts():
    a, facts = omni_data.scenes(8, 5, 224)
    b, again = omni_data.scenes(8, 5, 224)
    c, _ = omni_data.scenes(8, 6, 224)
    assert np.array_equal(a, b) and facts == again and not np.array_equal(a, c)
    assert a.shape == (8, 224, 224, 3) and a.dtype == np.uint8
    for image, f in zip(a, facts):
        rgb = np.asarray(omni_data.COLORS[f["color"]], dtype=float)
        close = np.abs(image.astype(float) - rgb).max(-1) < 60  # the shape's pixels
        ys, xs = np.nonzero(close)
        assert len(xs) > 500
        assert (xs.mean() < 112) == (f["side"] == "left")


def test_training_sentences_never_hold_evaluation_sentences():
    train = omni_data.training_sentences(2000)
    assert len(train) > 600
    assert not set(train) & set(SENTENCES)
    assert all(8 <= len(s.split()) <= 25 and not any(ch.isdigit() for ch in s) for s in train)


@pytest.fixture(scope="module")
def task():
    return OmniTask(quick=True)


def test_every_answer_is_one_token(task):
    for _question, answers in omni_data.QUESTIONS.values():
        ids = omni_data.answer_ids(task.tokenizer, answers)
        assert len(set(ids)) == len(answers)
    with pytest.raises(ValueError, match="one token"):
        omni_data.answer_ids(task.tokenizer, ["hippopotamus"])


def test_scene_rows_score_the_answer_positions(task):
    facts = {"color": "red", "shape": "square", "side": "left"}
    ids, segments, positions = task._scene_row(None)
    cal_ids, cal_segments, cal_positions = task._scene_row(facts)
    assert ids.count(REAL_SPEC.image_token_id) == REAL_SPEC.image_tokens == 64
    answer = task.tokenizer("\nAnswer:").input_ids[-1]
    assert [ids[p] for p in positions] == [answer] * 3
    # with answers appended, each answer follows its question's "Answer:" in its own branch
    got = [cal_ids[p + 1] for p in cal_positions]
    assert got == omni_data.answer_ids(task.tokenizer, [facts[k] for k in omni_data.QUESTIONS])
    assert sorted(set(cal_segments)) == [1, 2, 3, 4] and len(segments) == len(ids)
