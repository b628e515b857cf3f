"""``fisherscope audit``: a tiny model (factory + safetensors) and an ImageFolder of PNGs, end to end
through the Python API and the command line; resume, re-rendering, --json and bad input."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fisherscope.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()

NET = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.drop = nn.Dropout(0.2)
            self.fc = nn.Linear(4 * 8 * 8, num_classes)

        def forward(self, x):
            return self.fc(self.drop(torch.relu(self.conv(x))).flatten(1))


    def make(num_classes=3):
        return TinyNet(num_classes)


    def make_probs(num_classes=3):
        return nn.Sequential(TinyNet(num_classes), nn.Softmax(dim=1))
''')

#: small settings so that an audit of 36 images takes seconds (two chunks, every section)
SMALL = {"chunk": 20, "minimal_samples": 10, "detect_samples": 36, "pgd_steps": 5, "deepfool_steps": 10,
         "cw_steps": 10, "cw_binary_steps": 2, "detect_steps": 5, "adaptive_steps": 3, "n_bootstrap": 10, "n_maps": 2,
         "detectors": ["softmax", "fisher_spectrum", "bu"]}
ENSEMBLE = {"apgd_steps": 4, "n_target_classes": 2, "square_queries": 10, "check_samples": 6}


def _images(n_per_class: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 8x8 grey images: a bright 3x3 block at a class-dependent place, plus noise."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(3):
        for _ in range(n_per_class):
            img = np.where(rng.uniform(size=(8, 8)) < 0.15, rng.uniform(0, 0.4, size=(8, 8)), 0.0)
            r, c = [(1, 1), (1, 4), (4, 2)][k]
            img[r:r + 3, c:c + 3] = rng.uniform(0.7, 1.0, size=(3, 3))
            xs.append(np.round(img * 255).astype(np.uint8))
            ys.append(k)
    return np.stack(xs), np.array(ys)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A factory module, its trained weights (safetensors), and an ImageFolder of PNGs."""
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("audit-tiny")
    (root / "tinynet.py").write_text(NET)
    x8, y = _images()
    folder = root / "images"
    for i, (img, k) in enumerate(zip(x8, y, strict=True)):
        (folder / f"class_{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"class_{k}" / f"{i:03d}.png")
    from fisherscope.models.loading import _import_factory

    torch.manual_seed(0)
    net = _import_factory(f"{root / 'tinynet.py'}:make")()
    x = torch.from_numpy(x8).float().div(255).unsqueeze(1)
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), yt).backward()
        opt.step()
    net.eval()
    save_file(net.state_dict(), str(root / "w.safetensors"))
    return {"root": root, "factory": f"{root / 'tinynet.py'}:make", "weights": root / "w.safetensors",
            "data": folder, "net": net}


def _audit(tiny, out, **kw):
    from fisherscope import audit

    return audit(tiny["factory"], str(tiny["data"]), weights=tiny["weights"], out=out, ensemble=ENSEMBLE,
                 **{**SMALL, **kw})


