"""The reproduced claims as data, and the summary page generated from them.

``docs/results/claims.toml`` holds one entry per claim of a paper that the project has
tried to reproduce: the paper's number, ours (with a 95% interval where one was
measured), a verdict and the ``fisherscope reproduce`` command that produced it, plus a
link to the per-paper page that explains the protocol and every deviation.
``fisherscope results`` renders ``docs/RESULTS.md`` from it; ``fisherscope results
--check`` fails when the committed page differs from what the claims file gives.

File layout (TOML)::

    [pages.zhao]                         # one table per page under docs/results/
    file = "zhao.md"
    title = "Zhao et al. 2019 (AAAI): OSSA and Fisher-spectrum detection"

    [[claim]]
    page = "zhao"                        # a key of [pages]
    paper = "Zhao et al. 2019"
    claim = "OSSA fooling rate, least L2 budget <= 6 (Table 2)"
    paper_value = "95.68%"
    ours = "96.84%"
    interval = ""                        # "[85.0, 90.5]" where the page gives one
    verdict = "reproduced"               # or "gap explained", "not reproduced"
    config = "zhao-table2"               # fisherscope reproduce <config> [args]
    args = ""                            # optional extra arguments of the command
    anchor = "table-2-least-perturbation"  # a heading of the page (its GitHub slug)
    oblivious = false                    # optional: a detector/defense number measured
                                         # against attacks that ignore it only
    adaptive = ""                        # optional (oblivious claims): the same method's
                                         # number against an attacker who knows it
    adaptive_config = ""                 # the config that measured ``adaptive``
    note = ""                            # optional, shown under the table
"""

from __future__ import annotations

import os
import re
import tomllib
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "VERDICTS",
    "Claim",
    "ClaimsFile",
    "Page",
    "check_results",
    "heading_anchors",
    "load_claims",
    "render_results",
]

VERDICTS = ("reproduced", "gap explained", "not reproduced")
DEFAULT_CLAIMS = Path("docs/results/claims.toml")
DEFAULT_OUT = Path("docs/RESULTS.md")

_CLAIM_FIELDS = {
    "page": True,
    "paper": True,
    "claim": True,
    "paper_value": True,
    "ours": True,
    "verdict": True,
    "config": True,
    "anchor": True,
    "interval": False,
    "args": False,
    "oblivious": False,
    "adaptive": False,
    "adaptive_config": False,
    "note": False,
}
_INTERVAL = re.compile(r"^\[\s*-?[0-9.]+(e-?[0-9]+)?\s*,\s*-?[0-9.]+(e-?[0-9]+)?\s*\]$")


@dataclass(frozen=True)
class Page:
    """One per-paper page under ``docs/results/``.

    Attributes
    ----------
    key : str
        The name claims refer to (``page = "zhao"``).
    file : str
        File name relative to the claims file's folder.
    title : str
        Link text on the summary page.
    """

    key: str
    file: str
    title: str


@dataclass(frozen=True)
class Claim:
    """One reproduced (or not) claim; see the module docstring for the fields."""

    page: str
    paper: str
    claim: str
    paper_value: str
    ours: str
    verdict: str
    config: str
    anchor: str
    interval: str = ""
    args: str = ""
    oblivious: bool = False
    adaptive: str = ""
    adaptive_config: str = ""
    note: str = ""

    @property
    def command(self) -> str:
        """The command line that produced ``ours``."""
        return " ".join(p for p in ("fisherscope reproduce", self.config, self.args) if p)


@dataclass(frozen=True)
class ClaimsFile:
    """A parsed and validated claims file.

    Attributes
    ----------
    path : Path
    pages : dict
        key -> :class:`Page`, in file order.
    claims : tuple of Claim
        In file order.
    """

    path: Path
    pages: dict[str, Page]
    claims: tuple[Claim, ...]


def _slug(text: str, seen: Counter[str]) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", text)
    out = []
    for ch in text.strip().lower():
        if ch in " -_" or unicodedata.category(ch)[0] in "LN":
            out.append("-" if ch == " " else ch)
    slug = "".join(out)
    n = seen[slug]
    seen[slug] += 1
    return slug if n == 0 else f"{slug}-{n}"


def heading_anchors(markdown: str) -> list[str]:
    """The anchors GitHub gives the ATX headings (``#``..``######``) of a Markdown text.

    Headings inside fenced code blocks are ignored; repeated headings get ``-1``,
    ``-2``, ... as on GitHub.

    Examples
    --------
    >>> heading_anchors("# Zhao et al.\\n## Table 2 — least perturbation\\n## Table 2 — least perturbation")
    ['zhao-et-al', 'table-2--least-perturbation', 'table-2--least-perturbation-1']
    """
    seen: Counter[str] = Counter()
    anchors, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not fenced:
            anchors.append(_slug(m.group(1), seen))
    return anchors


def _fail(path: Path, where: str, msg: str) -> ValueError:
    return ValueError(f"{path}: {where}: {msg}")


