"""Op schemas, references, fake impls and kernels of the ``mqcompile::`` namespace.

Importing this package registers the ops with torch.library.
"""

from . import ops, reference
from .pack import pack_int4, packed_cols, unpack_int4

__all__ = ["ops", "reference", "pack_int4", "unpack_int4", "packed_cols"]