@pytest.fixture(scope="module")
def audited(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit-runs")
    summary = _audit(tiny, out)
    return summary, Path(summary["run_dir"])


def test_python_api_writes_every_section_and_the_summary(audited):
    summary, run_dir = audited
    for name in ("report.md", "report.html", "results.jsonl", "summary.json", "config.json"):
        assert (run_dir / name).is_file(), name
    stored = json.loads((run_dir / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "run_dir"} == stored
    md = (run_dir / "report.md").read_text()
    for heading in ("Clean accuracy and calibration", "Worst-case robust accuracy", "Minimal perturbations",
                    "The spectrum of the input-space Fisher matrix", "OSSA beside PGD and APGD",
                    "Detectors: oblivious and adaptive", "The most vulnerable images"):
        assert heading in md, heading
    assert stored["headline"].startswith("Robust accuracy ") and "L∞ ε=0.3" in stored["headline"]
    assert stored["data"]["data_kind"] == "MNIST-like"
    assert stored["data"]["n"] == 36 and stored["model"]["num_classes"] == 3
    assert 0.9 <= stored["clean_accuracy"] <= 1.0
    assert 0.0 <= stored["ece"] <= 1.0
    assert [(r["norm"], r["eps"]) for r in stored["robust"]][:2] == [("linf", 0.1), ("linf", 0.3)]
    assert all(0.0 <= r["robust_accuracy"] <= stored["clean_accuracy"] + 1e-9 for r in stored["robust"])
    # the best detector, if named, passed both the noise control and the adaptive attack
    best = stored["best_detector"]
    if best is not None:
        row = next(d for d in stored["detectors"] if d["detector"] == best)
        assert row["passes_noise"] and row["passes_adaptive"]
    else:
        assert "none is recommended" in md
    # chunks: two clean cells (20 + 16 images), the digests in every cell's spec
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["cell"].split("#")[0] for r in records if r["cell"].startswith("clean/")) == ["clean/0", "clean/20"]
    digest = json.loads((run_dir / "config.json").read_text())["config"]["model_digest"]
    assert len(digest) == 64 and all(r["spec"]["model_digest"] == digest for r in records)
    assert any(p.name == "audit_saliency.png" for p in (run_dir / "figures").iterdir())
    # the minimal-perturbation images are a seeded draw, not the first files (sorted by class)
    ys = [v for r in records if r["cell"].startswith("minimal/") for v in r["values"]["y"]]
    assert len(ys) == 10 and len(set(ys)) >= 2


def test_the_report_rerenders_from_the_store(audited, tmp_path, monkeypatch):
    from _rerender import assert_rerenders_from_the_store

    _, run_dir = audited
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    summary = (copy / "summary.json").read_bytes()
    md = assert_rerenders_from_the_store(copy, tmp_path, monkeypatch)
    assert "Robust accuracy" in md
    assert (copy / "summary.json").read_bytes() == summary


@pytest.mark.slow  # recomputes half of an audit and renders its report again (~20-40 s on the loaded machine)
def test_resume_after_a_kill_reuses_the_finished_cells(audited, tiny, monkeypatch):
    summary, run_dir = audited
    lines = (run_dir / "results.jsonl").read_text().splitlines(keepends=True)
    kept = len(lines) // 2
    (run_dir / "results.jsonl").write_text("".join(lines[:kept]))  # as if killed half-way
    import fisherscope.experiments.audit as mod

    calls = []
    real = mod.worst_case
    monkeypatch.setattr(mod, "worst_case", lambda *a, **k: calls.append(k["eps"]) or real(*a, **k))
    again = _audit(tiny, run_dir.parent, resume=run_dir)
    assert again["run_dir"] == str(run_dir)
    after = (run_dir / "results.jsonl").read_text().splitlines(keepends=True)
    assert after[:kept] == lines[:kept] and len(after) == len(lines)
    done = {json.loads(line)["cell"] for line in lines[:kept]}
    assert len(calls) == sum(1 for line in lines[kept:] if json.loads(line)["cell"].startswith("robust/"))
    assert not any(c.startswith("robust/") for c in done) or len(calls) < 8
    assert {k: v for k, v in again.items() if k != "run_dir"} == {k: v for k, v in summary.items() if k != "run_dir"}


def test_resume_refuses_another_model(audited, tiny, tmp_path):
    from safetensors.torch import save_file

    _, run_dir = audited
    state = {k: v.clone() for k, v in tiny["net"].state_dict().items()}
    state["fc.bias"] += 1.0
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    from fisherscope import audit

    with pytest.raises(ValueError, match="digest"):
        audit(tiny["factory"], str(tiny["data"]), weights=other, out=run_dir.parent, resume=run_dir, ensemble=ENSEMBLE,
              **SMALL)


def _cli_args(tiny, *extra):
    sets = [a for k, v in {**SMALL, **{f"ensemble.{k}": v for k, v in ENSEMBLE.items()}}.items()
            for a in ("--set", f"{k}={v!r}")]
    return ["audit", "--model", tiny["factory"], "--weights", str(tiny["weights"]), "--data", str(tiny["data"]),
            *sets, *extra]


def test_cli_json_matches_summary_and_report_rerenders_identically(audited, tiny, tmp_path):
    """The command line builds the same audit as the Python API (so it resumes that run with every
    cell reused), prints summary.json with --json, and `fisherscope report` re-renders it byte for byte."""
    _, first = audited
    run_dir = tmp_path / first.name
    shutil.copytree(first, run_dir)
    lines = (run_dir / "results.jsonl").read_text()
    res = runner.invoke(app, [*_cli_args(tiny, "--json", "--quiet", "--out", str(tmp_path), "--run-dir", str(run_dir))])
    assert res.exit_code == 0, res.output
    assert (run_dir / "results.jsonl").read_text() == lines  # nothing recomputed
    printed = json.loads(res.stdout)
    assert printed == json.loads((run_dir / "summary.json").read_text())
    assert " ".join(printed["headline"].split()) in " ".join(res.stderr.split())
    md, summary = (run_dir / "report.md").read_bytes(), (run_dir / "summary.json").read_bytes()
    (run_dir / "report.md").unlink()
    res = runner.invoke(app, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert (run_dir / "report.md").read_bytes() == md
    assert (run_dir / "summary.json").read_bytes() == summary


@pytest.mark.slow
def test_cli_audits_from_scratch(tiny, tmp_path):
    res = runner.invoke(app, [*_cli_args(tiny, "--json", "--quiet", "--out", str(tmp_path / "runs"))])
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads(res.stdout) == json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def no_attack(monkeypatch):
    """Fail the test if any attack (or the run directory) is started."""
    import fisherscope.experiments.audit as mod
    from fisherscope.attacks.base import Attack

    def boom(*a, **k):
        raise AssertionError("an attack ran before the bad input was reported")

    monkeypatch.setattr(Attack, "__call__", boom)
    monkeypatch.setattr(Attack, "run", boom)
    monkeypatch.setattr(mod, "run_experiment", boom, raising=False)


def _bad(tiny, tmp_path, *args):
    res = runner.invoke(app, ["audit", "--data", str(tiny["data"]), "--out", str(tmp_path / "runs"), *args])
    assert res.exit_code == 1, res.output
    assert not (tmp_path / "runs").exists()
    return " ".join(res.output.split())


def test_bad_weights_name_the_keys(tiny, tmp_path, no_attack):
    from safetensors.torch import save_file

    state = dict(tiny["net"].state_dict())
    state["fc.weight"] = torch.zeros(5, 4 * 8 * 8)
    state["head.extra"] = torch.zeros(2)
    del state["conv.bias"]
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    msg = _bad(tiny, tmp_path, "--model", tiny["factory"], "--weights", str(bad))
    assert "'conv.bias'" in msg and "'head.extra'" in msg and "'fc.weight'" in msg


def test_pickle_checkpoint_is_refused_with_the_safe_alternative(tiny, tmp_path, no_attack):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), path)  # the whole module, pickled
    msg = _bad(tiny, tmp_path, "--model", tiny["factory"], "--weights", str(path))
    assert "refuses" in msg and "state_dict" in msg and "safetensors" in msg


