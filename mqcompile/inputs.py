"""Inputs checked against a program before it runs: names, ranks, static dims, dtypes, token ids within the
vocabulary, and (for calibration) finiteness.

``quantize`` checks calibration batches and example inputs with it, and :meth:`QuantizedProgram.module` checks
every call, so that a wrong input is one error naming the input and what to do, not torch's guard
``AssertionError`` or an ``IndexError`` fourteen frames deep in an embedding.

Example:
    >>> InputSpec(ep).check({"input_ids": ids}, where="calibration batch 0")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.fx as fx
from torch.export import ExportedProgram

from .errors import CalibrationError, InputError, NonFiniteError
from .graph.export import user_input_nodes

__all__ = ["InputSpec", "CheckedModule", "as_batch", "call_form"]


def as_batch(batch) -> tuple[tuple, dict]:
    """``(args, kwargs)`` from a kwargs dict, an ``(args, kwargs)`` pair, a tuple of positional args or one tensor."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], Mapping):
        return tuple(batch[0]), dict(batch[1])
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


def _embedding_rows(node: fx.Node) -> int | None:
    """The fewest rows of any embedding table the integer input ``node`` indexes (directly or through views)."""
    rows, todo = None, [node]
    while todo:
        current = todo.pop()
        for user in current.users:
            if user.target is torch.ops.aten.embedding.default and user.args[1] is current:
                table = user.args[0].meta.get("val") if isinstance(user.args[0], fx.Node) else None
                if isinstance(table, torch.Tensor) and isinstance(table.shape[0], int):
                    rows = table.shape[0] if rows is None else min(rows, table.shape[0])
            elif isinstance(user.target, torch._ops.OpOverload) and user.target.is_view and user.args[0] is current:
                todo.append(user)
    return rows


def _children(spec) -> list:
    # torch 2.13 deprecates ``children_specs`` for ``children()``; an older torch may have only the former
    return list(spec.children()) if hasattr(spec, "children") else list(spec.children_specs)


def call_form(ep: ExportedProgram) -> tuple[int, list[str]] | None:
    """(number of positional inputs, keyword names) as exported, when every input is one tensor or value."""
    spec = ep.call_spec.in_spec
    if spec is None or spec.num_children != 2:
        return None
    args, kwargs = _children(spec)
    if not all(c.is_leaf() for c in [*_children(args), *_children(kwargs)]):
        return None
    return args.num_children, list(kwargs.context)


class InputSpec:
    """What a program's user inputs must be, read once from the graph."""

    def __init__(self, ep: ExportedProgram):
        self.inputs = [(n.name, n.meta.get("val")) for n in user_input_nodes(ep).values()]
        self.call = call_form(ep)
        self.vocab: dict[str, int] = {}  # integer input -> rows of the smallest embedding it indexes
        for node in user_input_nodes(ep).values():
            val = node.meta.get("val")
            rows = _embedding_rows(node) if isinstance(val, torch.Tensor) and not val.is_floating_point() else None
            if rows is not None:
                self.vocab[node.name] = rows

    def check(
        self,
        batch,
        where: str = "input",
        error: type[InputError] = CalibrationError,
        finite: bool = True,
        strict: bool = False,
    ):
        """``(args, kwargs)`` of ``batch`` once it matches; raises ``error`` naming the input otherwise, and
        NonFiniteError for NaN/Inf when ``finite`` (calibration must be clean; inference lets NaN through, as the
        float model would). ``strict``: positional and keyword inputs exactly as exported (a module call needs
        that; calibration may name positional inputs)."""
        args, kwargs = as_batch(batch)
        if strict and self.call is not None and (len(args), sorted(kwargs)) != (self.call[0], sorted(self.call[1])):
            names = [name for name, _ in self.inputs]
            raise error(
                f"{where}: got {len(args)} positional inputs and keywords {sorted(kwargs)}; the program was exported "
                f"with {self.call[0]} positional ({names[: self.call[0]]}) and keywords {self.call[1]}: call it the "
                "same way"
            )
        positional, named = self.inputs[: len(args)], self.inputs[len(args) :]
        if len(args) > len(self.inputs) or sorted(kwargs) != sorted(name for name, _ in named):
            raise error(
                f"{where}: got inputs {sorted(kwargs)} (+{len(args)} positional), the program takes "
                f"{[name for name, _ in self.inputs]}; pass exactly those (by keyword or in that order)"
            )
        for (name, want), value in [*zip(positional, args), *((item, kwargs[item[0]]) for item in named)]:
            if isinstance(want, torch.Tensor):
                self._check_one(name, want, value, where, error, finite)
        return args, kwargs

    def _check_one(self, name, want, value, where, error, finite) -> None:
        if not isinstance(value, torch.Tensor):
            raise error(f"{where}: input {name!r} must be a tensor, got {type(value).__name__}")
        bad_dims = [
            i for i, s in enumerate(want.shape) if isinstance(s, int) and i < value.dim() and value.shape[i] != s
        ]
        if value.dim() != want.dim() or bad_dims:
            raise error(
                f"{where}: input {name!r} has shape {tuple(value.shape)}, the program expects {tuple(want.shape)} "
                "(symbolic dims may vary); make it the way the exported example was made, or export with "
                "dynamic_shapes for the dims that vary"
            )
        if value.dtype != want.dtype:
            raise error(f"{where}: input {name!r} has dtype {value.dtype}, expected {want.dtype}")
        rows = self.vocab.get(name)
        if rows is not None and value.numel():
            low, high = int(value.min()), int(value.max())
            if low < 0 or high >= rows:
                raise error(
                    f"{where}: input {name!r} holds token ids {low}..{high}, but the embedding it indexes has {rows} "
                    f"rows (ids 0..{rows - 1}); tokenize with the model's own tokenizer"
                )
        if finite and value.is_floating_point() and not torch.isfinite(value).all():
            raise NonFiniteError(f"{where}: input {name!r} contains NaN/Inf; clean the data before quantizing")


class CheckedModule(torch.nn.Module):
    """A program's ``ExportedProgram.module()`` that checks each call's inputs first (:class:`InputSpec`).

    ``program`` is the unflattened module itself (its graph, parameters and buffers); deployment
    (``mqcompile.compile``) uses that, without the per-call check.
    """

    def __init__(self, ep: ExportedProgram, where: str = "QuantizedProgram.module()"):
        super().__init__()
        self.program = ep.module()
        self._spec = InputSpec(ep)
        self._where = where
        self._ranges = {str(sym): (int(r.lower), r.upper) for sym, r in ep.range_constraints.items()}

    def forward(self, *args, **kwargs):
        where = f"{self._where} input"
        self._spec.check((args, kwargs), where=where, error=InputError, finite=False, strict=True)
        try:
            return self.program(*args, **kwargs)
        except AssertionError as exc:
            # torch's own check of the dynamic dims' ranges (the rule is torch's: a dim exported >= 2 takes 1)
            if not str(exc).startswith("Guard failed"):
                raise
            raise InputError(
                f"{where}: {exc} (the program's dynamic dims and their ranges: {self._ranges}); export again with "
                "a torch.export.Dim range that covers this input"
            ) from None
