"""Quantization configs: frozen, validated, JSON round-trippable.

Example:
    >>> cfg = QuantConfig(default="w4a4", modality={"audio": "w8a8"})
    >>> QuantConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType

from .errors import ConfigError

__all__ = [
    "MODALITIES",
    "PATHS",
    "METHODS",
    "CALIBRATED_METHODS",
    "DABC_METHODS",
    "MDQFO_METHODS",
    "Scheme",
    "SCHEMES",
    "QuantConfig",
    "scheme",
]

# Token modalities, in the order used for per-token modality ids and per-modality tables.
MODALITIES: tuple[str, ...] = ("text", "vision", "audio")
# Modality paths a linear can be tagged with: one modality, or several ("fused", the decoder).
PATHS: tuple[str, ...] = (*MODALITIES, "fused")


@dataclass(frozen=True)
class Scheme:
    """Bit widths of one quantization scheme; ``None`` means that side stays float."""

    name: str
    weight_bits: int | None
    act_bits: int | None

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None


SCHEMES: Mapping[str, Scheme] = MappingProxyType(
    {
        "w4a4": Scheme("w4a4", 4, 4),
        "w4a16": Scheme("w4a16", 4, None),
        "w8a8": Scheme("w8a8", 8, 8),
        "float": Scheme("float", None, None),
    }
)


# Methods: how parameters are chosen. "rtn": round to nearest, no calibration; "smoothquant": SmoothQuant
# (per-channel migration of activation range into the weights, alpha = smooth_alpha) then round to nearest;
# "dabc": DABC shifts + compensation only; "mdqfo_clips": MDQFO clip optimization without DABC;
# "morphoquant": DABC + MDQFO (clips and masks), the full method.
METHODS: tuple[str, ...] = ("rtn", "smoothquant", "dabc", "mdqfo_clips", "morphoquant")
CALIBRATED_METHODS: frozenset[str] = frozenset(METHODS) - {"rtn"}
DABC_METHODS: frozenset[str] = frozenset({"dabc", "morphoquant"})
MDQFO_METHODS: frozenset[str] = frozenset({"dabc", "mdqfo_clips", "morphoquant"})


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


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    Resolution order for one linear (first match wins): ``overrides`` (fnmatch pattern on the linear's name ->
    scheme), ``keep_float`` patterns, ``modality`` (modality path -> scheme), ``default``.

    Args:
        default: scheme for every linear not matched otherwise (``w4a4``, ``w4a16``, ``w8a8``, ``float``).
        modality: per modality path (``text``, ``vision``, ``audio``, ``fused``) scheme.
        overrides: ``(pattern, scheme)`` pairs matched against linear names, e.g. ``("*.mlp.down_proj", "w8a8")``.
        keep_float: name patterns that stay float; the output head by default (its error hits every token's logits).
        weight_group_size: quantize weights in groups of this many input channels (``None``: one scale per channel).
        modality_token_ids: token ids that mark a modality in ``input_ids`` (``{"vision": (151655,), ...}``);
            needed for per-token modality routing in fused linears. Model adapters provide them.
        sources: placeholder name -> modality for data-flow tagging; empty means the defaults
            (``input_ids``: text, ``pixel_values``/``pixel_values_videos``: vision, ``input_features``: audio).
        method: ``rtn`` (round to nearest), or a calibrated one: ``smoothquant``, ``dabc``, ``mdqfo_clips``,
            ``morphoquant`` (DABC + MDQFO).
        smooth_alpha: SmoothQuant migration strength in [0, 1].
        reservoir_tokens: calibration tokens kept per linear and modality (bounds calibration memory).
        morph_weight: weight of MDQFO's morphology term.
        mdqfo_ste_steps: straight-through refinement steps per linear (0 = grid search only).
        mdqfo_time_budget_s: per-linear time budget of MDQFO (later steps are skipped when spent).
        mdqfo_act_clips: let MDQFO clip activations (``alpha`` < 1). ``False`` keeps ``alpha = 1`` and optimizes only
            the weight clips and DABC masks: measured better on decoders (Whisper, Qwen), worse on DINOv2
            (``docs/method.md``), since the clip is chosen for each linear in isolation.
        mdqfo_block_steps: block-wise MDQFO (0 = off): after the per-linear stage, this many straight-through steps
            refine the clips of all linears of each block (transformer layer) together against the block's float
            output, fed by the already quantized blocks before it (``mqcompile.passes.mdqfo_block``).
        dabc_max_channels: most channels DABC may shift per linear and modality (None: K / 32).
        rotate: rotate each activation-quantized linear's input by a block-diagonal randomized Hadamard matrix
            folded into its weight (QuaRot-style; an extra to any method but ``smoothquant``).
        rotate_max_block: largest Hadamard block (a power of two; the block is the largest power of two that divides
            the linear's K, at most this).
        weight_rounding: ``rtn`` (each weight to its nearest grid point) or ``gptq`` (GPTQ error feedback over the
            calibration tokens, on the same grid; needs calibration data, whatever the method).
        gptq_damp: GPTQ's dampening, as a fraction of the mean Hessian diagonal.
        seed: seed of every random choice (reservoir sampling, sub-sampling, rotation signs).
        debug: lint and validate the program after every pass, naming the pass that broke it.

    Example:
        >>> QuantConfig(overrides=(("*.fc2", "w8a8"),)).scheme_for("enc.fc2", "audio").name
        'w8a8'
    """

    version: int = 1
    default: str = "w4a4"
    modality: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    overrides: tuple[tuple[str, str], ...] = ()
    keep_float: tuple[str, ...] = ("lm_head", "*.lm_head")
    weight_group_size: int | None = None
    modality_token_ids: Mapping[str, tuple[int, ...]] = field(default_factory=lambda: MappingProxyType({}))
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    method: str = "rtn"
    smooth_alpha: float = 0.5
    reservoir_tokens: int = 256
    morph_weight: float = 0.1
    mdqfo_ste_steps: int = 10
    mdqfo_time_budget_s: float | None = None
    mdqfo_act_clips: bool = True
    mdqfo_block_steps: int = 0
    dabc_max_channels: int | None = None
    rotate: bool = False
    rotate_max_block: int = 256
    weight_rounding: str = "rtn"
    gptq_damp: float = 0.01
    seed: int = 0
    debug: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise ConfigError(f"smooth_alpha must be in [0, 1], got {self.smooth_alpha}")
        if self.rotate and self.method == "smoothquant":
            raise ConfigError("rotate=True does not combine with method='smoothquant'; use rtn or a MorphoQuant method")
        if self.rotate_max_block < 2 or self.rotate_max_block & (self.rotate_max_block - 1):
            raise ConfigError(f"rotate_max_block must be a power of two >= 2, got {self.rotate_max_block}")
        if self.weight_rounding not in ("rtn", "gptq"):
            raise ConfigError(f"weight_rounding must be 'rtn' or 'gptq', got {self.weight_rounding!r}")
        if not 0.0 < self.gptq_damp <= 1.0:
            raise ConfigError(f"gptq_damp must be in (0, 1], got {self.gptq_damp}")
        if self.mdqfo_block_steps < 0:
            raise ConfigError(f"mdqfo_block_steps must be >= 0, got {self.mdqfo_block_steps}")
        if self.reservoir_tokens < 1:
            raise ConfigError(f"reservoir_tokens must be >= 1, got {self.reservoir_tokens}")
        if self.version != 1:
            raise ConfigError(f"QuantConfig version {self.version} is not supported by this mqcompile (expects 1)")
        scheme(self.default)
        for key, value in dict(self.modality).items():
            if key not in PATHS:
                raise ConfigError(f"unknown modality {key!r} in QuantConfig.modality; choose from {list(PATHS)}")
            scheme(value)
        object.__setattr__(self, "modality", _frozen_mapping(self.modality))
        overrides = tuple((str(p), str(s)) for p, s in self.overrides)
        for _, name in overrides:
            scheme(name)
        object.__setattr__(self, "overrides", overrides)
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        if self.weight_group_size is not None and (self.weight_group_size < 2 or self.weight_group_size % 2):
            raise ConfigError(f"weight_group_size must be an even integer >= 2 or None, got {self.weight_group_size}")
        ids = {}
        for key, value in dict(self.modality_token_ids).items():
            if key not in MODALITIES or key == "text":
                raise ConfigError(f"modality_token_ids keys must be 'vision' or 'audio', got {key!r}")
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

    @property
    def needs_calibration(self) -> bool:
        return self.method in CALIBRATED_METHODS or self.weight_rounding == "gptq"

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> QuantConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown QuantConfig fields {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if "overrides" in data:
            data["overrides"] = tuple(tuple(x) for x in data["overrides"])
        if "keep_float" in data:
            data["keep_float"] = tuple(data["keep_float"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        return cls.from_dict(json.loads(text))
