"""Quantization configs: frozen, validated, JSON round-trippable.

Example:
    >>> cfg = QuantConfig(default="w4a4", modality={"audio": "w8a8"})
    >>> QuantConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType

from . import recipes
from .errors import ConfigError

__all__ = [
    "MODALITIES",
    "PATHS",
    "Scheme",
    "SCHEMES",
    "QuantConfig",
    "KEEP_FLOAT",
    "scheme",
]

# Token modalities, in the order used for per-token modality ids and per-modality tables.
MODALITIES: tuple[str, ...] = ("text", "vision", "audio")
# Modality paths a linear can be tagged with: one modality, or several ("fused", the decoder).
PATHS: tuple[str, ...] = (*MODALITIES, "fused")


@dataclass(frozen=True)
class Scheme:
    """Bit widths of one quantization scheme; ``None`` means that side stays float. ``act_asym``: per-token
    asymmetric activation codes (a zero point per token) instead of symmetric ones."""

    name: str
    weight_bits: int | None
    act_bits: int | None
    act_asym: bool = False

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None


SCHEMES: Mapping[str, Scheme] = MappingProxyType(
    {
        "w4a4": Scheme("w4a4", 4, 4),
        "w4a4asym": Scheme("w4a4asym", 4, 4, act_asym=True),
        "w4a16": Scheme("w4a16", 4, None),
        "w8a8": Scheme("w8a8", 8, 8),
        "float": Scheme("float", None, None),
    }
)


def group_for(group_size: int | None, k: int) -> int:
    """The weight group size used for a linear with ``k`` inputs: 0 (one scale per channel) when none is set or the
    group would cover the whole row."""
    return group_size if group_size and group_size < k else 0


def scheme(name: str) -> Scheme:
    """Look up a scheme by name, with an error that lists the known ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ConfigError(f"unknown scheme {name!r}; choose one of {sorted(SCHEMES)}") from None


# The output heads stay float unless the config says otherwise (their error hits every token's logits).
KEEP_FLOAT: tuple[str, ...] = ("lm_head", "*.lm_head")


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


# Version 1 configs (before recipes) had flat algorithm fields; their defaults, to tell what a file set on purpose.
_V1_ALGORITHM_FIELDS: Mapping[str, object] = MappingProxyType(
    {
        "method": "rtn",
        "smooth_alpha": 0.5,
        "morph_weight": 0.1,
        "mdqfo_ste_steps": 10,
        "mdqfo_time_budget_s": None,
        "mdqfo_act_clips": True,
        "mdqfo_block_steps": 0,
        "dabc_max_channels": None,
        "rotate": False,
        "rotate_max_block": 256,
        "weight_rounding": "rtn",
        "gptq_damp": 0.01,
    }
)
_V1_PRESETS = {
    "rtn": "RTN",
    "smoothquant": "SMOOTHQUANT",
    "dabc": "DABC_ONLY",
    "mdqfo_clips": "MDQFO_CLIPS",
    "morphoquant": "MORPHOQUANT",
}
# which v1 knobs belong to which method's algorithms (a knob set for an algorithm that did not run was ignored)
_V1_KNOBS = {
    "smooth_alpha": {"smoothquant"},
    "dabc_max_channels": {"dabc", "morphoquant"},
    "morph_weight": {"mdqfo_clips", "morphoquant"},
    "mdqfo_ste_steps": {"mdqfo_clips", "morphoquant"},
    "mdqfo_time_budget_s": {"mdqfo_clips", "morphoquant"},
    "mdqfo_act_clips": {"mdqfo_clips", "morphoquant"},
    "mdqfo_block_steps": {"mdqfo_clips", "morphoquant"},
}


