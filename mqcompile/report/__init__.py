"""The quantization report: where the error sits, by modality and by layer, as one self-contained HTML file (PNGs
embedded) plus the PNGs. Needs the ``report`` extra (matplotlib).

Example:
    >>> write_report("report/", float_ep, qp, [batch])  # doctest: +SKIP
    'report/report.html'
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence

from .collect import ReportData, collect
from .draw import draw, draw_layers

__all__ = ["write_report", "collect", "draw", "draw_layers", "ReportData"]

_SECTIONS = {
    "layers": "Output SQNR along the depth",
    "morphology": "Activation morphology of the worst linear of each path",
    "dabc": "Channels DABC moved",
    "mdqfo": "MDQFO's loss per linear",
    "bytes": "Bytes",
}


def write_report(out_dir, float_ep, qp, batches: Sequence, linears: Sequence[str] | None = None) -> str:
    """Measure (:func:`collect`), draw (:func:`draw`) and write ``out_dir/report.html`` and one PNG per figure;
    returns the HTML's path."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the report draws with matplotlib: pip install 'mqcompile[report]'") from None
    os.makedirs(out_dir, exist_ok=True)
    data = collect(float_ep, qp, batches, linears)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mqcompile report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}img{max-width:100%}</style></head><body>",
        "<h1>mqcompile quantization report</h1>",
        f"<p>recipe <code>{html.escape(data.recipe)}</code>, measured on {len(batches)} batches</p>",
        f"<pre>{html.escape(data.summary)}</pre>",
    ]
    worst = sorted((v, n, p) for n, p, v in data.layers if v != float("inf"))[:10]
    if worst:
        parts.append("<h2>Worst linears</h2><table><tr><th>linear</th><th>path</th><th>SQNR dB</th></tr>")
        parts += [f"<tr><td>{html.escape(n)}</td><td>{p}</td><td>{v:.2f}</td></tr>" for v, n, p in worst]
        parts.append("</table>")
    shown = set()
    for stem, fig in draw(data).items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        with open(os.path.join(out_dir, f"{stem}.png"), "wb") as f:
            f.write(buffer.getvalue())
        section = stem.split("_")[0]
        if section not in shown:
            parts.append(f"<h2>{_SECTIONS[section]}</h2>")
            shown.add(section)
        encoded = base64.b64encode(buffer.getvalue()).decode()
        parts.append(f"<img alt='{stem}' src='data:image/png;base64,{encoded}'>")
    parts.append("</body></html>")
    path = os.path.join(out_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