def test_probability_outputs_are_refused_with_the_fix(tiny, tmp_path, no_attack):
    msg = _bad(tiny, tmp_path, "--model", tiny["factory"].replace(":make", ":make_probs"))
    assert "probabilities" in msg and "logits" in msg


def test_input_shape_mismatch_is_named(tiny, tmp_path, no_attack):
    msg = _bad(tiny, tmp_path, "--model", tiny["factory"], "--weights", str(tiny["weights"]), "--input-shape", "3,32,32")
    assert "[1, 8, 8]" in msg and "[3, 32, 32]" in msg


def test_default_budgets_scale_with_the_data():
    from fisherscope.experiments.audit import default_budgets

    kind, linf, l2 = default_budgets((1, 28, 28), 0.8)
    assert kind == "MNIST-like" and linf == [0.1, 0.3] and l2 == [1.0, 2.0]
    kind, linf, l2 = default_budgets((3, 32, 32), 0.1)
    assert kind == "natural images" and linf == [2 / 255, 8 / 255] and l2 == [0.25, 0.5]
    _, _, l2 = default_budgets((3, 64, 64), 0.1)
    assert l2 == [0.5, 1.0]


def test_weights_digest_sees_every_weight(tiny):
    from fisherscope.experiments.audit import weights_digest

    net = tiny["net"]
    d = weights_digest(net)
    assert d == weights_digest(net)
    import copy

    other = copy.deepcopy(net)
    with torch.no_grad():
        other.conv.weight[0, 0, 0, 0] += 1e-6
    assert weights_digest(other) != d


@pytest.mark.parametrize("args, hint", [
    (["--linf-eps", "abc"], "--linf-eps"),
    (["--ensemble", "strong"], "--ensemble"),
    (["--input-shape", "28,28"], "--input-shape"),
    (["--resume", "yes"], "Got unexpected extra argument"),
])
def test_audit_usage_errors_exit_2(args, hint, tmp_path):
    res = runner.invoke(app, ["audit", "--out", str(tmp_path / "runs"), *args])
    assert res.exit_code == 2, res.output
    assert hint in res.output
    assert not (tmp_path / "runs").exists()
