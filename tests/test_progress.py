"""Progress of long stages (fisherscope._progress): log lines when stderr is not a terminal,
a rich bar on a terminal, nothing when quiet, and nothing from a library call unless asked."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass

import pytest
import torch
from rich.console import Console
from torch import nn

from fisherscope import show_progress
from fisherscope._batching import in_batches
from fisherscope._progress import progress_enabled, stage, track
from fisherscope.attacks import FGSM
from fisherscope.evaluation import robust_accuracy
from fisherscope.experiments import Run

LOGGER = "fisherscope.progress"


@dataclass(frozen=True)
class _Cfg:
    name: str = "progress"
    kind: str = "_progress_test"
    seed: int = 0


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def _work(tmp_path) -> None:
    """An experiment's cell running a batched attack evaluation and a batched map."""
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    net = _net()
    y = net(x).argmax(1)  # all correct clean: every image is attacked
    run = Run(_Cfg(), tmp_path)

    def cell() -> dict[str, float]:
        res = robust_accuracy(net, x, y, norm="linf", eps=0.1, attacks=[("fgsm", FGSM(eps=0.1))],
                              batch_size=4, checks=None)
        total = in_batches(lambda xb: xb.sum(dim=(1, 2, 3)), x, batch_size=3, progress="sums")
        return {"robust_accuracy": res.robust_accuracy, "total": float(total.sum())}

    run.cell("attack", cell)


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=100, color_system=None), buf


def test_not_a_terminal_logs_stage_lines(tmp_path, caplog):
    console, buf = _console(terminal=False)
    logging.getLogger(LOGGER).setLevel(logging.WARNING)  # as the CLI leaves it by default
    with caplog.at_level(logging.NOTSET), show_progress(console=console):
        assert progress_enabled()
        _work(tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines[0] == "cell attack: started" and lines[-1].startswith("cell attack: done in "), lines
    assert len(lines) == 2  # the nested quick stages (attack batches, sums) stay out of the log
    assert buf.getvalue() == ""  # no bar drawn into a log file
    assert logging.getLogger(LOGGER).level == logging.WARNING  # put back after the block
    assert not progress_enabled()


def test_not_a_terminal_logs_nested_stages_that_take_time(monkeypatch, caplog):
    import fisherscope._progress as progress

    monkeypatch.setattr(progress, "MIN_LOG_S", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    console, _ = _console(terminal=False)
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    net = _net()
    with caplog.at_level(logging.INFO, logger=LOGGER), show_progress(console=console):
        with stage("outer"):
            robust_accuracy(net, x, net(x).argmax(1), norm="linf", eps=0.1, attacks=[("fgsm", FGSM(eps=0.1))],
                            batch_size=4, checks=None)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines[0] == "outer: started"
    assert "fgsm (eps 0.1): 1/3 (33%)" in " ".join(lines)  # 10 images in batches of 4, one line a batch
    assert any(m.startswith("fgsm (eps 0.1): done, 3/3 in ") for m in lines), lines
    assert lines[-1].startswith("outer: done in ")


@pytest.mark.parametrize("how", ["quiet", "library default"])
def test_quiet_and_library_calls_print_nothing(tmp_path, caplog, capsys, how):
    console, buf = _console(terminal=True)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        if how == "quiet":
            with show_progress(console=console), show_progress(False):  # --quiet wins inside
                _work(tmp_path)
        else:
            _work(tmp_path)
    assert [r for r in caplog.records if r.name == LOGGER] == []
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert buf.getvalue() == ""


def test_terminal_draws_a_bar(tmp_path):
    console, buf = _console(terminal=True)
    with show_progress(console=console):
        with stage("outer work", total=4) as st:
            for _ in track(range(2), "inner batches"):
                st.advance()
                time.sleep(0.3)  # rich redraws 10 times a second
            drawn = buf.getvalue()
            st.advance(2)
    assert "outer work" in drawn and "inner batches" in drawn
    assert "━" in drawn and "2/4" in drawn  # a rich bar, half done
    assert "done outer work" in buf.getvalue()  # the top-level stage leaves one line


def test_a_stage_that_raises_is_reported_stopped(caplog):
    console, _ = _console(terminal=False)
    with caplog.at_level(logging.INFO, logger=LOGGER), show_progress(console=console):
        with pytest.raises(RuntimeError), stage("failing", total=2) as st:
            st.advance()
            raise RuntimeError("boom")
    assert any(r.getMessage().startswith("failing: stopped, 1/2 in ") for r in caplog.records)


def test_nested_show_progress_joins_the_outer_display():
    """run_experiment(context=Context(progress=True)) inside a user's show_progress(): one display
    (rich allows one live display at a time)."""
    console, buf = _console(terminal=True)
    with show_progress(console=console), stage("outer", total=1) as st:
        with show_progress(console=console), stage("inner", total=1) as inner:
            inner.advance()
        st.advance()
    assert "done outer" in buf.getvalue()
