"""The command line, end to end: demo, reproduce (with a kill and --resume), registries."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisherscope.cli import app

runner = CliRunner()


@pytest.fixture
def iso(tmp_path, monkeypatch):
    """Run in tmp_path (the session's model cache is shared, see conftest)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_demo_writes_report_and_resume_reuses_everything(iso, digits_model):
    res = _invoke("demo", "--quiet", "--out", "runs")
    assert res.exit_code == 0, res.output
    run_dirs = list((iso / "runs").iterdir())
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    assert "report.html" in res.output
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "test accuracy" in html
    md = (run_dir / "report.md").read_text()
    top = md.split("\n## ")[0]  # above the first section: the headline under a stated threat model
    assert re.search(r"\*\*Worst-case robust accuracy of `digits_cnn`: \d+\.\d%\*\* at L2 ε = 1 \(inputs in "
                     r"\[0, 1\]; APGD-CE, APGD-T and Square .* on 100 seeded test digits", top), top
    assert "figures/attack_suite_grid_1.png" in md and "figures/attack_suite_grid.png" not in md
    assert "fisherscope.progress" not in res.output and "━" not in res.output  # --quiet: no progress
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    acc = next(r["values"]["accuracy"] for r in records if r["cell"] == "test")
    assert acc >= 0.97
    res2 = _invoke("demo", "--quiet", "--out", "runs", "--resume")
    assert res2.exit_code == 0
    assert list((iso / "runs").iterdir()) == [run_dir]
    again = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert again == records  # nothing recomputed, nothing lost


def test_report_rerenders_the_demo_without_running_a_model(iso, digits_model, monkeypatch):
    import shutil

    import torch

    assert _invoke("demo", "--quiet", "--out", "runs").exit_code == 0
    (run_dir,) = (iso / "runs").iterdir()
    md = (run_dir / "report.md").read_text()
    for name in ("report.md", "report.html"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "figures")
    monkeypatch.setenv("FISHERSCOPE_CACHE", str(iso / "no-cache-here"))

    def no_model(*a, **k):
        raise AssertionError("a model was run while re-rendering a report")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_model)
    res = _invoke("report", str(run_dir))
    assert res.exit_code == 0, res.output
    assert (run_dir / "report.md").read_text() == md
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()


def _write_config(path: Path, n_models: int = 3, epochs: int = 2) -> Path:
    blocks = "".join(
        f'\n[[models]]\narch = "digits_cnn"\ndataset = "digits"\nlabel = "m{i}"\n'
        f"overrides = {{ epochs = {epochs}, lr = {0.001 * (i + 1)} }}\n"
        for i in range(n_models)
    )
    path.write_text(f'name = "killme"\nkind = "model_accuracy"\nseed = 0\n{blocks}')
    return path


