"""Reports: a list of blocks rendered to ``report.md`` and a self-contained ``report.html``.

Experiments build blocks from their stored results (never by recomputing), so a
report can be re-rendered from a run directory at any time.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runner import atomic_write_text

__all__ = ["Figure", "Heading", "Paragraph", "Table", "render_report", "save_figure"]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str = ""
    alt: str = field(default="")


Block = Heading | Paragraph | Table | Figure


def save_figure(fig: Any, path: Path, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def _cell(v: Any) -> str:
    """A markdown table cell: formatted, with pipes escaped so they do not split the row."""
    return _fmt(v).replace("|", "\\|")


def _markdown(blocks: Sequence[Block], run_dir: Path) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Table):
            if b.caption:
                out.append(f"*{b.caption}*")
                out.append("")
            out.append("| " + " | ".join(_cell(c) for c in b.columns) + " |")
            out.append("|" + "---|" * len(b.columns))
            for row in b.rows:
                out.append("| " + " | ".join(_cell(v) for v in row) + " |")
        elif isinstance(b, Figure):
            rel = Path(b.path).resolve().relative_to(run_dir.resolve())
            out.append(f"![{b.alt or b.caption}]({rel.as_posix()})")
            if b.caption:
                out.append("")
                out.append(f"*{b.caption}*")
        out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:2em auto;
padding:0 1em;color:#1b1f23;line-height:1.5}
h1{border-bottom:2px solid #ddd;padding-bottom:.2em}h2{border-bottom:1px solid #eee;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption,.caption{color:#555;font-size:.92em}
code{background:#f3f4f6;padding:0 .2em}
"""


def _inline(text: str) -> str:
    """Minimal inline markdown for paragraphs: escape, then `code` and **bold**."""
    import re

    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return t.replace("\n", "<br>")


def _html(blocks: Sequence[Block], title: str) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            lvl = min(max(b.level, 1), 6)
            parts.append(f"<h{lvl}>{html.escape(b.text)}</h{lvl}>")
        elif isinstance(b, Paragraph):
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            parts.append("<table>")
            if b.caption:
                parts.append(f"<caption class='caption'>{html.escape(b.caption)}</caption>")
            parts.append("<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in b.columns) + "</tr>")
            for row in b.rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>")
            parts.append("</table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            alt = html.escape(b.alt or b.caption)
            parts.append(f"<figure><img alt='{alt}' src='data:image/png;base64,{data}'>")
            if b.caption:
                parts.append(f"<figcaption>{html.escape(b.caption)}</figcaption>")
            parts.append("</figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_report(blocks: Sequence[Block], run_dir: Path, *, title: str) -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` (figures embedded)."""
    blocks = [Heading(title, 1), *blocks]
    md_path = run_dir / "report.md"
    html_path = run_dir / "report.html"
    atomic_write_text(md_path, _markdown(blocks, run_dir))
    atomic_write_text(html_path, _html(blocks, title))
    return md_path, html_path