def _v1_algorithms(data: Mapping) -> tuple[recipes.Algorithm, ...]:
    """The recipe a version 1 config meant; ConfigError naming the preset when it set a knob that had no effect."""
    v = {**_V1_ALGORITHM_FIELDS, **{k: data[k] for k in _V1_ALGORITHM_FIELDS if k in data}}
    method = v["method"]
    if method not in _V1_PRESETS:
        raise ConfigError(f"unknown method {method!r} in a version 1 config; known: {sorted(_V1_PRESETS)}")
    preset = f"recipes.{_V1_PRESETS[method]}"
    for knob, methods in _V1_KNOBS.items():
        if v[knob] != _V1_ALGORITHM_FIELDS[knob] and method not in methods:
            raise ConfigError(
                f"this version 1 config sets {knob}={v[knob]!r}, which method {method!r} ignored; it means "
                f"QuantConfig(algorithms={preset}, ...): drop {knob} from the file, or write the recipe you want"
            )
    if not v["rotate"] and v["rotate_max_block"] != 256:
        raise ConfigError(
            f"this version 1 config sets rotate_max_block={v['rotate_max_block']} with rotate=False, which ignored "
            f"it; it means QuantConfig(algorithms={preset}, ...): drop rotate_max_block"
        )
    if v["weight_rounding"] == "rtn" and v["gptq_damp"] != 0.01:
        raise ConfigError(
            f"this version 1 config sets gptq_damp={v['gptq_damp']} without weight_rounding='gptq', which ignored it; "
            f"it means QuantConfig(algorithms={preset}, ...): drop gptq_damp"
        )
    if v["weight_rounding"] not in ("rtn", "gptq"):
        raise ConfigError(f"weight_rounding must be 'rtn' or 'gptq', got {v['weight_rounding']!r}")
    algos: list[recipes.Algorithm] = []
    if v["rotate"] is True:
        algos.append(recipes.Rotate(max_block=v["rotate_max_block"]))
    elif v["rotate"] is not False:
        raise ConfigError(f"rotate must be true or false, got {v['rotate']!r}")
    if method == "smoothquant":
        algos.append(recipes.SmoothQuant(alpha=v["smooth_alpha"]))
    if method in ("dabc", "morphoquant"):
        algos.append(recipes.DABC(max_channels=v["dabc_max_channels"]))
    if method in ("mdqfo_clips", "morphoquant"):
        algos.append(
            recipes.MDQFO(
                morph_weight=v["morph_weight"],
                ste_steps=v["mdqfo_ste_steps"],
                time_budget_s=v["mdqfo_time_budget_s"],
                act_clips=v["mdqfo_act_clips"],
                masks=method == "morphoquant",
            )
        )
        if v["mdqfo_block_steps"]:
            algos.append(
                recipes.BlockMDQFO(
                    steps=v["mdqfo_block_steps"], morph_weight=v["morph_weight"], act_clips=v["mdqfo_act_clips"]
                )
            )
    if v["weight_rounding"] == "gptq":
        algos.append(recipes.GPTQ(damp=v["gptq_damp"]))
    return recipes.normalize(algos)


def _patterns(name: str, value, example: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(p, str) for p in value):
        raise ConfigError(f"QuantConfig.{name} must be a tuple of name patterns such as {example}, got {value!r}")
    return tuple(value)


