"""Reports: a list of blocks rendered to ``report.md`` and a self-contained ``report.html``.

Experiments build blocks from their stored results (never by recomputing), so a
report can be re-rendered from a run directory at any time.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runner import atomic_write_text

__all__ = ["Figure", "Heading", "Paragraph", "Percent", "Table", "fmt_number", "pct", "render_report", "save_figure"]


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


class Percent(float):
    """A number in percent (0–100): report tables show it with one decimal (:func:`fmt_number`).

    A float, so arithmetic and format specs still work; build one with :func:`pct`.
    """

    __slots__ = ()


def pct(fraction: Any) -> Percent:
    """The :class:`Percent` of a stored fraction (NaN for a missing one): ``pct(0.9822)`` is 98.22."""
    return Percent(math.nan if fraction is None else 100.0 * float(fraction))


def fmt_number(v: Any, *, percent: bool = False) -> str:
    """The one number format of report tables (and of numbers in their sentences).

    - missing (``None``, NaN) → "–"; infinities → "∞" / "−∞";
    - percentages (``percent=True``, a :class:`Percent`, or any number in a table column
      whose header has a "%") with one decimal: 98.2, 100.0, 0.5;
    - integers as integers: 1797;
    - other numbers with 3 significant digits, trailing zeros kept so a column reads
      evenly (0.982, 1.00, 12.3, 0.0450); 100 and more as rounded integers (1235), below
      1e-3 or from 1e5 on in scientific notation (4.56e-04, 1.23e+05); exact 0 as "0".

    Anything else (text, bools) is shown as ``str(v)``. Only the display changes: stored
    results keep full precision.

    Examples
    --------
    >>> [fmt_number(v) for v in (1.0, 0.9822, 12.345, 1234.5, 3, None, 2e-5)]
    ['1.00', '0.982', '12.3', '1234', '3', '–', '2.00e-05']
    >>> fmt_number(9.495, percent=True), fmt_number(pct(1.0))
    ('9.5', '100.0')
    """
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if percent or isinstance(v, Percent):
        return f"{v:.1f}"
    if isinstance(v, int):
        return str(v)
    if v == 0:
        return "0"
    mag = abs(v)
    if mag < 1e-3 or mag >= 1e5:
        return f"{v:.2e}"
    if round(mag, 3 - 1 - math.floor(math.log10(mag))) >= 100:  # 99.96 rounds to 100: no decimals
        return f"{v:.0f}"
    decimals = 3 - 1 - math.floor(math.log10(mag))
    text = f"{v:.{decimals}f}"
    if abs(float(text)) >= 10 ** (3 - decimals):  # 9.996 -> "10.00": one digit too many
        text = f"{v:.{max(decimals - 1, 0)}f}"
    return text


def _cell(v: Any, percent: bool = False) -> str:
    """A markdown table cell: formatted, with pipes escaped so they do not split the row."""
    return fmt_number(v, percent=percent).replace("|", "\\|")


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


#: a cell built as text that still reads as a number: "98.2", "80.9 [73.9, 87.6]", "16.1 (0.0)", "3/4"
_NUMBER_TEXT = re.compile(r"[-−+]?\d[\d.,/]*(e[-+]?\d+)?%?( [(\[/].*)?")
_EMPTY_TEXT = frozenset({"", "–", "n/a", "error"})


def _numberlike(v: Any) -> bool:
    if v is None or _numeric(v):
        return True
    return isinstance(v, str) and (v.strip() in _EMPTY_TEXT or bool(_NUMBER_TEXT.fullmatch(v.strip())))


def _align(table: Table) -> str:
    """The separator row: numeric columns right-aligned, text columns left-aligned.

    A column is numeric when every cell is a number, missing, or text that reads as a
    number (a percentage with its interval, a count "3/4"), and at least one is not empty.
    """
    cols = []
    for j in range(len(table.columns)):
        values = [row[j] for row in table.rows if j < len(row)]
        filled = [v for v in values if not (v is None or (isinstance(v, str) and v.strip() in _EMPTY_TEXT))]
        numeric = bool(filled) and all(_numberlike(v) for v in values)
        cols.append("---:" if numeric else ":---")
    return "|" + "|".join(cols) + "|"


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
            out.append(_align(b))
            percent = ["%" in str(c) for c in b.columns]
            for row in b.rows:
                out.append("| " + " | ".join(_cell(v, j < len(percent) and percent[j])
                                             for j, v in enumerate(row)) + " |")
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
.table-wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f4f6}
img{max-width:100%;border:1px solid #eee}em{color:#555}
code{background:#f3f4f6;padding:0 .2em}
nav.toc{background:#f8f9fa;border:1px solid #e5e7eb;padding:.4em 1em;margin:1em 0}
nav.toc ul{margin:.2em 0;padding-left:1.2em}
details.provenance{background:#f8f9fa;border:1px solid #e5e7eb;padding:.4em 1em;margin:1em 0}
details.provenance td{text-align:left;font-family:ui-monospace,monospace;font-size:.88em}
"""


