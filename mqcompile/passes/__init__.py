"""Graph passes, one per module. The order they run in is ``mqcompile.pipeline.PIPELINE``."""

from . import (
    calibrate,
    check_program,
    dabc_plan,
    find_linears,
    gptq,
    insert_modality_ids,
    mdqfo,
    mdqfo_block,
    rewrite_linears,
    rotate,
    select_schemes,
    smooth_quant,
    tag_modality,
)
from .base import PassContext, PassResult
from .plan import LinearPlan

__all__ = [
    "PassContext",
    "PassResult",
    "LinearPlan",
    "check_program",
    "find_linears",
    "tag_modality",
    "select_schemes",
    "insert_modality_ids",
    "rotate",
    "calibrate",
    "smooth_quant",
    "dabc_plan",
    "mdqfo",
    "mdqfo_block",
    "gptq",
    "rewrite_linears",
]
