"""One number format in every report table (fisherscope.experiments.report.fmt_number):
percentages with one decimal, other numbers with 3 significant digits, integers as integers,
"–" for a missing value."""

from __future__ import annotations

import math

import pytest

from fisherscope.experiments.report import Percent, Table, fmt_number, pct, render_report


@pytest.mark.parametrize("value, shown", [
    (1.0, "1.00"), (0.9822, "0.982"), (0.91, "0.910"), (12.345, "12.3"), (0.045, "0.0450"),
    (9.996, "10.0"), (99.96, "100"), (1234.5, "1234"), (-0.5, "-0.500"), (0.0, "0"),
    (2e-5, "2.00e-05"), (123456.0, "1.23e+05"), (3, "3"), (1797, "1797"),
    (None, "–"), (math.nan, "–"), (math.inf, "∞"), (-math.inf, "−∞"), ("text", "text"), (True, "True"),
])
def test_numbers(value, shown):
    assert fmt_number(value) == shown


@pytest.mark.parametrize("value, shown", [(9.495, "9.5"), (100.0, "100.0"), (0.04, "0.0"), (98.22, "98.2"),
                                          (None, "–"), (math.nan, "–")])
def test_percentages_have_one_decimal(value, shown):
    assert fmt_number(value, percent=True) == shown


def test_pct_marks_a_fraction_as_percent():
    assert pct(0.9822) == pytest.approx(98.22) and isinstance(pct(0.5), Percent)
    assert fmt_number(pct(1.0)) == "100.0" and fmt_number(pct(0.09495)) == "9.5"
    assert fmt_number(pct(None)) == "–"


def test_tables_apply_the_rule(tmp_path):
    """The issue's example: "1" beside "0.9822", "9.495" for a percent."""
    table = Table(["quantity", "value", "accuracy %"],
                  [["a", 1.0, 9.495], ["b", 0.9822, 100.0], ["c", 1797, None], ["d", pct(0.5), math.nan]])
    md, _ = render_report([table], tmp_path, title="T")
    text = md.read_text()
    assert "| a | 1.00 | 9.5 |" in text
    assert "| b | 0.982 | 100.0 |" in text
    assert "| c | 1797 | – |" in text
    assert "| d | 50.0 | – |" in text  # a Percent outside a "%" column


def test_numbers_built_as_text_are_right_aligned_and_text_left(tmp_path):
    table = Table(["detector", "AUROC %", "TPR (FPR)", "count", "setting"],
                  [["KD", "80.9 [73.9, 87.6]", "16.1 (0.0)", "3/4", "1/255 steps"],
                   ["LID", "–", "n/a", "10/10", "L∞ 0.1"]])
    md, _ = render_report([table], tmp_path, title="T")
    assert "|:---|---:|---:|---:|:---|" in md.read_text()


def test_attack_grid_labels_stay_readable_at_one_to_one(tmp_path):
    """The demo's attack grid comes in figures of GRID_ATTACKS attacks: each fits the report's
    column (so the page shows it at 1:1) and its labels are >= 10 px there."""
    import torch
    from PIL import Image

    from fisherscope.experiments import demo_attacks as da
    from fisherscope.experiments.report import save_figure

    imgs = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cols = [("clean", imgs, [1, 2, 3, 4], None)]
    cols += [(f"otcm_iterative{j}", imgs, [1, 2, 3, 5], [0.7, 0.8, 0.9, 1.0]) for j in range(da.GRID_ATTACKS)]
    fig = da._grid_figure(cols, [1, 2, 3, 4], "Attacks 1–5 of 19")
    sizes = [t.get_fontsize() for t in fig.findobj(lambda a: hasattr(a, "get_fontsize")) if t.get_text()]
    assert sizes and min(sizes) * da.GRID_DPI / 72 >= 10  # points -> pixels at the saved dpi
    path = save_figure(fig, tmp_path / "grid.png", dpi=da.GRID_DPI)
    width = Image.open(path).size[0]
    assert width <= 940, width  # the report's column (980 px less padding): no downscaling
