"""``mqcompile.compile``: swap the ``mqcompile::`` ops for Triton / CPU kernels and hand the program to Inductor."""

from .deploy import compile, detach_to, use_cpu_int4pack, use_triton_ops  # noqa: A004

__all__ = ["compile", "detach_to", "use_cpu_int4pack", "use_triton_ops"]