def _slug(text: str, taken: dict[str, int]) -> str:
    """A GitHub-style anchor: lower case, punctuation dropped, spaces to hyphens, made unique."""
    import re

    base = re.sub(r"[^\w\- ]", "", text.strip().lower(), flags=re.UNICODE).replace(" ", "-") or "section"
    n = taken.get(base, 0)
    taken[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def _data_uri(src: str, run_dir: Path) -> str:
    """A figure of the run directory as a data: URI (the HTML report is self-contained)."""
    path = (run_dir / src).resolve()
    if not path.is_relative_to(run_dir.resolve()) or not path.is_file():
        raise ValueError(f"report figure {src!r} is not a file inside {run_dir}; figures must be saved "
                         "under the run directory (results.figures_dir).")
    kind = "svg+xml" if path.suffix.lower() == ".svg" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _provenance_table(provenance: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in provenance.items())
    return ("<details class='provenance'><summary>Provenance (versions, git commit, device, seed, "
            f"config hash)</summary><div class='table-wrap'><table>{rows}</table></div></details>")


def _html(markdown: str, title: str, run_dir: Path, provenance: Mapping[str, Any] | None = None) -> str:
    """The Markdown report as one self-contained HTML page: rendered by markdown-it-py (raw HTML
    escaped), headings anchored, a table of contents, tables that scroll on narrow screens and
    figures embedded."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    taken: dict[str, int] = {}
    toc: list[tuple[int, str, str]] = []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            text = tokens[i + 1].content
            anchor = _slug(text, taken)
            tok.attrSet("id", anchor)
            if tok.tag in ("h2", "h3"):
                toc.append((int(tok.tag[1]), text, anchor))
        elif tok.type == "inline":
            for child in tok.children or []:
                if child.type == "image":
                    child.attrSet("src", _data_uri(str(child.attrGet("src")), run_dir))
    body = md.renderer.render(tokens, md.options, {})
    body = body.replace("<table>", "<div class='table-wrap'><table>").replace("</table>", "</table></div>")
    nav = ""
    if len(toc) > 1:
        items = "".join(
            f"<li style='margin-left:{(lvl - 2) * 1.2}em'><a href='#{a}'>{html.escape(t)}</a></li>"
            for lvl, t, a in toc)
        nav = f"<nav class='toc'><strong>Contents</strong><ul>{items}</ul></nav>"
    head, sep, rest = body.partition("</h1>")  # the table of contents and provenance go under the title
    if sep:
        body = head + sep + nav + (_provenance_table(provenance) if provenance else "") + rest
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n{body}</body></html>\n")


def render_report(blocks: Sequence[Block], run_dir: Path, *, title: str,
                  provenance: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` (figures embedded).

    ``provenance`` (what the results were computed with: versions, git commit, device, seed,
    config hash) is shown as a panel under the title of the HTML page.
    """
    blocks = [Heading(title, 1), *blocks]
    md_path = run_dir / "report.md"
    html_path = run_dir / "report.html"
    text = _markdown(blocks, run_dir)
    atomic_write_text(md_path, text)
    atomic_write_text(html_path, _html(text, title, run_dir, provenance))
    return md_path, html_path
