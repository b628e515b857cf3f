"""docs/RESULTS.md is generated from docs/results/claims.toml and stays in sync with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisherscope.cli import app
from fisherscope.results_summary import VERDICTS, heading_anchors, load_claims, render_results

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "docs" / "results" / "claims.toml"
RESULTS = ROOT / "docs" / "RESULTS.md"
runner = CliRunner()

PAGE = """\
# A paper

## Table 1: accuracy

Our net reaches 99.30% (the paper: 99%); the AUROC is 87.9 [85.0, 90.5].
"""

SMALL = """\
[pages.a]
file = "a.md"
title = "A paper, 2020"

[[claim]]
page = "a"
paper = "A et al. 2020"
claim = "Test accuracy (Table 1)"
paper_value = "99%"
ours = "99.30%"
verdict = "reproduced"
config = "model-accuracy"
anchor = "table-1-accuracy"

[[claim]]
page = "a"
paper = "A et al. 2020"
claim = "AUROC vs oblivious FGM (Table 1)"
paper_value = "96.11"
ours = "87.9"
interval = "[85.0, 90.5]"
verdict = "not reproduced"
config = "zhao-table4"
args = "--set seed=1"
anchor = "table-1-accuracy"
oblivious = true
note = "Budget unknown."
"""


def _write(tmp_path: Path, claims: str = SMALL, page: str = PAGE) -> Path:
    folder = tmp_path / "docs" / "results"
    folder.mkdir(parents=True)
    (folder / "a.md").write_text(page, encoding="utf-8")
    path = folder / "claims.toml"
    path.write_text(claims, encoding="utf-8")
    return path


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_small_claims_file_renders_one_row_per_claim_with_links_and_footnotes(tmp_path):
    path = _write(tmp_path)
    text = render_results(load_claims(path), tmp_path / "docs" / "RESULTS.md")
    rows = [line for line in text.splitlines() if line.startswith("| A et al. 2020 |")]
    assert rows == [
        "| A et al. 2020 | [Test accuracy (Table 1)](results/a.md#table-1-accuracy) | 99% | 99.30% "
        "| reproduced | `fisherscope reproduce model-accuracy` | – |",
        "| A et al. 2020 | [AUROC vs oblivious FGM (Table 1)](results/a.md#table-1-accuracy) † [1] "
        "| 96.11 | 87.9 [85.0, 90.5] | **not reproduced** "
        "| `fisherscope reproduce zhao-table4 --set seed=1` | pending |",
    ]
    assert "2 claims: 1 reproduced, 0 gap explained, 1 not reproduced." in text
    assert "0 of the 1 oblivious numbers have one, the others are pending" in text
    assert "[1] Budget unknown." in text
    assert "- [A paper, 2020](results/a.md) (2 claims)" in text


def test_an_adaptive_counterpart_is_shown_beside_the_oblivious_number(tmp_path):
    small = SMALL.replace("oblivious = true", 'oblivious = true\nadaptive = "AUROC 12.5"\n'
                          'adaptive_config = "adaptive-detection"', 1)
    path = _write(tmp_path, small)
    text = render_results(load_claims(path), tmp_path / "docs" / "RESULTS.md")
    assert "| `fisherscope reproduce zhao-table4 --set seed=1` | AUROC 12.5 (`adaptive-detection`) |" in text
    assert "1 of the 1 oblivious numbers have one" in text


@pytest.mark.parametrize(("extra", "message"), [
    ('adaptive = "AUROC 12.5"', "adaptive and adaptive_config go together"),
    ('adaptive_config = "adaptive-detection"', "adaptive and adaptive_config go together"),
])
def test_an_adaptive_counterpart_needs_its_config(tmp_path, extra, message):
    path = _write(tmp_path, SMALL.replace("oblivious = true", f"oblivious = true\n{extra}", 1))
    with pytest.raises(ValueError, match=message):
        load_claims(path)


def test_an_adaptive_counterpart_belongs_to_an_oblivious_claim(tmp_path):
    small = SMALL.replace('verdict = "reproduced"', 'verdict = "reproduced"\nadaptive = "x"\n'
                          'adaptive_config = "adaptive-detection"', 1)
    path = _write(tmp_path, small)
    with pytest.raises(ValueError, match="set oblivious = true or drop adaptive"):
        load_claims(path)


def test_links_are_relative_to_the_output_page(tmp_path):
    path = _write(tmp_path)
    text = render_results(load_claims(path), tmp_path / "elsewhere" / "SUMMARY.md")
    assert "](../docs/results/a.md#table-1-accuracy)" in text


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('verdict = "reproduced"', 'verdict = "mostly"', "verdict must be one of"),
        ('ours = "99.30%"\n', "", "missing field(s) ours"),
        ('page = "a"\npaper = "A et al. 2020"\nclaim = "Test', 'page = "b"\npaper = "A et al. 2020"\nclaim = "Test', "page 'b' is not a [pages] entry"),
        ('interval = "[85.0, 90.5]"', 'interval = "85 to 90"', "interval must look like"),
        ('anchor = "table-1-accuracy"\n\n', 'anchor = "table-2"\n\n', "anchor 'table-2' is not a heading of a.md"),
        ("oblivious = true", 'oblivious = "yes"', "oblivious must be a bool"),
        ('note = "Budget unknown."', 'notes = "x"', "unknown field(s) notes"),
        ('ours = "87.9"', 'ours = "87.9 | 88"', "contains '|'"),
    ],
)
def test_invalid_claims_are_refused_with_the_fix(tmp_path, old, new, message):
    assert old in SMALL
    path = _write(tmp_path, SMALL.replace(old, new, 1))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_claims(path)


def test_a_missing_page_file_is_refused(tmp_path):
    path = _write(tmp_path)
    (path.parent / "a.md").unlink()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_claims(path)


def test_heading_anchors_follow_github():
    text = "# Zhao et al.\n```\n# not a heading\n```\n## Figure 4(a): λ_max — `FGM`\n## Figure 4(a): λ_max — `FGM`\n"
    assert heading_anchors(text) == ["zhao-et-al", "figure-4a-λ_max--fgm", "figure-4a-λ_max--fgm-1"]


def test_cli_writes_then_check_passes_and_fails_once_stale(tmp_path):
    path = _write(tmp_path)
    out = tmp_path / "docs" / "RESULTS.md"
    res = _invoke("results", "--claims", str(path), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == render_results(load_claims(path), out)
    assert _invoke("results", "--claims", str(path), "--out", str(out), "--check").exit_code == 0

    path.write_text(SMALL.replace('ours = "99.30%"', 'ours = "99.31%"'), encoding="utf-8")
    res = _invoke("results", "--claims", str(path), "--out", str(out), "--check")
    assert res.exit_code == 1
    assert "out of date" in res.output and "+| A et al. 2020 | [Test accuracy" in res.output
    assert "99.30%" in out.read_text(encoding="utf-8")  # --check writes nothing


def test_cli_reports_a_missing_claims_file(tmp_path):
    res = _invoke("results", "--claims", str(tmp_path / "none.toml"), "--out", str(tmp_path / "R.md"))
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "not found" in text and "pass --claims PATH" in text


# ---------------------------------------------------------------- the repository's own files


def test_committed_results_page_is_in_sync_with_the_claims():
    res = _invoke("results", "--claims", str(CLAIMS), "--out", str(RESULTS), "--check")
    assert res.exit_code == 0, (
        f"{res.output}\ndocs/RESULTS.md is stale: run `fisherscope results` from the repository root."
    )


def test_every_claim_names_an_existing_config_and_a_verdict():
    claims = load_claims(CLAIMS)
    configs = {p.stem for p in (ROOT / "configs").glob("*.toml")}
    for c in claims.claims:
        assert c.config in configs, f"{c.claim!r}: no configs/{c.config}.toml"
        assert not c.adaptive_config or c.adaptive_config in configs, (
            f"{c.claim!r}: no configs/{c.adaptive_config}.toml")
        assert c.verdict in VERDICTS


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e-?\d+)?")


def test_every_number_of_a_claim_is_stated_on_its_page():
    """Traceability: the summary may not carry a number its page does not state."""
    claims = load_claims(CLAIMS)
    problems = []
    for c in claims.claims:
        page = (CLAIMS.parent / claims.pages[c.page].file).read_text(encoding="utf-8")
        page_numbers = set(_NUMBER.findall(page))
        for field in ("paper_value", "ours", "interval", "note", "adaptive"):
            for number in _NUMBER.findall(getattr(c, field)):
                if number not in page_numbers:
                    problems.append(f"{c.claim!r} {field}: {number} not on {claims.pages[c.page].file}")
    assert not problems, "\n".join(problems)


def test_oblivious_detector_numbers_say_so_in_the_claim():
    for c in load_claims(CLAIMS).claims:
        if c.oblivious:
            assert "oblivious" in c.claim or "transfer" in c.claim, c.claim


def test_pages_carry_no_lab_notebook_remarks():
    folder = CLAIMS.parent
    pages = [*folder.glob("*.md"), RESULTS, folder.parent / "BENCHMARKS.md", folder.parent / "training-measurements.md"]
    banned = re.compile(r"sessions? \d|runs/20\d\d|load average|\bload [≈~<]?\s?\d|contended|/work/|targets? (?:met|missed)|\*\*(?:met|missed)", re.I)
    hits = [f"{p.name}:{i}: {line.strip()}" for p in pages
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if banned.search(line)]
    assert not hits, "\n".join(hits)


def test_figure_links_of_the_pages_exist():
    folder = CLAIMS.parent
    missing = []
    for p in [*folder.glob("*.md"), folder.parent / "BENCHMARKS.md"]:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", p.read_text(encoding="utf-8")):
            if not (p.parent / target).is_file():
                missing.append(f"{p.name}: {target}")
    assert not missing, missing
