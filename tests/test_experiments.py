"""Config parsing, the results store, resuming and report rendering."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from fisherscope.experiments import EXPERIMENTS, Run, config_hash, load_config, render_report
from fisherscope.experiments.base import register
from fisherscope.experiments.config import config_from_dict, read_toml, to_toml
from fisherscope.experiments.report import Figure, Heading, Paragraph, Table


@dataclass(frozen=True)
class _Inner:
    a: int
    b: float = 1.0


@dataclass(frozen=True)
class _Cfg:
    name: str
    kind: str = "_test_counter"
    seed: int = 0
    steps: int = 3
    tags: list[str] = field(default_factory=list)
    inner: list[_Inner] = field(default_factory=list)
    mode: str | None = None


CALLS: list[str] = []
FAIL_AT: set[int] = set()  # cells that raise, to simulate a run killed mid-way

if "_test_counter" not in EXPERIMENTS:

    def _counter_report(cfg, results):
        return [Heading("Counter"), Table(["cell", "value"], [[c, v["value"]] for c, v in results.all().items()])]

    @register("_test_counter", _Cfg, "test-only experiment counting its cells", report=_counter_report)
    def _counter(run, cfg, ctx):
        for i in range(cfg.steps):
            def work(i=i):
                CALLS.append(f"step{i}")
                if i in FAIL_AT:
                    raise RuntimeError("killed")
                return {"value": i * i, "twice": 2 * i}
            run.cell(f"step{i}", work)


def test_unknown_keys_rejected_with_valid_list():
    with pytest.raises(ValueError, match=r"Unknown keys in config: \['stpes'\]\. Valid keys: \[.*'steps'"):
        config_from_dict(_Cfg, {"name": "x", "stpes": 3})


def test_unknown_nested_key_names_its_path():
    with pytest.raises(ValueError, match=r"Unknown keys in config\.inner\[1\]: \['c'\]"):
        config_from_dict(_Cfg, {"name": "x", "inner": [{"a": 1}, {"a": 2, "c": 3}]})


def test_types_checked_and_converted():
    cfg = config_from_dict(_Cfg, {"name": "x", "inner": [{"a": 1, "b": 2}]})
    assert cfg.inner[0].b == 2.0 and isinstance(cfg.inner[0].b, float)
    with pytest.raises(TypeError, match=r"config\.steps must be an integer; got '3'"):
        config_from_dict(_Cfg, {"name": "x", "steps": "3"})
    with pytest.raises(ValueError, match=r"Missing required key config\.name"):
        config_from_dict(_Cfg, {})


def test_toml_round_trip_and_unknown_kind(tmp_path):
    cfg = config_from_dict(_Cfg, {"name": "x", "tags": ["a", "b"], "inner": [{"a": 1}, {"a": 2, "b": 0.5}]})
    path = tmp_path / "c.toml"
    from fisherscope.experiments.config import config_to_dict

    path.write_text(to_toml(config_to_dict(cfg)))
    again = load_config(path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    path.write_text('name = "x"\nkind = "nope"\n')
    with pytest.raises(ValueError, match=r"'kind' must be one of \[.*'demo'"):
        load_config(path)


def test_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\nkind = "_test_counter"\n[[inner]]\na = 1\n')
    cfg = load_config(path, ["steps=5", "inner.0.a=7"])
    assert cfg.steps == 5 and cfg.inner[0].a == 7
    with pytest.raises(ValueError, match="no key 'nope'"):
        load_config(path, ["nope.x=1"])


def test_invalid_toml_names_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(ValueError, match="bad.toml is not valid TOML"):
        read_toml(path)


def test_results_carry_provenance_and_resume_skips_finished_cells(tmp_path):
    from fisherscope.experiments import run_experiment

    CALLS.clear()
    FAIL_AT.add(1)
    cfg = _Cfg(name="counter", steps=3)
    with pytest.raises(RuntimeError, match="killed"):
        run_experiment(cfg, tmp_path)
    assert CALLS == ["step0", "step1"]
    run_dir = next(tmp_path.iterdir())
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1  # step0 (one line with both values), nothing of the failed cell
    rec = json.loads(lines[0])
    for key in ("seed", "config_hash", "versions", "git_sha", "device", "cell", "values", "time"):
        assert key in rec
    assert rec["values"] == {"value": 0, "twice": 0}
    assert rec["versions"]["torch"]

    # resume with a different config is refused
    with pytest.raises(ValueError, match="different configuration"):
        Run(_Cfg(name="counter", steps=4), tmp_path, resume=True)

    # resume: finished cells are not redone, the rest completes
    CALLS.clear()
    FAIL_AT.clear()
    run = run_experiment(cfg, tmp_path, resume=True)
    assert run.dir == run_dir
    assert CALLS == ["step1", "step2"]
    assert run.results("step2") == {"value": 4, "twice": 4}
    assert len((run_dir / "results.jsonl").read_text().splitlines()) == 3


def test_report_markdown_and_selfcontained_html(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = tmp_path / "figures" / "f.png"
    png.parent.mkdir()
    fig.savefig(png)
    plt.close(fig)
    blocks = [
        Heading("Section"),
        Paragraph("Some `code` and **bold** <b>escaped</b>"),
        Table(["a", "b"], [["x", 0.123456], ["y", float("nan")], ["p|q", 1]], caption="cap"),
        Figure(png, "a line"),
    ]
    md, html = render_report(blocks, tmp_path, title="T")
    text = md.read_text()
    assert "| p\\|q | 1 |" in text
    assert "# T" in text and "| a | b |" in text and "| x | 0.123 |" in text and "![a line](figures/f.png)" in text
    page = html.read_text()
    assert "data:image/png;base64," in page and "&lt;b&gt;escaped" in page and "<code>code</code>" in page
    assert "src='figures" not in page  # nothing external


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.5.a=1", r"inner has 2 entries \(indices 0\.\.1\); got index 5"),
        ("inner.x.a=1", r"is a list of 2 entries, so 'inner\.x' needs an index 0\.\.1, not 'x'"),
        ("name.x=1", r"name holds a str value, not a table, so it has no key 'x'"),
        ("nope.a=1", r"no key 'nope' in the config \(keys there: \["),
    ],
)
def test_bad_set_overrides_name_the_path_and_the_fix(override, message):
    data = {"name": "x", "kind": "_test_counter", "inner": [{"a": 1}, {"a": 2}]}
    with pytest.raises(ValueError, match=message):
        load_config(data, [override])


def test_unknown_training_override_names_the_valid_keys():
    from fisherscope.experiments.common import check_overrides

    check_overrides({"epochs": 1, "lr": 1e-3, "seed": 7})
    with pytest.raises(ValueError, match=r"lenet5@mnist overrides: unknown training setting\(s\) "
                                         r"\['learning_rate'\]; valid keys: \[.*'lr'"):
        check_overrides({"learning_rate": 1e-3}, where="lenet5@mnist overrides")


def test_report_html_is_rendered_from_the_markdown_with_contents_and_provenance(tmp_path):
    """The HTML page is the Markdown rendered by a Markdown library: raw HTML escaped, every
    heading anchored, a table of contents whose links all resolve, tables that scroll, text
    columns left-aligned and numbers right-aligned, and the provenance panel."""
    import re

    blocks = [Heading("Results"), Paragraph("<script>alert(1)</script> *em*"), Heading("Results"),
              Heading("Detail", 3), Table(["detector", "AUROC"], [["KD", 0.91], ["LID", None]])]
    _, html = render_report(blocks, tmp_path, title="T", provenance={"git commit": "abc123", "seed": "0"})
    page = html.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "<em>em</em>" in page
    ids = set(re.findall(r'id="([^"]+)"', page))
    links = re.findall(r"href='#([^']+)'", page)
    assert links == ["results", "results-1", "detail"] and set(links) <= ids
    assert "<div class='table-wrap'><table>" in page
    assert '<td style="text-align:left">KD</td>' in page and '<td style="text-align:right">0.910</td>' in page  # 3 significant digits
    assert "<details class='provenance'>" in page and "abc123" in page


def test_report_figures_must_live_in_the_run_directory(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fisherscope.experiments.report import _html

    with pytest.raises(ValueError, match=r"not a file inside"):
        _html("![x](../outside.png)", "T", tmp_path)
    fig, ax = plt.subplots()
    png = tmp_path / "figures" / "f.png"
    png.parent.mkdir()
    fig.savefig(png)
    plt.close(fig)
    assert "data:image/png;base64," in _html("![x](figures/f.png)", "T", tmp_path)


def test_provenance_lists_what_the_cells_were_computed_with(tmp_path):
    from fisherscope.experiments import run_experiment

    cfg = _Cfg(name="prov", steps=2)
    run = run_experiment(cfg, tmp_path)
    prov = run.view().provenance()
    assert prov["cells"] == "2" and prov["config hash"] == run.config_hash and prov["seed"] == "0"
    assert "version: torch" in prov and "git commit" in prov and "device" in prov and "torch threads" in prov
    assert run.config_hash in (run.dir / "report.html").read_text()
