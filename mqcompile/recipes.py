"""Recipes: the algorithms that choose quantization parameters, each a small validated config, and named presets.

A recipe is a tuple of algorithm configs (``QuantConfig(algorithms=...)``). Each config holds only its own knobs
and exists only when the algorithm runs, so no knob is ever silently ignored. They always run in the pipeline's
order (:data:`ORDER`), whatever order they are given in. Presets are plain tuples; extend one with ``+``.

Example:
    >>> from mqcompile import QuantConfig, recipes
    >>> cfg = QuantConfig(algorithms=recipes.MORPHOQUANT + (recipes.Rotate(),))
    >>> [type(a).__name__ for a in cfg.algorithms]
    ['Rotate', 'DABC', 'MDQFO']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError

__all__ = [
    "Algorithm",
    "Rotate",
    "SmoothQuant",
    "DABC",
    "MDQFO",
    "BlockMDQFO",
    "GPTQ",
    "ORDER",
    "RTN",
    "SMOOTHQUANT",
    "DABC_ONLY",
    "MDQFO_CLIPS",
    "MORPHOQUANT",
    "PRESETS",
    "normalize",
    "describe",
    "parse",
    "to_dicts",
    "from_dicts",
]


# Field checks of every config here, and of QuantConfig's own numeric and boolean fields.
def check_int(owner: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{owner}.{name} must be an integer >= {low}, got {value!r}")


def check_float(owner: str, name: str, value, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ConfigError(f"{owner}.{name} must be a number in {bound}, got {value!r}")


def check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}.{name} must be True or False, got {value!r}")


class Algorithm:
    """Base of the algorithm configs. ``calibrated``: the algorithm needs calibration batches."""

    calibrated = True


@dataclass(frozen=True)
class Rotate(Algorithm):
    """Online block-diagonal randomized Hadamard rotation of each activation-quantized linear's input, folded into
    its weight (QuaRot-style). ``max_block``: largest Hadamard block, a power of two."""

    max_block: int = 256
    calibrated = False

    def __post_init__(self) -> None:
        check_int("Rotate", "max_block", self.max_block, 2)
        if self.max_block & (self.max_block - 1):
            raise ConfigError(f"Rotate.max_block must be a power of two >= 2, got {self.max_block}")


@dataclass(frozen=True)
class SmoothQuant(Algorithm):
    """SmoothQuant's per-channel migration of activation range into the weights (baseline), strength ``alpha``."""

    alpha: float = 0.5

    def __post_init__(self) -> None:
        check_float("SmoothQuant", "alpha", self.alpha, 0.0, 1.0)


@dataclass(frozen=True)
class DABC(Algorithm):
    """Distribution-Aware Bias Compensation: shift outlier channels into compensated biases. ``max_channels``: most
    channels shifted per linear and modality (None: K / 32)."""

    max_channels: int | None = None

    def __post_init__(self) -> None:
        if self.max_channels is not None:
            check_int("DABC", "max_channels", self.max_channels, 0)


@dataclass(frozen=True)
class MDQFO(Algorithm):
    """Per-linear MDQFO: weight clips ``gamma``, activation clips ``alpha`` (``act_clips``) and, with DABC in the
    recipe, DABC's masks (``masks``), on the modality-balanced loss with morphology weight ``morph_weight``;
    ``ste_steps`` straight-through steps after the grid search; ``time_budget_s`` per linear (None: no limit)."""

    morph_weight: float = 0.1
    ste_steps: int = 10
    time_budget_s: float | None = None
    act_clips: bool = True
    masks: bool = True

    def __post_init__(self) -> None:
        check_float("MDQFO", "morph_weight", self.morph_weight, 0.0, float("inf"))
        check_int("MDQFO", "ste_steps", self.ste_steps, 0)
        if self.time_budget_s is not None:
            check_float("MDQFO", "time_budget_s", self.time_budget_s, 0.0, float("inf"), low_open=True)
        check_bool("MDQFO", "act_clips", self.act_clips)
        check_bool("MDQFO", "masks", self.masks)


@dataclass(frozen=True)
class BlockMDQFO(Algorithm):
    """Block-wise MDQFO after the per-linear stage: ``steps`` Adam steps per block (transformer layer) on all its
    clips against the block's float output (morphology weight ``morph_weight``; ``act_clips``: move the activation
    clips too). ``transform``: also learn an invertible Kronecker-factored online transform per distinct input of
    the block's linears, starting at :class:`Rotate`'s Hadamard (so it needs Rotate), its inverse folded into the
    weights (FlatQuant-style; :mod:`mqcompile.solvers.transform`)."""

    steps: int = 10
    morph_weight: float = 0.1
    act_clips: bool = True
    transform: bool = False

    def __post_init__(self) -> None:
        check_int("BlockMDQFO", "steps", self.steps, 1)
        check_float("BlockMDQFO", "morph_weight", self.morph_weight, 0.0, float("inf"))
        check_bool("BlockMDQFO", "act_clips", self.act_clips)
        check_bool("BlockMDQFO", "transform", self.transform)


@dataclass(frozen=True)
class GPTQ(Algorithm):
    """GPTQ error-feedback weight rounding on the grids the other algorithms chose; ``damp``: dampening as a
    fraction of the mean Hessian diagonal."""

    damp: float = 0.01

    def __post_init__(self) -> None:
        check_float("GPTQ", "damp", self.damp, 0.0, 1.0, low_open=True)


