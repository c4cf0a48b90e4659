import dataclasses

import pytest

from mqcompile import ConfigError, QuantConfig


def test_json_round_trip():
    cfg = QuantConfig(
        default="w4a16",
        modality={"vision": "w8a8"},
        overrides=(("*.fc2", "float"),),
        weight_group_size=64,
        modality_token_ids={"vision": (5, 6), "audio": (7,)},
        sources={"x": "audio"},
    )
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantConfig().default = "w8a8"
    with pytest.raises(TypeError):
        QuantConfig(modality={"vision": "w8a8"}).modality["audio"] = "w4a4"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"default": "w3a3"}, "unknown scheme 'w3a3'"),
        ({"modality": {"smell": "w4a4"}}, "unknown modality 'smell'"),
        ({"modality": {"vision": "int4"}}, "unknown scheme 'int4'"),
        ({"overrides": (("x", "nope"),)}, "unknown scheme"),
        ({"weight_group_size": 3}, "even integer"),
        ({"modality_token_ids": {"text": (1,)}}, "'vision' or 'audio'"),
        ({"sources": {"x": "smell"}}, "unknown modality"),
        ({"version": 3}, "version 3"),
    ],
)
def test_bad_values_say_what_to_do(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kwargs)


def test_unknown_field_in_dict():
    with pytest.raises(ConfigError, match="unknown QuantConfig fields"):
        QuantConfig.from_dict({"defualt": "w4a4"})


def test_resolution_order():
    cfg = QuantConfig(modality={"audio": "w8a8"}, overrides=(("enc.*", "w4a16"),), keep_float=("head",))
    assert cfg.scheme_for("enc.fc1", "audio").name == "w4a16"
    assert cfg.scheme_for("head", "audio").name == "float"
    assert cfg.scheme_for("dec.fc1", "audio").name == "w8a8"
    assert cfg.scheme_for("dec.fc1", "text").name == "w4a4"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [  # issue #15 case 4: each of these used to be accepted, silently wrong, or a raw TypeError
        ({"keep_float": "fc2"}, r"keep_float must be a tuple of name patterns"),
        ({"overrides": ("*.fc1", "w8a8")}, r"overrides must be a tuple of \(pattern, scheme\) pairs"),
        ({"modality_token_ids": {"vision": 5}}, r"modality_token_ids\['vision'\] must be a tuple of token ids"),
        ({"seed": "abc"}, r"seed must be an integer"),
        ({"default": 4}, r"default must be a scheme name"),
        ({"weight_group_size": True}, r"weight_group_size must be an even integer"),
        ({"version": 7}, r"written by a newer mqcompile: upgrade"),
    ],
)
def test_types_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kwargs)


def test_json_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="not a QuantConfig JSON text"):
        QuantConfig.from_json("w4a4")
    with pytest.raises(ConfigError, match="is an object"):
        QuantConfig.from_json("[1, 2]")


def test_quantize_takes_a_config_or_a_recipe(toy, caplog):
    import logging

    import mqcompile
    from mqcompile import recipes

    _, kwargs, ep = toy
    for bad in ("w4a4", {"default": "w4a4"}):
        with pytest.raises(ConfigError, match="takes a mqcompile.QuantConfig"):
            mqcompile.quantize(ep, bad, progress=False)
    qp = mqcompile.quantize(ep, recipes.RTN + (recipes.Rotate(),), progress=False)
    assert qp.config.algorithms == (recipes.Rotate(),)
    with caplog.at_level(logging.WARNING):
        mqcompile.quantize(ep, QuantConfig(overrides=(("*.fc9", "w8a8"),)), calibration=[kwargs], progress=False)
    assert "pattern '*.fc9' matches no linear" in caplog.text
    assert "calibration batches given, but recipe recipes.RTN uses none" in caplog.text
