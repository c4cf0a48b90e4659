"""Graph passes, one per module. The order they run in is ``mqcompile.pipeline.PIPELINE``."""

from . import (
    check_program,
    find_linears,
    insert_modality_ids,
    rewrite_linears,
    select_schemes,
    tag_modality,
)
from .base import PassContext, PassResult

__all__ = [
    "PassContext",
    "PassResult",
    "check_program",
    "find_linears",
    "tag_modality",
    "select_schemes",
    "insert_modality_ids",
    "rewrite_linears",
]