def test_reproduce_killed_midway_resumes_without_redoing_cells(iso):
    cfg = _write_config(iso / "killme.toml", n_models=3, epochs=3)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fisherscope", "reproduce", str(cfg), "--out", "runs", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=iso, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    results = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            found = list((iso / "runs").glob("*/results.jsonl"))
            if found and found[0].read_text().count('"cell": "m0@digits#') > 0:
                results = found[0]
                break
            if proc.poll() is not None:
                pytest.fail(f"run ended before it could be killed: {proc.stdout.read().decode()}")
            time.sleep(0.05)
        else:
            pytest.fail("no result appeared in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = [json.loads(line) for line in results.read_text().splitlines()]
    done_cells = {r["cell"].split("#")[0] for r in before}
    assert "m0@digits" in done_cells and len(done_cells) < 3  # killed mid-way
    res = _invoke("reproduce", str(cfg), "--out", "runs", "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    after = [json.loads(line) for line in results.read_text().splitlines()]
    assert after[: len(before)] == before  # finished cells kept byte for byte, not redone
    cells = [r["cell"].split("#")[0] for r in after if "test_accuracy" in r["values"]]
    assert sorted(cells) == ["m0@digits", "m1@digits", "m2@digits"]  # each exactly once
    assert (results.parent / "report.md").read_text().count("digits_cnn") == 3


def test_reproduce_rejects_unknown_keys_with_valid_list(iso):
    cfg = iso / "bad.toml"
    cfg.write_text('name = "bad"\nkind = "model_accuracy"\nmodel = []\n')
    res = _invoke("reproduce", str(cfg))
    assert res.exit_code == 1
    assert "Unknown keys" in res.output and "'model'" in res.output and "'models'" in res.output


def test_reproduce_unknown_config_name_lists_available(iso):
    res = _invoke("reproduce", "no-such-table")
    assert res.exit_code == 1
    assert "model-accuracy" in res.output


def test_packaged_configs_parse():
    from fisherscope.cli import configs_dirs
    from fisherscope.experiments import load_config

    names = {p.stem for d in configs_dirs() for p in d.glob("*.toml")}
    assert {"model-accuracy", "demo"} <= names
    for d in configs_dirs():
        for p in d.glob("*.toml"):
            load_config(p)


def test_train_then_cached(iso):
    res = _invoke("train", "digits_cnn", "--dataset", "digits", "--epochs", "1", "--quiet")
    assert res.exit_code == 0, res.output
    assert "trained" in res.output and "test accuracy" in res.output
    res = _invoke("train", "digits_cnn", "--dataset", "digits", "--epochs", "1", "--quiet")
    assert "loaded from cache" in res.output


def test_train_defaults_to_the_presets_dataset(iso, tmp_path):
    # lenet5's preset trains on MNIST: with an empty data folder the error names mnist.npz, not digits
    res = _invoke("train", "lenet5", "--quiet", "--data-dir", str(tmp_path / "empty"))
    assert res.exit_code == 1 and "mnist.npz" in res.output


def test_train_unknown_arch_is_a_clear_error(iso):
    res = _invoke("train", "resnet9000", "--quiet")
    assert res.exit_code == 1 and "lenet5" in res.output


def test_registries_env_models_data_list(iso):
    out = _invoke("list").output
    for name in ("digits_cnn", "lenet5", "mnist", "model_accuracy", "model-accuracy"):
        assert name in out
    out = _invoke("env").output
    assert "torch" in out and "git_sha" in out
    out = _invoke("models").output
    assert "mnist_cnn@paper" in out
    res = _invoke("data", "list", "--data-dir", str(iso))
    assert res.exit_code == 0 and "digits" in res.output and "missing" in res.output.lower()


def test_list_prints_every_registry(iso, monkeypatch):
    from fisherscope.attacks import ATTACKS
    from fisherscope.data import DATASETS
    from fisherscope.detectors import DETECTORS
    from fisherscope.experiments import EXPERIMENTS
    from fisherscope.features import FEATURES
    from fisherscope.models import MODELS

    monkeypatch.setenv("COLUMNS", "400")  # no wrapped cells
    res = _invoke("list")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()

    def row(key):
        found = [line for line in lines if line.split("│")[1:2] and line.split("│")[1].strip() == key]
        assert found, f"no row for {key!r} in:\n{res.output}"
        return [cell.strip() for cell in found[0].split("│")[1:-1]]

    for title in ("models", "datasets", "attacks", "detectors", "features", "experiments", "configs"):
        assert any(line.strip() == title for line in lines), title
    for reg in (MODELS, DATASETS, FEATURES, EXPERIMENTS):
        for key in reg:
            assert row(key)[-1] == reg.describe(key)
    for key, cls in ATTACKS.items():  # name, norms, budget, standard setting, description
        assert row(key) == [key, "/".join(cls.norms), cls.budget, cls.standard_description, ATTACKS.describe(key)]
    assert row("bim")[1:3] == ["linf/l2/l1", "optional"] and row("cw")[2] == "none"
    for key, cls in DETECTORS.items():
        assert row(key)[:2] == [key, cls.feature]
    assert row("kd")[2] == "no" and row("lid")[2] == "yes" and row("mahalanobis")[2] == "per instance"


def test_python_dash_m_matches_console_script():
    out = subprocess.run([sys.executable, "-m", "fisherscope", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("demo", "reproduce", "train", "models", "data", "env", "list"):
        assert cmd in out.stdout


def test_help_and_version_import_neither_torch_nor_sklearn():
    """``--help`` answers at once: the package's top-level names are lazy and the commands
    import the heavy libraries inside their bodies."""
    code = ("import sys; from fisherscope.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['--version']); assert r.exit_code == 0 and 'fisherscope 0.' in r.output; "
            "heavy = sorted(m for m in ('torch', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("args, hint", [
    (["--log-level", "loud", "list"], "--log-level"),
    (["demo", "--device", "tpu"], "--device"),
    (["demo", "--resume", "true"], "Got unexpected extra argument"),
])
def test_usage_errors_exit_2_and_name_the_option(args, hint):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert hint in res.output


def test_boolean_flags_have_a_negative_form(iso):
    res = _invoke("reproduce", "nope-config", "--no-resume")
    assert res.exit_code == 1 and "--no-resume" not in res.output  # the flag parsed; the config name failed


def test_log_level_shows_the_per_stage_lines(iso, caplog):
    import logging

    res = runner.invoke(app, ["--log-level", "debug", "list"])
    assert res.exit_code == 0
    assert logging.getLogger("fisherscope").level == logging.DEBUG
    logging.getLogger("fisherscope").setLevel(logging.WARNING)
