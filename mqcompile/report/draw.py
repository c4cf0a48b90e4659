"""The report's figures, drawn with matplotlib's object API (``Figure``, no pyplot: nothing global changes, no
display needed). Each figure's axes carry titles that say what they show; tests read them.

Example:
    >>> figures = draw(collect(float_ep, qp, [batch]))  # doctest: +SKIP
    >>> [ax.get_title() for ax in figures["layers"].axes]  # doctest: +SKIP
"""

from __future__ import annotations

import math

import torch

from .collect import ReportData

__all__ = ["draw", "draw_layers"]

_COLORS = {"text": "tab:blue", "vision": "tab:green", "audio": "tab:orange", "fused": "tab:purple", "all": "tab:gray"}


def _figure(rows: int = 1, cols: int = 1, width: float = 10, height: float = 4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _empty(title: str):
    """A figure that says, in its title, what did not run."""
    fig, axes = _figure(height=1)
    axes[0][0].set_title(title)
    axes[0][0].axis("off")
    return fig


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()


def _layers(data: ReportData):
    fused = bool(data.token_layers)
    fig, axes = _figure(2 if fused else 1)
    ax = axes[0][0]
    for path in sorted({p for _, p, _ in data.layers}):
        points = [(i, v) for i, (_, p, v) in enumerate(data.layers) if p == path and math.isfinite(v)]
        if points:
            ax.plot(*zip(*points), "o-", ms=3, lw=0.8, label=path, color=_COLORS.get(path))
    _label(ax, "Per-linear output SQNR along the depth, by modality path", "linear, in program order", "SQNR (dB)")
    ax.grid(alpha=0.3)
    if fused:
        ax = axes[1][0]
        for group, points in sorted(data.token_layers.items()):
            ax.plot(*zip(*points), "o-", ms=3, lw=0.8, label=f"{group} tokens", color=_COLORS.get(group))
        _label(ax, "Fused linears: output SQNR by token modality", "linear, in program order", "SQNR (dB)")
        ax.grid(alpha=0.3)
    return fig


def draw_layers(data: ReportData, label: str | None = None):
    """The per-layer SQNR figure alone (``mqcompile eval`` draws one per row), titled ``label`` when given."""
    fig = _layers(data)
    if label:
        fig.suptitle(label)
    return fig


def _profile(ax, groups: dict[str, torch.Tensor], title: str) -> None:
    for key, rows in groups.items():
        ax.plot(rows.abs().amax(0).numpy(), lw=0.7, label=key, color=_COLORS.get(key))
    ax.set_yscale("log")
    _label(ax, title, "input channel", "max |x|")


def _histogram(ax, groups: dict[str, torch.Tensor], title: str) -> None:
    for key, rows in groups.items():
        ax.hist(rows.flatten().numpy(), bins=120, histtype="step", log=True, label=key, color=_COLORS.get(key))
    _label(ax, title, "value", "count")


def _morphology(name: str, entry: dict):
    fig, axes = _figure(2, 2, width=12, height=3.6)
    fig.suptitle(f"Activation morphology of {name} ({entry['path']} path), by token modality")
    _profile(axes[0][0], entry["before"], "per-channel max |x|, float input")
    _histogram(axes[1][0], entry["before"], "values, float input")
    after = entry["after"] or {}
    _profile(axes[0][1], after, "per-channel max |x|, as quantized (rotated, DABC-shifted)")
    _histogram(axes[1][1], after, "values, as quantized (rotated, DABC-shifted)")
    return fig


def _dabc(data: ReportData):
    if not data.dabc:
        return _empty("DABC: channels moved into the bias per linear (none: the recipe has no DABC shifts)")
    fig, axes = _figure()
    ax = axes[0][0]
    names = list(data.dabc)
    rows = sorted({r for moved in data.dabc.values() for r in moved})
    width = 0.8 / len(rows)
    for j, row in enumerate(rows):
        ax.bar(
            [i + j * width for i in range(len(names))],
            [data.dabc[n].get(row, 0) for n in names],
            width,
            label=row,
            color=_COLORS.get(row),
        )
    _label(
        ax, "DABC: channels moved into the bias per linear, by token modality", "linear, in program order", "channels"
    )
    return fig


def _mdqfo(data: ReportData):
    if not data.mdqfo:
        return _empty("MDQFO: loss before and after per linear (none: the recipe has no MDQFO)")
    fig, axes = _figure()
    ax = axes[0][0]
    losses = list(data.mdqfo.values())
    index = range(len(losses))
    ax.plot(index, [rtn for rtn, _, _ in losses], "o", ms=3, label="round to nearest", color="tab:red")
    ax.plot(index, [after for _, _, after in losses], "o", ms=3, label="after MDQFO", color="tab:blue")
    ax.set_yscale("log")
    _label(ax, "MDQFO: loss before and after per linear", "linear, in program order", "loss on calibration tokens")
    return fig


def _bytes(data: ReportData):
    fig, axes = _figure(width=6)
    ax = axes[0][0]
    before, after, rotation = (data.bytes.get(k, 0) / 2**20 for k in ("bytes_before", "bytes_after", "bytes_rotation"))
    ax.bar(["float", "quantized"], [before, after - rotation], color=["tab:gray", "tab:blue"], label="weights")
    if rotation:
        ax.bar(["quantized"], [rotation], bottom=[after - rotation], color="tab:cyan", label="rotation blocks")
    ax.set_title("Weights and buffers: MiB before and after")
    ax.set_ylabel("MiB")
    ax.legend()
    return fig


def draw(data: ReportData) -> dict:
    """``{file stem: Figure}``: layers, one morphology figure per chosen linear, dabc, mdqfo, bytes."""
    figures = {"layers": _layers(data)}
    for i, (name, entry) in enumerate(data.morphology.items()):
        figures[f"morphology_{i}"] = _morphology(name, entry)
    figures.update(dabc=_dabc(data), mdqfo=_mdqfo(data), bytes=_bytes(data))
    return figures
