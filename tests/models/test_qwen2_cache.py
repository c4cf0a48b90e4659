"""The KV-cache program of a Qwen2 LM (``export_causal_lm_with_cache``): prefill equals the prefill program, decode
steps equal one long prefill, and its W4A4 quantization runs in ONNX Runtime on the fused integer kernels."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import mqcompile
from mqcompile import recipes
from mqcompile.backends.onnx.export import export_onnx, ort_optimized_op_counts
from mqcompile.models.qwen2_text import (
    SEGMENT_GROUP,
    empty_cache_inputs,
    export_causal_lm,
    export_causal_lm_with_cache,
)
from tests.tiny_models import tiny_qwen2

VOCAB = 256


@pytest.fixture(scope="module")
def lm():
    model = tiny_qwen2(vocab_size=VOCAB)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    prefill = export_causal_lm(model, ids, torch.ones_like(ids)).module()
    return model, prefill, export_causal_lm_with_cache(model)


def _ids(shape, seed=1):
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(1, 1), (2, 9), (3, 13)])
def test_prefill_with_an_empty_past_equals_the_prefill_program(lm, shape):
    model, prefill, cached = lm
    ids = _ids(shape)
    mask = torch.ones_like(ids)
    if shape[0] > 1:
        mask[1, shape[1] // 2 :] = 0  # right padding
        mask[-1, :2] = 0  # left padding
    with torch.no_grad():
        want = prefill(input_ids=ids, attention_mask=mask)
        logits, keys, values = cached.module()(**empty_cache_inputs(model.config, ids, mask))
    keep = mask.bool()
    torch.testing.assert_close(logits[keep], want[keep], atol=1e-5, rtol=1e-5)
    assert keys.shape == values.shape == (2, shape[0], 2, shape[1] + 1, 16)  # the past slot plus the new tokens


def test_segment_masks_work_as_in_the_prefill_program(lm):
    model, prefill, cached = lm
    ids = _ids((1, 12), seed=3)
    g = SEGMENT_GROUP
    mask = torch.tensor([[1, 1, 1, g, g, g + 1, g + 1, g + 2, 2 * g, 2 * g, 2 * g + 1, 0]])
    with torch.no_grad():
        want = prefill(input_ids=ids, attention_mask=mask)
        got = cached.module()(**empty_cache_inputs(model.config, ids, mask))[0]
    torch.testing.assert_close(got[:, :-1], want[:, :-1], atol=1e-5, rtol=1e-5)


def test_decode_steps_equal_one_long_prefill(lm):
    """Prefill 5 tokens, then decode 4 one at a time, each step on the last one's cache; a left-padded row rides
    along (its padding stays in the past mask)."""
    model, prefill, cached = lm
    module = cached.module()
    ids = _ids((2, 9), seed=4)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with torch.no_grad():
        want = prefill(input_ids=ids, attention_mask=mask)
        step = empty_cache_inputs(model.config, ids[:, :5], mask[:, :5])
        logits, keys, values = module(**step)
        past_mask = torch.cat([step["past_mask"], mask[:, :5]], dim=1)
        for t in range(5, 9):
            logits, keys, values = module(
                input_ids=ids[:, t : t + 1],
                attention_mask=mask[:, t : t + 1],
                past_mask=past_mask,
                past_keys=keys,
                past_values=values,
            )
            torch.testing.assert_close(logits[:, 0], want[:, t], atol=1e-5, rtol=1e-5)
            past_mask = torch.cat([past_mask, mask[:, t : t + 1]], dim=1)
    assert keys.shape[3] == 10


def _session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("variant,kernel", [("w4a4int", "MatMulInteger"), ("w4a16", "MatMulNBits")])
def test_quantized_cache_program_decodes_in_onnx_runtime(lm, variant, kernel, tmp_path):
    """MorphoQuant+Rot on the cache program, exported once at a 16-token prefill: ORT runs every quantized linear on
    its fused kernel, and at other shapes (a 1-token decode step on a 17-slot past) it returns the program's logits
    (``w4a4int``: the same arithmetic, so to float rounding; ``w4a16``: int4 weights on float activations)."""
    model, _, cached = lm
    calibration = [
        empty_cache_inputs(model.config, _ids((1, 32), seed=s), torch.ones(1, 32, dtype=torch.long)) for s in range(4)
    ]
    config = mqcompile.QuantConfig(algorithms=(recipes.DABC(), recipes.MDQFO(ste_steps=2), recipes.Rotate()))
    qp = mqcompile.quantize(cached, config, calibration, progress=False)
    linears = sum(r.scheme == "w4a4" for r in qp.linears())
    assert linears == 14  # 2 layers x 7; the head stays float (keep_float)
    probe = empty_cache_inputs(model.config, _ids((1, 16), seed=9), torch.ones(1, 16, dtype=torch.long))
    report = export_onnx(qp, tmp_path / f"{variant}.onnx", probe, variant=variant)
    assert report.checked and report.parity.argmax_agreement == 1.0
    assert ort_optimized_op_counts(report.path, tmp_path / "opt.onnx").get(kernel) == linears
    session = _session(report.path)
    _, keys, values = session.run(None, {k: v.numpy() for k, v in probe.items()})
    feed = {
        "input_ids": _ids((1, 1), seed=10).numpy(),
        "attention_mask": np.ones((1, 1), dtype=np.int64),
        "past_mask": np.array([[0] + [1] * 16], dtype=np.int64),
        "past_keys": keys,
        "past_values": values,
    }
    got = session.run(None, feed)
    with torch.no_grad():
        want = qp.module()(**{k: torch.from_numpy(v) for k, v in feed.items()})
    assert got[1].shape == (2, 1, 2, 18, 16)
    if variant == "w4a4int":
        np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-5)
    else:
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(got[0]).flatten(), want[0].flatten(), dim=0)
        assert cos > 0.99
