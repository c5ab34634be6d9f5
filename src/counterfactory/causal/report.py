"""A small offline HTML report for the CFT comparison: tables, grids and plots as embedded base64 PNG.

Kept inside causal/ on purpose (a shared report module may replace it later): one function per block, each
returning an HTML string; :func:`write_html` joins them into one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from ..io.manifest import atomic_write_text

_CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.best{font-weight:bold}
img{image-rendering:pixelated}.grid{display:inline-block;margin-right:1.5em;vertical-align:top}.grid td{padding:1px}figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
pre{background:#f6f6f6;padding:8px;overflow-x:auto}"""


def _fig_to_img(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _png_cell(im: np.ndarray, signed: bool, zoom: int = 3) -> str:
    """(H,W) array → an <img> of a PNG; signed maps are drawn red (+) / blue (−) on white."""
    from PIL import Image

    if signed:
        v = np.clip(im, -1, 1)
        pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
        rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1).clip(0, 1)
        arr = (rgb * 255).round().astype(np.uint8)
    else:
        arr = (np.clip(im, 0, 1) * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr).resize((arr.shape[1] * zoom, arr.shape[0] * zoom), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def grid_block(title: str, rows: list[list[np.ndarray]], col_titles: list[str], caption: str = "") -> str:
    """An image grid as an HTML table of small PNGs: ``rows[r][c]`` is (H,W) in [0,1]; a column whose title
    contains "Δ" holds a signed difference in [-1,1]."""
    head = "".join(f"<th>{html.escape(t)}</th>" for t in col_titles)
    body = "".join(
        "<tr>" + "".join(f"<td>{_png_cell(im, 'Δ' in col_titles[c])}</td>" for c, im in enumerate(row)) + "</tr>"
        for row in rows
    )
    cap = f"<p>{html.escape(caption)}</p>" if caption else ""
    return f'<div class="grid"><h4>{html.escape(title)}</h4><table><tr>{head}</tr>{body}</table>{cap}</div>'


def line_plot_block(title: str, xs: list[float], series: dict[str, tuple[list[float], list[float]]], ylabel: str) -> str:
    """Mean ± std lines, one per series name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, (mean, std) in series.items():
        m, s = np.asarray(mean), np.asarray(std)
        ax.plot(xs, m, marker="o", label=name)
        ax.fill_between(xs, m - s, m + s, alpha=0.2)
    ax.set_xlabel("intervention: area x scale")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return f"<figure><h4>{html.escape(title)}</h4>{_fig_to_img(fig, title)}</figure>"


def table_block(title: str, header: list[str], rows: list[list[str]], note: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    p = f"<p>{html.escape(note)}</p>" if note else ""
    return f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>{p}"


def text_block(text: str, pre: bool = False) -> str:
    return f"<pre>{html.escape(text)}</pre>" if pre else f"<p>{html.escape(text)}</p>"


def write_html(path: str | Path, title: str, blocks: list[str]) -> Path:
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(blocks)}</body></html>\n"
    )
    return atomic_write_text(path, doc)
