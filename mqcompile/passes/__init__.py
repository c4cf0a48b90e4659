"""Graph passes, one per module, and what they share (``base``: context and result; ``plan``: the per-linear plan).

The order they run in is ``mqcompile.pipeline.PIPELINE``; adding a pass means one module and one entry there.
"""

from .base import PassContext, PassResult
from .plan import LinearPlan

__all__ = ["PassContext", "PassResult", "LinearPlan"]