def _pairs(value) -> tuple[tuple[str, str], ...]:
    ok = isinstance(value, (tuple, list)) and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    )
    if not ok:
        raise ConfigError(
            f"QuantConfig.overrides must be a tuple of (pattern, scheme) pairs, e.g. (('*.fc1', 'w8a8'),), "
            f"got {value!r}"
        )
    return tuple((p, s) for p, s in value)


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize (targeting) and which algorithms choose the parameters (the recipe).

    Resolution order for one linear (first match wins): ``overrides`` (fnmatch pattern on the linear's name ->
    scheme), ``keep_float`` patterns, ``modality`` (modality path -> scheme), ``default``.

    Args:
        default: scheme for every linear not matched otherwise (``w4a4``, ``w4a4asym``: asymmetric per-token
            activations, ``w4a16``, ``w8a8``, ``float``).
        modality: per modality path (``text``, ``vision``, ``audio``, ``fused``) scheme.
        overrides: ``(pattern, scheme)`` pairs matched against linear names, e.g. ``("*.mlp.down_proj", "w8a8")``.
        keep_float: name patterns that stay float; the output head by default (its error hits every token's logits).
        weight_group_size: quantize weights in groups of this many input channels (``None``: one scale per channel).
        modality_token_ids: token ids that mark a modality in the text input (``{"vision": (151655,), ...}``);
            needed for per-token modality routing in fused linears. Model adapters provide them.
        sources: placeholder name -> modality for data-flow tagging; empty means the defaults
            (``input_ids``: text, ``pixel_values``/``pixel_values_videos``: vision, ``input_features``: audio).
        algorithms: the recipe, a tuple of :mod:`mqcompile.recipes` configs (``recipes.MORPHOQUANT``,
            ``recipes.RTN + (recipes.Rotate(),)``, ...); empty is round to nearest. Stored in pipeline order.
        reservoir_tokens: calibration tokens kept per linear and modality (bounds calibration memory).
        seed: seed of every random choice (reservoir sampling, sub-sampling, rotation signs).
        debug: lint and validate the program after every pass, naming the pass that broke it.

    Example:
        >>> QuantConfig(overrides=(("*.fc2", "w8a8"),)).scheme_for("enc.fc2", "audio").name
        'w8a8'
    """

    version: int = 2
    default: str = "w4a4"
    modality: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    overrides: tuple[tuple[str, str], ...] = ()
    keep_float: tuple[str, ...] = KEEP_FLOAT
    weight_group_size: int | None = None
    modality_token_ids: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: MappingProxyType({}))
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    algorithms: tuple[recipes.Algorithm, ...] = ()
    reservoir_tokens: int = 256
    seed: int = 0
    debug: bool = False

    def __post_init__(self) -> None:
        if self.version != 2:
            newer = isinstance(self.version, int) and self.version > 2
            raise ConfigError(
                f"QuantConfig version {self.version!r} is not supported by this mqcompile (it reads 2, and version 1 "
                "files through QuantConfig.from_json)"
                + ("; it was written by a newer mqcompile: upgrade" if newer else "")
            )
        if not isinstance(self.default, str):
            raise ConfigError(f"QuantConfig.default must be a scheme name such as 'w4a4', got {self.default!r}")
        for name in ("modality", "modality_token_ids", "sources"):
            if not isinstance(getattr(self, name), Mapping):
                raise ConfigError(f"QuantConfig.{name} must be a mapping, got {getattr(self, name)!r}")
        object.__setattr__(self, "algorithms", recipes.normalize(self.algorithms))
        recipes.check_int("QuantConfig", "reservoir_tokens", self.reservoir_tokens, 1)
        recipes.check_int("QuantConfig", "seed", self.seed, 0)
        recipes.check_bool("QuantConfig", "debug", self.debug)
        scheme(self.default)
        for key, value in dict(self.modality).items():
            if key not in PATHS:
                raise ConfigError(f"unknown modality {key!r} in QuantConfig.modality; choose from {list(PATHS)}")
            scheme(value)
        object.__setattr__(self, "modality", _frozen_mapping(self.modality))
        overrides = _pairs(self.overrides)
        for _, name in overrides:
            scheme(name)
        object.__setattr__(self, "overrides", overrides)
        object.__setattr__(self, "keep_float", _patterns("keep_float", self.keep_float, "('lm_head', '*.fc2')"))
        group = self.weight_group_size
        bad_group = group is not None and (isinstance(group, bool) or not isinstance(group, int))
        if bad_group or (group is not None and (group < 2 or group % 2)):
            raise ConfigError(f"weight_group_size must be an even integer >= 2 or None, got {self.weight_group_size}")
        ids = {}
        for key, value in dict(self.modality_token_ids).items():
            if key not in MODALITIES or key == "text":
                raise ConfigError(f"modality_token_ids keys must be 'vision' or 'audio', got {key!r}")
            is_id = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
            if isinstance(value, (str, numbers.Integral)) or not all(is_id(v) for v in value):
                raise ConfigError(
                    f"modality_token_ids[{key!r}] must be a tuple of token ids such as (151655,), got {value!r}"
                )
            ids[key] = tuple(int(v) for v in value)
        object.__setattr__(self, "modality_token_ids", MappingProxyType(ids))
        for key, value in dict(self.sources).items():
            if value not in MODALITIES:
                raise ConfigError(f"source {key!r} maps to unknown modality {value!r}; choose from {list(MODALITIES)}")
        object.__setattr__(self, "sources", _frozen_mapping(self.sources))

    def scheme_for(self, name: str, path: str) -> Scheme:
        """The scheme for a linear called ``name`` on modality path ``path``."""
        for pattern, value in self.overrides:
            if fnmatchcase(name, pattern):
                return scheme(value)
        if any(fnmatchcase(name, p) for p in self.keep_float):
            return SCHEMES["float"]
        return scheme(self.modality.get(path, self.default))

    def group_for(self, k: int) -> int:
        """:func:`group_for` with this config's ``weight_group_size``."""
        return group_for(self.weight_group_size, k)

    def algorithm(self, kind: type) -> recipes.Algorithm | None:
        """The recipe's config of algorithm ``kind`` (e.g. ``recipes.MDQFO``), or None when it does not run."""
        return next((a for a in self.algorithms if type(a) is kind), None)

    @property
    def needs_calibration(self) -> bool:
        return any(a.calibrated for a in self.algorithms)

    @property
    def recipe(self) -> str:
        """The recipe as a Python expression (``recipes.MORPHOQUANT + (Rotate(max_block=256),)``)."""
        return recipes.describe(self.algorithms) if self.algorithms else "recipes.RTN"

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "algorithms":
                value = recipes.to_dicts(value)
            elif isinstance(value, Mapping):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> QuantConfig:
        """From :meth:`to_dict`'s output; a version 1 dict (flat ``method``, ``rotate``, ``mdqfo_*`` ... fields)
        becomes the recipe it meant, or fails naming the preset when it set a knob its method ignored."""
        data = dict(data)
        if data.get("version", 1) == 1:
            algorithms = _v1_algorithms(data)
            data = {k: v for k, v in data.items() if k not in _V1_ALGORITHM_FIELDS}
            data.update(version=2, algorithms=algorithms)
        elif "algorithms" in data:
            data["algorithms"] = recipes.from_dicts(data["algorithms"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown QuantConfig fields {sorted(unknown)}; known: {sorted(known)}")
        if "overrides" in data:
            data["overrides"] = tuple(tuple(x) for x in data["overrides"])
        if "keep_float" in data:
            data["keep_float"] = tuple(data["keep_float"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"not a QuantConfig JSON text ({exc}); write one with QuantConfig.to_json()") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"a QuantConfig JSON text is an object, got {type(data).__name__}")
        return cls.from_dict(data)