def _claim(path: Path, i: int, raw: Any, pages: dict[str, Page]) -> Claim:
    where = f"claim {i + 1}"
    if not isinstance(raw, dict):
        raise _fail(path, where, f"expected a [[claim]] table; got {type(raw).__name__}.")
    if isinstance(raw.get("claim"), str):
        where = f"claim {i + 1} ({raw['claim']!r})"
    missing = [k for k, required in _CLAIM_FIELDS.items() if required and k not in raw]
    if missing:
        raise _fail(path, where, f"missing field(s) {', '.join(missing)}; every claim needs "
                    f"{', '.join(k for k, r in _CLAIM_FIELDS.items() if r)}.")
    unknown = sorted(set(raw) - set(_CLAIM_FIELDS))
    if unknown:
        raise _fail(path, where, f"unknown field(s) {', '.join(unknown)}; allowed: "
                    f"{', '.join(_CLAIM_FIELDS)}.")
    for key, value in raw.items():
        expected = bool if key == "oblivious" else str
        if not isinstance(value, expected):
            raise _fail(path, where, f"{key} must be a {expected.__name__}; got {value!r}.")
    for key in ("paper", "claim", "paper_value", "ours", "config", "anchor"):
        if not raw[key].strip():
            raise _fail(path, where, f"{key} is empty; give the value as the page states it.")
    if raw["verdict"] not in VERDICTS:
        raise _fail(path, where, f"verdict must be one of {', '.join(map(repr, VERDICTS))}; "
                    f"got {raw['verdict']!r}.")
    if raw["page"] not in pages:
        raise _fail(path, where, f"page {raw['page']!r} is not a [pages] entry; known: "
                    f"{', '.join(pages) or 'none'}.")
    interval = raw.get("interval", "")
    if interval and not _INTERVAL.match(interval):
        raise _fail(path, where, f"interval must look like \"[85.0, 90.5]\" (or be empty); "
                    f"got {interval!r}.")
    if raw.get("adaptive", "").strip() and not raw.get("oblivious", False):
        raise _fail(path, where, "adaptive is the counterpart of an oblivious number; set "
                    "oblivious = true or drop adaptive.")
    if bool(raw.get("adaptive", "").strip()) != bool(raw.get("adaptive_config", "").strip()):
        raise _fail(path, where, "adaptive and adaptive_config go together: give the adaptive "
                    "number and the config that measured it, or neither.")
    if "|" in "".join(v for v in raw.values() if isinstance(v, str)):
        raise _fail(path, where, "a field contains '|', which would break the Markdown table; "
                    "write it out (e.g. 'given' for '|').")
    return Claim(**raw)


def load_claims(path: str | Path = DEFAULT_CLAIMS, *, check_anchors: bool = True) -> ClaimsFile:
    """Read and validate a claims file.

    Parameters
    ----------
    path : str or Path
        The TOML file (default ``docs/results/claims.toml``, relative to the working
        directory).
    check_anchors : bool
        Also check that every page file exists beside the claims file and that each
        claim's ``anchor`` is one of that page's headings.

    Returns
    -------
    ClaimsFile

    Raises
    ------
    FileNotFoundError
        The claims file, or (with ``check_anchors``) a page file, does not exist.
    ValueError
        Invalid TOML, a missing or unknown field, a verdict outside :data:`VERDICTS`, a
        malformed interval, an unknown page, or an anchor that is not a heading of its
        page. The message names the claim and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"claims file {path} not found (working directory {Path.cwd()}); run from the "
            f"repository root or pass --claims PATH."
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc}).") from exc
    unknown = sorted(set(data) - {"pages", "claim"})
    if unknown:
        raise _fail(path, "top level", f"unknown key(s) {', '.join(unknown)}; expected "
                    f"[pages.<key>] tables and [[claim]] entries.")
    raw_pages = data.get("pages", {})
    if not isinstance(raw_pages, dict) or not raw_pages:
        raise _fail(path, "[pages]", "expected at least one [pages.<key>] table with file "
                    "and title.")
    pages: dict[str, Page] = {}
    for key, raw in raw_pages.items():
        if not isinstance(raw, dict) or set(raw) != {"file", "title"} or not all(
            isinstance(v, str) and v.strip() for v in raw.values()
        ):
            raise _fail(path, f"[pages.{key}]", f"expected exactly the string fields file "
                        f"and title; got {raw!r}.")
        pages[key] = Page(key=key, file=raw["file"], title=raw["title"])
    raw_claims = data.get("claim", [])
    if not isinstance(raw_claims, list) or not raw_claims:
        raise _fail(path, "[[claim]]", "expected at least one [[claim]] entry.")
    claims = tuple(_claim(path, i, raw, pages) for i, raw in enumerate(raw_claims))
    if check_anchors:
        anchors: dict[str, list[str]] = {}
        for page in pages.values():
            file = path.parent / page.file
            if not file.is_file():
                raise FileNotFoundError(
                    f"{path}: [pages.{page.key}] names {file}, which does not exist; create "
                    f"the page or fix its file name."
                )
            anchors[page.key] = heading_anchors(file.read_text(encoding="utf-8"))
        for c in claims:
            if c.anchor not in anchors[c.page]:
                raise _fail(path, f"claim {c.claim!r}", (
                    f"anchor {c.anchor!r} is not a heading of {pages[c.page].file}; its "
                    f"headings are {anchors[c.page]}."
                ))
    return ClaimsFile(path=path, pages=pages, claims=claims)


def _link(out_dir: Path, target: Path) -> str:
    """``target`` relative to ``out_dir``, with forward slashes."""
    return Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix()


_HEADER = """\
# Results: the papers' numbers reproduced