# The order the pipeline runs them in (mqcompile.pipeline.PIPELINE).
ORDER: tuple[type, ...] = (Rotate, SmoothQuant, DABC, MDQFO, BlockMDQFO, GPTQ)
_BY_NAME = {cls.__name__: cls for cls in ORDER}

RTN: tuple[Algorithm, ...] = ()  # round to nearest, no calibration
SMOOTHQUANT: tuple[Algorithm, ...] = (SmoothQuant(),)
DABC_ONLY: tuple[Algorithm, ...] = (DABC(),)  # the +DABC ablation: DABC's shifts, no optimization
MDQFO_CLIPS: tuple[Algorithm, ...] = (MDQFO(masks=False),)  # MDQFO's clips without DABC
MORPHOQUANT: tuple[Algorithm, ...] = (DABC(), MDQFO())  # the full method
PRESETS: Mapping[str, tuple[Algorithm, ...]] = {
    "RTN": RTN,
    "SMOOTHQUANT": SMOOTHQUANT,
    "DABC_ONLY": DABC_ONLY,
    "MDQFO_CLIPS": MDQFO_CLIPS,
    "MORPHOQUANT": MORPHOQUANT,
}


def normalize(algorithms) -> tuple[Algorithm, ...]:
    """Validate a recipe and put it in pipeline order; raises ConfigError naming what to change."""
    if isinstance(algorithms, (str, Algorithm)) or not isinstance(algorithms, (tuple, list)):
        raise ConfigError(
            f"algorithms must be a tuple of algorithm configs (e.g. mqcompile.recipes.MORPHOQUANT), got {algorithms!r}"
        )
    seen: dict[type, Algorithm] = {}
    for algo in algorithms:
        if type(algo) not in ORDER:
            raise ConfigError(f"unknown algorithm {algo!r}; use one of {[c.__name__ for c in ORDER]}")
        if type(algo) in seen:
            raise ConfigError(f"{type(algo).__name__} appears twice in the recipe; keep one")
        seen[type(algo)] = algo
    if Rotate in seen and SmoothQuant in seen:
        raise ConfigError("Rotate does not combine with SmoothQuant; drop one (rotation replaces smoothing)")
    if BlockMDQFO in seen and MDQFO not in seen:
        raise ConfigError("BlockMDQFO refines MDQFO's clips: add MDQFO() to the recipe (e.g. recipes.MORPHOQUANT)")
    if BlockMDQFO in seen and seen[BlockMDQFO].transform and Rotate not in seen:
        raise ConfigError(
            "BlockMDQFO(transform=True) learns the online transform starting from Rotate's Hadamard: add "
            "recipes.Rotate() to the recipe"
        )
    if MDQFO in seen and seen[MDQFO].masks and DABC not in seen:
        raise ConfigError(
            "MDQFO(masks=True) optimizes DABC's masks: add DABC() (recipes.MORPHOQUANT), or use MDQFO(masks=False) "
            "(recipes.MDQFO_CLIPS)"
        )
    return tuple(seen[cls] for cls in ORDER if cls in seen)


def parse(text: str) -> tuple[Algorithm, ...]:
    """A recipe from its name on the command line: presets and algorithms (default knobs) joined by ``+``, any
    case, e.g. ``MORPHOQUANT+Rotate+GPTQ``; ConfigError listing the names otherwise."""
    presets = {name.lower(): preset for name, preset in PRESETS.items()}
    algorithms = {name.lower(): cls for name, cls in _BY_NAME.items()}
    out: list[Algorithm] = []
    for part in str(text).split("+"):
        key = part.strip().lower()
        if key in presets:
            out.extend(presets[key])
        elif key in algorithms:
            out.append(algorithms[key]())
        else:
            raise ConfigError(
                f"unknown recipe part {part.strip()!r} in {text!r}; join presets {sorted(PRESETS)} and algorithms "
                f"{sorted(_BY_NAME)} with '+' (e.g. MORPHOQUANT+Rotate), or pass a QuantConfig JSON file"
            )
    return normalize(tuple(out))


def describe(algorithms: tuple[Algorithm, ...]) -> str:
    """A Python expression for a recipe, in terms of the presets where one matches (for messages)."""
    algorithms = normalize(algorithms)
    for name, preset in sorted(PRESETS.items(), key=lambda item: -len(item[1])):
        rest = [a for a in algorithms if a not in preset]
        if preset and all(a in algorithms for a in preset) and len(rest) < len(algorithms):
            return f"recipes.{name}" + (f" + ({', '.join(map(repr, rest))},)" if rest else "")
    return "(" + ", ".join(map(repr, algorithms)) + ("," if len(algorithms) == 1 else "") + ")"


def to_dicts(algorithms: tuple[Algorithm, ...]) -> list[dict]:
    return [{"algorithm": type(a).__name__, **dataclasses.asdict(a)} for a in algorithms]


def from_dicts(items) -> tuple[Algorithm, ...]:
    out = []
    for item in items:
        item = dict(item)
        name = item.pop("algorithm", None)
        if name not in _BY_NAME:
            raise ConfigError(f"unknown algorithm {name!r} in the config; known: {sorted(_BY_NAME)}")
        known = {f.name for f in dataclasses.fields(_BY_NAME[name])}
        if set(item) - known:
            raise ConfigError(f"unknown {name} fields {sorted(set(item) - known)}; known: {sorted(known)}")
        out.append(_BY_NAME[name](**item))
    return tuple(out)
