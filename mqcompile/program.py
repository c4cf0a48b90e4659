"""QuantizedProgram: a quantized ExportedProgram plus what mqcompile knows about it.

Example:
    >>> qp = mqcompile.quantize(ep)                     # doctest: +SKIP
    >>> qp.save("model.pt2"); qp2 = QuantizedProgram.load("model.pt2")  # doctest: +SKIP
    >>> print(qp2.summary())                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.export import ExportedProgram

from . import kernels  # noqa: F401  (registers mqcompile:: ops, needed to load saved programs)
from .archive import load_archive
from .config import QuantConfig
from .errors import ProgramFileError
from .graph import meta
from .inputs import CheckedModule

__all__ = ["QuantizedProgram", "LinearRecord", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_EXTRA = "mqcompile.json"


@dataclass(frozen=True)
class LinearRecord:
    name: str
    modality: str
    scheme: str
    in_features: int
    out_features: int
    op: str


@dataclass
class QuantizedProgram:
    """The result of :func:`mqcompile.quantize`.

    Attributes:
        exported_program: the rewritten ``torch.export`` program (``mqcompile::`` ops, packed weights as buffers).
        config: the config it was quantized with.
        report: per-pass counts and byte totals recorded at quantization time.
    """

    exported_program: ExportedProgram
    config: QuantConfig
    report: dict[str, Any] = field(default_factory=dict)

    def module(self) -> torch.nn.Module:
        """A callable module (same inputs as the original program) that checks each call's inputs first: a wrong
        name, rank, static dim, dtype or a token id outside the vocabulary raises :class:`InputError` saying what
        to change. Its ``program`` attribute is the bare ``exported_program.module()``."""
        return CheckedModule(self.exported_program)

    def linears(self) -> list[LinearRecord]:
        """Every linear of the original program with its modality path and scheme (float ones included)."""
        out = []
        for node in self.exported_program.graph.nodes:
            info = meta.get(node)
            if meta.is_linear_output(node):
                fields = ("name", "modality", "scheme", "in_features", "out_features")
                out.append(LinearRecord(*(info[f] for f in fields), op=info.get("op", "linear")))
        return out

    def summary(self) -> str:
        """A plain-text table: linears per modality path and scheme, and weight bytes before/after."""
        rows: dict[tuple[str, str], int] = {}
        for rec in self.linears():
            rows[(rec.modality, rec.scheme)] = rows.get((rec.modality, rec.scheme), 0) + 1
        lines = [f"{'modality':<10}{'scheme':<8}{'linears':>8}"]
        lines += [f"{m:<10}{s:<8}{n:>8}" for (m, s), n in sorted(rows.items())]
        unquantized = self.report.get("float_matmuls") or []
        if unquantized:
            lines.append(
                f"{len(unquantized)} matmul-like nodes with constant weights left float (not aten.linear): "
                + ", ".join(unquantized[:3])
                + (" ..." if len(unquantized) > 3 else "")
            )
        before, after = self.report.get("bytes_before"), self.report.get("bytes_after")
        if before and after:
            lines.append(
                f"weights+buffers: {before / 2**20:.2f} MiB -> {after / 2**20:.2f} MiB ({after / before:.3f}x)"
            )
            rotation = self.report.get("bytes_rotation", 0)
            if rotation:
                lines.append(
                    f"  of which {rotation / 2**20:.2f} MiB are the online rotation blocks (shared per input); "
                    f"without them {(after - rotation) / before:.3f}x"
                )
        return "\n".join(lines)

    def write_report(self, out_dir, float_program, batches, linears=None) -> str:
        """Write the quantization report (:func:`mqcompile.report.write_report`: one HTML file with the PNGs
        embedded, and the PNGs) measured on ``batches`` against ``float_program``, the program this one was
        quantized from; returns the HTML's path. Needs the ``report`` extra (matplotlib)."""
        from .report import write_report

        return write_report(out_dir, float_program, self, batches, linears)

    def save(self, path: str | os.PathLike) -> None:
        """Write a ``.pt2`` archive (torch.export format plus mqcompile's config and report); bit-exact on load."""
        header = {"format": FORMAT_VERSION, "config": self.config.to_dict(), "report": self.report}
        torch.export.save(self.exported_program, path, extra_files={_EXTRA: json.dumps(header)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuantizedProgram:
        """Read a file written by :meth:`save`; raises ProgramFileError for anything else, and refuses (without
        running anything from it) an archive that would make ``torch.export.load`` unpickle more than tensors
        (:func:`mqcompile.archive.check_archive`)."""
        extra = {_EXTRA: ""}
        ep = load_archive(path, extra, what="QuantizedProgram.save")
        if not extra[_EXTRA]:
            raise ProgramFileError(
                f"{path}: a torch.export archive but not a QuantizedProgram (no {_EXTRA}); "
                "load it with torch.export.load, or quantize it with mqcompile.quantize"
            )
        try:
            header = json.loads(extra[_EXTRA])
        except ValueError as exc:
            raise ProgramFileError(
                f"{path}: its {_EXTRA} header is not valid JSON ({exc}); the file is damaged"
            ) from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
            found = header.get("format") if isinstance(header, dict) else header
            raise ProgramFileError(
                f"{path}: written in mqcompile format {found!r}, this version reads {FORMAT_VERSION}"
            )
        return cls(ep, QuantConfig.from_dict(header["config"]), header["report"])
