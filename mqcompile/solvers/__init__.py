"""Pure tensor solvers of the method (no graph code): DABC planning, MDQFO optimization, rotations, GPTQ."""

from .dabc import DabcPlan, plan_dabc
from .gptq import gptq_codes, hessian
from .mdqfo import MdqfoOptions, MdqfoResult, fake_quant_act, fake_quant_weight, layer_loss, optimize_linear
from .rotation import block_size, rotate_act, rotate_weight, rotation_block

__all__ = [
    "DabcPlan",
    "plan_dabc",
    "MdqfoOptions",
    "MdqfoResult",
    "optimize_linear",
    "layer_loss",
    "fake_quant_act",
    "fake_quant_weight",
    "block_size",
    "rotation_block",
    "rotate_act",
    "rotate_weight",
    "gptq_codes",
    "hessian",
]
