"""Recipes: each algorithm config validates its own knobs, combinations are checked, presets replace the method
strings, and version 1 files load into the recipe they meant (or fail naming it)."""

import json

import pytest

from mqcompile import ConfigError, QuantConfig, recipes

# The suite's rows as version 1 files wrote them (flat fields), and the recipe each means today.
V1_ROWS = [
    ({"method": "rtn"}, recipes.RTN),
    ({"method": "smoothquant", "smooth_alpha": 0.5}, recipes.SMOOTHQUANT),
    ({"method": "dabc"}, recipes.DABC_ONLY),
    ({"method": "mdqfo_clips"}, recipes.MDQFO_CLIPS),
    ({"method": "morphoquant"}, recipes.MORPHOQUANT),
    ({"rotate": True}, (recipes.Rotate(),)),
    ({"method": "morphoquant", "rotate": True, "mdqfo_block_steps": 10}, (
        recipes.Rotate(), recipes.DABC(), recipes.MDQFO(), recipes.BlockMDQFO(steps=10))),
    ({"method": "morphoquant", "rotate": True, "mdqfo_ste_steps": 0}, (
        recipes.Rotate(), recipes.DABC(), recipes.MDQFO(ste_steps=0))),
    ({"method": "morphoquant", "rotate": True, "mdqfo_act_clips": False}, (
        recipes.Rotate(), recipes.DABC(), recipes.MDQFO(act_clips=False))),
    ({"rotate": True, "weight_rounding": "gptq", "reservoir_tokens": 1024}, (recipes.Rotate(), recipes.GPTQ())),
]  # fmt: skip


@pytest.mark.parametrize(("v1", "algorithms"), V1_ROWS)
def test_version_1_files_load_into_the_recipe_they_meant(v1, algorithms):
    old = {"version": 1, "default": "w4a4", **v1}
    config = QuantConfig.from_json(json.dumps(old))
    assert config.algorithms == algorithms and config.version == 2
    assert config.reservoir_tokens == v1.get("reservoir_tokens", 256)
    assert QuantConfig.from_json(config.to_json()) == config


def test_a_version_1_full_dump_loads():
    # to_dict of version 1 wrote every field, defaults included: those must not count as "set"
    full = {
        "version": 1, "default": "w4a4", "modality": {}, "overrides": [], "keep_float": ["lm_head", "*.lm_head"],
        "weight_group_size": None, "modality_token_ids": {}, "sources": {}, "method": "morphoquant",
        "smooth_alpha": 0.5, "reservoir_tokens": 256, "morph_weight": 0.1, "mdqfo_ste_steps": 10,
        "mdqfo_time_budget_s": None, "mdqfo_act_clips": True, "mdqfo_block_steps": 0, "dabc_max_channels": None,
        "rotate": True, "rotate_max_block": 256, "weight_rounding": "rtn", "gptq_damp": 0.01, "seed": 0,
        "debug": False,
    }  # fmt: skip
    assert QuantConfig.from_dict(full).algorithms == (recipes.Rotate(), *recipes.MORPHOQUANT)


