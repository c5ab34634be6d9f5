"""One offline HTML report: headings, paragraphs, image grids, metric tables and matplotlib figures.

Everything lands in ONE file: images are embedded as base64 PNG, the stylesheet is inline, there is no
JavaScript and no external resource, so the file opens anywhere (a browser with no network, an e-mail
attachment, a CI artifact). Writes are atomic (temp file + rename).

Example::

    r = HtmlReport(title="Crack counterfactuals")
    r.heading("Samples")
    r.grid([[src, mask, out, diff]], col_titles=["source", "mask", "result", "|diff|"], row_titles=["#0"])
    r.table([{"metric": "FD_compact", "value": 12.3}])
    r.save("out/report.html")

Images for :meth:`HtmlReport.grid` may be ``torch.Tensor`` (C,H,W) / (1,C,H,W) / (H,W) in [0,1], PIL images,
or numpy arrays (H,W), (H,W,C) (uint8 0..255 or float 0..1). One-channel images (masks) are shown gray.
Values outside [0,1] are clipped for display only (a report is a view, not a computation).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from ..errors import input_error
from ..io.images import pil_to_array, to_uint8
from ..io.manifest import atomic_write_text

ImageCell = Union[torch.Tensor, Image.Image, np.ndarray, None]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1400px;color:#222;
line-height:1.45;padding:0 16px}
h1{border-bottom:2px solid #444;padding-bottom:6px}h2{margin-top:32px;border-bottom:1px solid #ccc}
p.meta{color:#777;font-size:90%}
table{border-collapse:collapse;margin:10px 0 18px 0;font-size:92%}
th,td{border:1px solid #ccc;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums;font-family:Menlo,Consolas,monospace}
tr:nth-child(even) td{background:#fafafa}
table.grid td,table.grid th{border:none;padding:2px;text-align:center;background:none}
table.grid th{font-weight:600;font-size:85%;background:none}
table.grid th.row{text-align:right;padding-right:6px;max-width:160px;word-wrap:break-word}
img.cell{image-rendering:pixelated;image-rendering:crisp-edges;border:1px solid #ddd;display:block}
figure{margin:10px 0 20px 0}figcaption{color:#555;font-size:90%}
.empty{display:block;background:#eee;border:1px dashed #bbb}
"""


def _to_hwc_uint8(image: ImageCell, where: str) -> np.ndarray:
    """Any supported image → (H,W) or (H,W,3) uint8 (the conversions themselves are io.images')."""
    if isinstance(image, Image.Image):
        if image.mode in ("L", "RGB"):
            return np.asarray(image).astype(np.uint8, copy=False)
        gray = image.mode in ("1", "P", "LA", "I", "I;16", "F")
        return _channels(to_uint8(pil_to_array(image, mode="L" if gray else "RGB", alpha="drop", name=where)), where)
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu()
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim not in (2, 3):
            raise input_error(where, tuple(image.shape), "a tensor of shape (C,H,W), (1,C,H,W) or (H,W)")
        arr = arr if arr.dtype == torch.uint8 else arr.float()
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # (C,H,W) numpy
        if arr.ndim not in (2, 3):
            raise input_error(where, arr.shape, "an array of shape (H,W) or (H,W,C)")
        arr = arr if arr.dtype == np.uint8 else np.asarray(arr, dtype=np.float32)
    else:
        raise input_error(where, type(image).__name__, "a torch.Tensor, PIL.Image or numpy array")
    if arr.dtype not in (np.uint8, torch.uint8) and not bool(np.isfinite(np.asarray(arr)).all()):
        raise input_error(where, "NaN/inf values", "finite values in [0,1]")
    return _channels(to_uint8(arr), where)


def _channels(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 3:
        c = arr.shape[2]
        if c == 1:
            return arr[..., 0]
        if c == 4:
            return arr[..., :3]
        if c != 3:
            raise input_error(where, arr.shape, "1, 3 or 4 channels")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise input_error(where, arr.shape, "a non-empty image")
    return np.ascontiguousarray(arr)


def _png_b64(arr_or_pil: np.ndarray | Image.Image) -> str:
    pil = arr_or_pil if isinstance(arr_or_pil, Image.Image) else Image.fromarray(arr_or_pil)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fit(arr: np.ndarray, cell_px: int) -> Image.Image:
    """Scale so the longer side is ``cell_px``: nearest-neighbour when enlarging, box filter when shrinking."""
    pil = Image.fromarray(arr)
    w, h = pil.size
    scale = cell_px / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) == (w, h):
        return pil
    return pil.resize((nw, nh), Image.NEAREST if scale > 1 else Image.BOX)


def _fmt(value: Any, floatfmt: str) -> tuple[str, bool]:
    """Cell text and whether it is numeric (right-aligned)."""
    if value is None:
        return "–", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan", True
        return format(v, floatfmt), True
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _fmt(value.item(), floatfmt)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str), False
    return str(value), False


