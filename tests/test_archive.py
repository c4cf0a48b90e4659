"""Loading a crafted ``.pt2`` never runs code from it: the two vectors of ``torch.export.load`` (a pickled
``sample_inputs`` that only a ``weights_only=False`` fallback can load, and a weight marked ``use_pickle``)."""

import io
import json
import zipfile

import pytest
import torch

import mqcompile
from mqcompile import ProgramFileError, QuantizedProgram
from mqcompile.archive import check_archive
from tests.conftest import TOY_CONFIG


class Payload:
    """Unpickling this writes ``marker``: stands for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _evil(marker) -> bytes:
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    return buf.getvalue()


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))


@pytest.fixture
def saved(toy, tmp_path):
    path = tmp_path / "good.pt2"
    mqcompile.quantize(toy[2], TOY_CONFIG, progress=False).save(path)
    return path


def _sample_inputs_attack(saved, tmp_path, marker):
    crafted = tmp_path / "sample_inputs.pt2"
    _rewrite(saved, crafted, lambda name, data: _evil(marker) if name.endswith("sample_inputs/model.pt") else data)
    return crafted


def _use_pickle_attack(saved, tmp_path, marker):
    crafted = tmp_path / "use_pickle.pt2"
    with zipfile.ZipFile(saved) as z:
        config_name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(config_name))
    fqn, payload = next(iter(config["config"].items()))
    payload["use_pickle"] = True
    weight_file = config_name.rsplit("/", 1)[0] + "/" + payload["path_name"]

    def edit(name, data):
        if name == config_name:
            return json.dumps(config).encode()
        return _evil(marker) if name == weight_file else data

    _rewrite(saved, crafted, edit)
    return crafted


@pytest.mark.parametrize("attack", [_sample_inputs_attack, _use_pickle_attack])
def test_crafted_archives_are_refused_without_running_code(saved, tmp_path, attack):
    marker = tmp_path / "ran.txt"
    crafted = attack(saved, tmp_path, marker)
    with pytest.raises(ProgramFileError, match="refused to load"):
        QuantizedProgram.load(crafted)
    assert not marker.exists()
    # the vector is real: torch.export.load itself runs the payload (so this test can fail)
    try:
        torch.export.load(crafted)
    except Exception:
        pass
    assert marker.exists()


def test_saved_programs_pass_the_check(saved, toy):
    check_archive(saved)
    _, kwargs, _ = toy
    assert torch.equal(QuantizedProgram.load(saved).module()(**kwargs), QuantizedProgram.load(saved).module()(**kwargs))


def test_a_broken_payload_config_is_named(saved, tmp_path):
    crafted = tmp_path / "broken.pt2"
    _rewrite(saved, crafted, lambda name, data: b"{" if name.endswith("model_weights_config.json") else data)
    with pytest.raises(ProgramFileError, match="model_weights_config.json is not valid JSON"):
        QuantizedProgram.load(crafted)