@pytest.mark.parametrize(
    ("v1", "match"),
    [
        ({"method": "dabc", "mdqfo_block_steps": 10}, r"mdqfo_block_steps=10.*recipes\.DABC_ONLY"),
        ({"method": "rtn", "smooth_alpha": 0.8}, r"smooth_alpha.*recipes\.RTN"),
        ({"method": "smoothquant", "mdqfo_ste_steps": 3}, r"mdqfo_ste_steps.*recipes\.SMOOTHQUANT"),
        ({"rotate_max_block": 64}, r"rotate_max_block.*rotate=False"),
        ({"gptq_damp": 0.1}, r"gptq_damp.*weight_rounding='gptq'"),
        ({"method": "awq"}, r"unknown method 'awq'"),
        ({"rotate": "yes"}, r"rotate must be true or false"),
        ({"method": "morphoquant", "mdqfo_ste_steps": "10"}, r"MDQFO.ste_steps must be an integer"),
    ],
)
def test_version_1_knobs_that_were_ignored_fail_naming_the_preset(v1, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig.from_dict({"version": 1, **v1})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: recipes.MDQFO(ste_steps="10"), r"MDQFO.ste_steps must be an integer >= 0"),
        (lambda: recipes.MDQFO(ste_steps=-1), r"MDQFO.ste_steps"),
        (lambda: recipes.MDQFO(act_clips="no"), r"MDQFO.act_clips must be True or False"),
        (lambda: recipes.MDQFO(time_budget_s=0), r"MDQFO.time_budget_s"),
        (lambda: recipes.MDQFO(morph_weight=-0.1), r"MDQFO.morph_weight"),
        (lambda: recipes.SmoothQuant(alpha=1.5), r"SmoothQuant.alpha must be a number in \[0.0, 1.0\]"),
        (lambda: recipes.Rotate(max_block=True), r"Rotate.max_block must be an integer"),
        (lambda: recipes.DABC(max_channels=-2), r"DABC.max_channels"),
        (lambda: recipes.GPTQ(damp=2.0), r"GPTQ.damp"),
        (lambda: recipes.BlockMDQFO(steps=0), r"BlockMDQFO.steps must be an integer >= 1"),
        (lambda: QuantConfig(algorithms=(recipes.MDQFO(),)), r"MDQFO\(masks=True\).*add DABC\(\)"),
        (lambda: QuantConfig(algorithms=(recipes.BlockMDQFO(),)), r"add MDQFO\(\)"),
        (lambda: QuantConfig(algorithms=(recipes.SmoothQuant(), recipes.Rotate())), r"Rotate does not combine"),
        (lambda: QuantConfig(algorithms=(recipes.DABC(), recipes.DABC(max_channels=4))), r"DABC appears twice"),
        (lambda: QuantConfig(algorithms=recipes.DABC()), r"a tuple of algorithm configs"),
        (lambda: QuantConfig(algorithms="morphoquant"), r"a tuple of algorithm configs"),
        (lambda: QuantConfig(algorithms=("MDQFO",)), r"unknown algorithm 'MDQFO'"),
        (lambda: QuantConfig(reservoir_tokens=0), r"reservoir_tokens must be an integer >= 1"),
        (lambda: QuantConfig(seed="abc"), r"seed must be an integer"),
        (lambda: QuantConfig.from_dict({"version": 2, "algorithms": [{"algorithm": "AWQ"}]}), r"unknown algorithm"),
        (lambda: QuantConfig.from_dict({"version": 2, "algorithms": [{"algorithm": "GPTQ", "dmp": 1}]}), r"dmp"),
    ],
)
def test_bad_recipes_say_what_to_do(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_recipes_run_in_pipeline_order_and_round_trip():
    config = QuantConfig(algorithms=(recipes.GPTQ(), recipes.MDQFO(ste_steps=2), recipes.DABC(), recipes.Rotate()))
    assert [type(a) for a in config.algorithms] == [recipes.Rotate, recipes.DABC, recipes.MDQFO, recipes.GPTQ]
    assert QuantConfig.from_json(config.to_json()) == config
    assert config.needs_calibration and not QuantConfig(algorithms=(recipes.Rotate(),)).needs_calibration
    assert config.algorithm(recipes.MDQFO).ste_steps == 2 and config.algorithm(recipes.SmoothQuant) is None
    # MDQFO(ste_steps=2) is not MORPHOQUANT's MDQFO, so the largest preset it contains is DABC_ONLY
    assert config.recipe.startswith("recipes.DABC_ONLY + (Rotate(max_block=256), MDQFO(")
    assert QuantConfig(algorithms=recipes.MORPHOQUANT + (recipes.Rotate(),)).recipe == (
        "recipes.MORPHOQUANT + (Rotate(max_block=256),)"
    )