class HtmlReport:
    """Build a single self-contained HTML page piece by piece, then :meth:`save` it."""

    def __init__(self, title: str = "Counterfactory report"):
        self.title = str(title)
        self._parts: list[str] = []

    # ---- text ---------------------------------------------------------------------------------------
    def heading(self, text: str, level: int = 2) -> HtmlReport:
        if not isinstance(level, int) or not 1 <= level <= 6:
            raise input_error("level", level, "an integer 1..6")
        self._parts.append(f"<h{level}>{html.escape(str(text))}</h{level}>")
        return self

    def paragraph(self, text: str) -> HtmlReport:
        """A paragraph of plain text (escaped; blank lines start a new paragraph)."""
        for para in str(text).split("\n\n"):
            self._parts.append(f"<p>{html.escape(para).replace(chr(10), '<br>')}</p>")
        return self

    def preformatted(self, text: str) -> HtmlReport:
        """Monospaced text as is (commands, configs)."""
        self._parts.append(f"<pre>{html.escape(str(text))}</pre>")
        return self

    # ---- images -------------------------------------------------------------------------------------
    def grid(
        self,
        rows: Sequence[Sequence[ImageCell]],
        col_titles: Sequence[str],
        row_titles: Sequence[str] | None = None,
        cell_px: int = 128,
    ) -> HtmlReport:
        """A table of images: one row per example, one column per view (e.g. source | mask | result | diff).

        Every row has ``len(col_titles)`` cells; a ``None`` cell is drawn empty. Each image is scaled so its
        longer side is ``cell_px`` (nearest-neighbour when enlarging, so small defects stay crisp).
        """
        if not isinstance(cell_px, int) or cell_px < 8 or cell_px > 2048:
            raise input_error("cell_px", cell_px, "an integer in 8..2048")
        ncol = len(col_titles)
        if row_titles is not None and len(row_titles) != len(rows):
            raise input_error("row_titles", f"{len(row_titles)} titles", f"one title per row ({len(rows)} rows)")
        out = ['<table class="grid"><tr>']
        if row_titles is not None:
            out.append("<th></th>")
        out += [f"<th>{html.escape(str(t))}</th>" for t in col_titles]
        out.append("</tr>")
        for i, row in enumerate(rows):
            if len(row) != ncol:
                raise input_error(f"rows[{i}]", f"{len(row)} cells", f"{ncol} cells, one per column title")
            out.append("<tr>")
            if row_titles is not None:
                out.append(f'<th class="row">{html.escape(str(row_titles[i]))}</th>')
            for j, cell in enumerate(row):
                if cell is None:
                    out.append(f'<td><span class="empty" style="width:{cell_px}px;height:{cell_px}px"></span></td>')
                    continue
                pil = _fit(_to_hwc_uint8(cell, f"rows[{i}][{j}]"), cell_px)
                out.append(
                    f'<td><img class="cell" width="{pil.width}" height="{pil.height}" '
                    f'alt="{html.escape(str(col_titles[j]))}" src="data:image/png;base64,{_png_b64(pil)}"></td>'
                )
            out.append("</tr>")
        out.append("</table>")
        self._parts.append("".join(out))
        return self

    def image(self, image: ImageCell, caption: str | None = None, width_px: int | None = None) -> HtmlReport:
        """One image at its own size (or ``width_px`` wide, nearest-neighbour)."""
        arr = _to_hwc_uint8(image, "image")
        pil = Image.fromarray(arr)
        if width_px is not None:
            pil = _fit(arr, int(width_px))
        self._parts.append(self._figure_html(_png_b64(pil), pil.width, pil.height, caption))
        return self

    def figure(self, fig, caption: str | None = None, dpi: int = 100, close: bool = True) -> HtmlReport:
        """Embed a matplotlib Figure as a PNG. The figure is closed afterwards unless ``close=False``."""
        if not hasattr(fig, "savefig"):
            raise input_error("fig", type(fig).__name__, "a matplotlib Figure")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        if close:
            try:
                import matplotlib.pyplot as plt

                plt.close(fig)
            except Exception:  # noqa: BLE001 - a Figure built without pyplot has nothing to close
                pass
        pil = Image.open(io.BytesIO(buf.getvalue()))
        b64 = base64.b64encode(buf.getvalue()).decode("ascii")
        self._parts.append(self._figure_html(b64, pil.width, pil.height, caption))
        return self

    @staticmethod
    def _figure_html(b64: str, w: int, h: int, caption: str | None) -> str:
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img width="{w}" height="{h}" src="data:image/png;base64,{b64}" alt="figure">{cap}</figure>'

    # ---- tables -------------------------------------------------------------------------------------
    def table(self, rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".4g") -> HtmlReport:
        """A table with one row per dict. ``columns`` picks and orders the keys (default: every key, in order
        of first appearance); a missing key shows as "–". Floats use ``floatfmt``."""
        if columns is None:
            seen: dict[str, None] = {}
            for r in rows:
                for k in r:
                    seen.setdefault(k, None)
            columns = list(seen)
        try:
            format(1.5, floatfmt)
        except (ValueError, TypeError):
            raise input_error("floatfmt", floatfmt, "a Python float format spec such as '.4g' or '.3f'") from None
        out = ["<table><tr>", *(f"<th>{html.escape(str(c))}</th>" for c in columns), "</tr>"]
        for r in rows:
            out.append("<tr>")
            for c in columns:
                text, numeric = _fmt(r.get(c), floatfmt)
                cls = ' class="num"' if numeric else ""
                out.append(f"<td{cls}>{html.escape(text)}</td>")
            out.append("</tr>")
        out.append("</table>")
        self._parts.append("".join(out))
        return self

    # ---- output -------------------------------------------------------------------------------------
    def to_html(self) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        from .. import __version__

        head = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>"
            f'<p class="meta">counterfactory {html.escape(__version__)} · {stamp}</p>'
        )
        return head + "\n".join(self._parts) + "\n</body></html>\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` atomically; returns the path."""
        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise input_error("path", str(path), "a file name ending in .html")
        atomic_write_text(path, self.to_html())
        return path