<!-- Generated by `fisherscope results` from {claims}; edit that file (and the pages
it links to), then run `fisherscope results`. `fisherscope results --check` (run by the
test suite) fails when this page is out of date. -->

Each row is one claim of a paper: the paper's number, ours as measured by the command
beside it (with a 95% bootstrap interval where one was computed), and a verdict. Where
the two differ, the linked page gives the protocol and the explanation; we do not tune a
model or an attack until the numbers match.

Verdicts: **reproduced** — within 3 points (or the paper's qualitative statement holds);
**gap explained** — a larger difference whose cause was tested and is written down on the
page; **not reproduced** — a larger difference without a tested explanation.

Commands read MNIST from `$FISHERSCOPE_DATA` (`fisherscope data download mnist`) and
cache trained networks under `$FISHERSCOPE_CACHE`; each is resumable (`--resume`).
"""


def render_results(claims: ClaimsFile, out: str | Path = DEFAULT_OUT) -> str:
    """The Markdown of the summary page for ``claims``, with links relative to ``out``.

    Parameters
    ----------
    claims : ClaimsFile
        From :func:`load_claims`.
    out : str or Path
        Where the page will be written (only its folder matters: links to the per-paper
        pages are made relative to it).

    Returns
    -------
    str
        The page, ending in a newline.
    """
    out_dir = Path(out).parent
    links = {key: _link(out_dir, claims.path.parent / page.file) for key, page in claims.pages.items()}
    counts = Counter(c.verdict for c in claims.claims)
    lines = [_HEADER.format(claims=_link(out_dir, claims.path))]
    lines.append(
        f"{len(claims.claims)} claims: "
        + ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
        + ".\n"
    )
    lines.append("| paper | claim | paper's number | ours [95% interval] | verdict | command "
                 "| against an adaptive attacker ‡ |")
    lines.append("|---|---|---|---|---|---|---|")
    notes: list[str] = []
    for c in claims.claims:
        text = f"[{c.claim}]({links[c.page]}#{c.anchor})"
        if c.oblivious:
            text += " †"
        if c.note:
            notes.append(c.note)
            text += f" [{len(notes)}]"
        ours = f"{c.ours} {c.interval}" if c.interval else c.ours
        verdict = f"**{c.verdict}**" if c.verdict == "not reproduced" else c.verdict
        if c.adaptive:
            adaptive = f"{c.adaptive} (`{c.adaptive_config}`)"
        else:
            adaptive = "pending" if c.oblivious else "–"
        lines.append(f"| {c.paper} | {text} | {c.paper_value} | {ours} | {verdict} | `{c.command}` "
                     f"| {adaptive} |")
    lines.append("")
    if any(c.oblivious for c in claims.claims):
        n_adaptive = sum(bool(c.adaptive) for c in claims.claims)
        n_oblivious = sum(c.oblivious for c in claims.claims)
        lines.append(
            "† A detector or defense number measured against attacks that do not know the "
            "detector or defense (oblivious attacks): an upper bound on what the method "
            "achieves against an attacker who targets it.\n"
        )
        lines.append(
            "‡ The same method against an attacker who knows it (an adaptive attack on the "
            "detector, or the worst case of APGD-CE, APGD-T and Square on the defense), "
            "measured by `fisherscope reproduce <config>` of the config named beside it; "
            f"{n_adaptive} of the {n_oblivious} oblivious numbers have one, the others are "
            "pending; – marks a claim about no detector or defense.\n"
        )
    for i, note in enumerate(notes, 1):
        lines.append(f"[{i}] {note}\n")
    lines.append("## Pages\n")
    for key, page in claims.pages.items():
        n = sum(c.page == key for c in claims.claims)
        suffix = f" ({n} claim{'s' if n != 1 else ''})" if n else ""
        lines.append(f"- [{page.title}]({links[key]}){suffix}")
    lines.append("")
    return "\n".join(lines)


def check_results(claims: ClaimsFile, out: str | Path = DEFAULT_OUT) -> list[str]:
    """Differences between the page at ``out`` and what :func:`render_results` gives.

    Returns
    -------
    list of str
        A unified diff (empty when the page is up to date); a missing page is one
        difference.
    """
    import difflib

    out = Path(out)
    want = render_results(claims, out)
    if not out.is_file():
        return [f"{out} does not exist; run `fisherscope results` to write it."]
    have = out.read_text(encoding="utf-8")
    if have == want:
        return []
    return list(difflib.unified_diff(have.splitlines(), want.splitlines(),
                                     f"{out} (committed)", f"{out} (from {claims.path})",
                                     lineterm=""))
