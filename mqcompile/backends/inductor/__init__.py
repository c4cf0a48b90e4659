"""``mqcompile.compile``: swap the ``mqcompile::`` ops for Triton / CPU kernels and hand the program to Inductor."""

from .deploy import compile, detach_to, use_cpu_int4pack, use_triton_ops, use_w4a4_paths  # noqa: A004

__all__ = ["compile", "detach_to", "use_cpu_int4pack", "use_triton_ops", "use_w4a4_paths"]
