"""Regression tests for the defects of issue 17 ("nothing silently wrong, nothing lost").

Each test reproduces one hostile input that gave a silent wrong result, an unhelpful crash
or lost work on the code before the fix, and checks the documented outcome now.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from data_helpers import tiny_brightness_splits
from fisherscope.exceptions import CheckpointError
from fisherscope.models import list_checkpoints
from fisherscope.training import train_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def tiny():
    return tiny_brightness_splits()


def _train(tiny, cache_dir, **kw):
    train, test = tiny
    opts = dict(epochs=3, lr=1e-3, batch_size=32, seed=0, progress=False, test_dataset=test, cache_dir=cache_dir)
    opts.update(kw)
    return train_model("digits_cnn", train, **opts)


# --------------------------------------------------------------- item 2: partials


def _stop_after_first(epoch, record):
    if epoch == 1:
        raise _Interrupt


def _partial(tiny, cache_dir):
    with pytest.raises(_Interrupt):
        _train(tiny, cache_dir, callback=_stop_after_first)
    (path,) = cache_dir.glob("*.partial.pt")
    return path


def _edit(path, fn):
    ckpt = torch.load(path, weights_only=True)
    fn(ckpt)
    torch.save(ckpt, path)


PARTIAL_DAMAGE = {
    # name: (edit, words the message must contain)
    "epoch_at_the_end": (lambda c: c.update(epoch=3), "epoch"),
    "epoch_beyond_the_end": (lambda c: c.update(epoch=7), "in [1, 2]"),
    "epoch_zero": (lambda c: c.update(epoch=0), "in [1, 2]"),
    "epoch_a_string": (lambda c: c.update(epoch="one"), "must be an integer"),
    "epoch_a_float": (lambda c: c.update(epoch=1.0), "must be an integer"),
    "epoch_a_bool": (lambda c: c.update(epoch=True), "must be an integer"),
    "history_too_short": (lambda c: c.update(history=[]), "history"),
    "history_misnumbered": (lambda c: c["history"][0].update(epoch=2), "history[0]"),
    "history_nan_loss": (lambda c: c["history"][0].update(train_loss=float("nan")), "train_loss"),
    "wall_time_negative": (lambda c: c.update(wall_time_s=-1.0), "wall_time_s"),
    "wall_time_string": (lambda c: c.update(wall_time_s="1s"), "wall_time_s"),
    "optimizer_missing": (lambda c: c.pop("optimizer"), "optimizer"),
    "optimizer_not_a_state": (lambda c: c.update(optimizer={"lr": 1}), "optimizer"),
    "generator_garbage": (lambda c: c.update(generator=torch.zeros(3)), "generator"),
    "rng_missing": (lambda c: c.pop("rng"), "rng"),
    "cuda_rng_garbage": (lambda c: c.update(cuda_rng="x"), "cuda_rng"),
    "config_edited": (lambda c: c["config"].update(epochs=2), "not the hash of its stored config"),
}


@pytest.mark.parametrize("damage", sorted(PARTIAL_DAMAGE))
def test_a_partial_checkpoint_is_checked_field_by_field_before_resuming(tiny, tmp_path, damage):
    """Old code: epoch >= epochs skipped training and stored a 1-epoch model as the final
    checkpoint; epoch="one" was a bare int() ValueError naming no file."""
    edit, words = PARTIAL_DAMAGE[damage]
    path = _partial(tiny, tmp_path)
    _edit(path, edit)
    damaged = path.read_bytes()
    with pytest.raises(CheckpointError) as info:
        _train(tiny, tmp_path)
    msg = str(info.value)
    assert path.name in msg and words in msg and "rm '" in msg and "cache_dir" in msg, msg
    assert path.read_bytes() == damaged  # left untouched
    assert not list(tmp_path.glob("digits_cnn-*[0-9a-f].pt"))  # nothing stored as final
    (info_row,) = list_checkpoints(tmp_path)  # listing reports it, does not crash
    assert info_row.status == "corrupt" and path.name in info_row.error


def test_an_intact_partial_still_resumes(tiny, tmp_path):
    _partial(tiny, tmp_path)
    seen = []
    tm = _train(tiny, tmp_path, callback=lambda e, r: seen.append(e))
    assert seen == [2, 3] and len(tm.metrics["history"]) == 3


# ------------------------------------------- item 3: a checkpoint that cannot be written


def _no_files_left(folder):
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def test_training_into_a_cache_under_a_file_keeps_the_trained_model(tiny, tmp_path):
    """Old code: a bare WriteError after training; the model was thrown away."""
    from fisherscope._io import WriteError
    from fisherscope.exceptions import ModelNotSavedError
    from fisherscope.models import save_checkpoint
    from fisherscope.training import evaluate_accuracy

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.raises(ModelNotSavedError) as info:
        _train(tiny, blocker / "sub", epochs=2)  # the partial after epoch 1 fails too
    exc = info.value
    assert isinstance(exc, WriteError) and isinstance(exc, OSError)
    msg = str(exc)
    assert "is a file, not a directory" in msg and "exc.trained" in msg and "cache_dir" in msg, msg
    kept = exc.trained
    assert kept.checkpoint_path is None and not kept.from_cache and len(kept.metrics["history"]) == 2
    train, test = tiny
    assert evaluate_accuracy(kept.model, test.x, test.y) == kept.metrics["test_accuracy"]
    assert blocker.read_text() == "not a folder"
    # where to re-save: another folder; the same request then loads it instead of training
    other = tmp_path / "other"
    path = save_checkpoint(kept, cache_dir=other)
    again = _train(tiny, other, epochs=2)
    assert again.from_cache and again.checkpoint_path == path
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 kept.model.state_dict().values(), strict=True))


@pytest.mark.parametrize("failure, words", [
    (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 78976 vs 78928"),
     "no space left on the device"),
    (OSError(28, "No space left on device"), "no space left on the device"),
    (OSError(30, "Read-only file system"), "read-only or not writable"),
])
def test_a_failed_final_save_names_the_cause_leaves_no_file_and_keeps_the_model(tiny, tmp_path, monkeypatch,
                                                                                failure, words):
    from fisherscope.exceptions import ModelNotSavedError
    from fisherscope.models import checkpoint as ck

    real_save = ck.torch.save

    def save(obj, fh):
        if obj.get("kind") == "final":
            fh.write(b"x" * 100)  # the write had started
            raise failure
        real_save(obj, fh)

    monkeypatch.setattr(ck.torch, "save", save)
    with pytest.raises(ModelNotSavedError, match=words) as info:
        _train(tiny, tmp_path, epochs=1)
    assert info.value.trained.metrics["test_accuracy"] is not None
    assert info.value.path.parent == tmp_path
    assert _no_files_left(tmp_path) == []  # no half-written checkpoint, no temporary file


def test_cli_train_that_cannot_save_says_trained_but_not_saved_and_where_to_retry(tmp_path):
    from typer.testing import CliRunner

    from fisherscope.cli import app

    blocker = tmp_path / "cache"
    blocker.write_text("")
    res = CliRunner().invoke(app, ["train", "digits_cnn", "--epochs", "1", "--quiet", "--cache-dir",
                                   str(blocker / "sub")], env={"COLUMNS": "400"})
    out = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert "was trained" in out and "NOT saved" in out and "--cache-dir" in out, out
    assert "is a file, not a directory" in out and "Traceback" not in out


# ------------------------------------------------ item 7: targets equal to the prediction


@pytest.fixture(scope="module")
def net():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _models import tiny_cnn

    model = tiny_cnn(c=1, side=8, k=5, dtype=torch.float32, batchnorm=True)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = model(x).argmax(1)
    return model, x, pred


def _targeted_attacks():
    from fisherscope.attacks import FGSM, OSSA, PGD, IterativeOSSA

    return {"fgsm": FGSM(eps=0.1), "pgd": PGD(eps=0.1, step_size=0.02, steps=3, random_start=False),
            "ossa": OSSA(eps=1.0), "iterative_ossa": IterativeOSSA(step_size=0.25, steps=2)}


@pytest.mark.parametrize("name", sorted(_targeted_attacks()))
def test_a_target_equal_to_the_clean_prediction_is_an_error(net, name):
    """Old code: FGSM(...).run(model, x, model(x).argmax(1), targeted=True).success was all
    True (no class changed); so was OSSA with the true labels as targets."""
    model, x, pred = net
    atk = _targeted_attacks()[name]
    with pytest.raises(ValueError, match=r"clean prediction.*got 6 of 6 targets equal to it") as info:
        atk.run(model, x, pred, targeted=True)
    assert type(atk).__name__ in str(info.value) and "(model(x).argmax(1) + 1) % K" in str(info.value)
    one = pred.clone()
    one[1:] = (pred[1:] + 1) % 5
    with pytest.raises(ValueError, match=r"got 1 of 6 targets equal to it \(samples \[0\]\)"):
        atk.run(model, x, one, targeted=True)
    if hasattr(atk, "prepare"):
        with pytest.raises(ValueError, match="clean prediction"):
            atk.prepare(model, x, pred, targeted=True)


@pytest.mark.parametrize("name", sorted(_targeted_attacks()))
def test_a_targeted_success_means_the_prediction_became_the_target(net, name):
    model, x, pred = net
    target = (pred + 1) % 5
    res = _targeted_attacks()[name].run(model, x, target, targeted=True)
    with torch.no_grad():
        now = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, now == target)
    assert not bool((res.success & (now == pred)).any())


def test_least_perturbation_excludes_and_counts_targets_equal_to_the_prediction(net):
    from fisherscope.attacks import FGSM
    from fisherscope.evaluation import least_perturbation

    model, x, pred = net
    target = (pred + 1) % 5
    target[:2] = pred[:2]
    lp = least_perturbation(FGSM(eps=0.1), model, x, target, hi=1.0, tol=1e-2, targeted=True)
    assert not bool(lp.correct[:2].any()) and not bool(lp.fooled[:2].any())
    assert bool(torch.isnan(lp.eps[:2]).all())


# ---------------------------------------------------- item 8: the probability guard


@pytest.mark.parametrize("scale", [1.0, 0.999, 0.9, 0.6])  # batches of 16 rows
def test_scaled_probabilities_are_refused_with_the_as_logits_hint(scale):
    """Old code: 0.999 * softmax passed check_logits and was attacked as logits."""
    from fisherscope import check_logits

    p = torch.softmax(torch.randn(16, 10, generator=torch.Generator().manual_seed(0)), 1) * scale
    with pytest.raises(ValueError, match=r"looks like probabilities.*as_logits\(model, output='probs'\)"):
        check_logits(p)


def test_an_attack_on_a_model_returning_scaled_probabilities_is_refused(net):
    from fisherscope.attacks import FGSM

    model, x, pred = net
    probs_model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))

    class Scaled(torch.nn.Module):
        def forward(self, z):
            return 0.999 * probs_model(z)

    with pytest.raises(ValueError, match="looks like probabilities"):
        FGSM(eps=0.1).run(Scaled().eval(), x, pred)


def _untrained_small_positive_logits():
    """An untrained net whose logits happen to be all in [0, 1], rows summing to 0.61..0.68
    (the captum peer test's model): legitimate logits."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5),
    ).double().eval()  # fmt: skip
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("out", [
    torch.zeros(4, 10),  # a constant model: uniform softmax, legitimate logits
    torch.full((4, 10), 0.3),  # rows sum to 3
    torch.tensor([[0.2, 0.1], [0.1, 0.1]]),  # rows sum to 0.3 and 0.2
    torch.tensor([[-0.1, 0.5, 0.6]]),  # a negative value: not probabilities
    torch.tensor([[0.3, 0.3], [0.3, 0.4]]),  # row sums in [0.5, 1] but different
    _untrained_small_positive_logits(),
])
def test_logits_that_merely_look_small_pass(out):
    from fisherscope import check_logits

    assert check_logits(out) is out


# ------------------------------------------------------- item 9: thread counts recorded


def test_the_thread_count_is_recorded_per_epoch_and_in_the_checkpoint(tiny, tmp_path):
    from fisherscope.models import load_checkpoint

    tm = _train(tiny, tmp_path, epochs=2, num_threads=1)
    assert tm.metrics["num_threads"] == 1
    assert [h["num_threads"] for h in tm.metrics["history"]] == [1, 1]
    again = load_checkpoint(tm.checkpoint_path)
    assert [h["num_threads"] for h in again.metrics["history"]] == [1, 1]


def test_a_run_records_its_thread_count(tmp_path):
    from fisherscope.experiments.runner import Run

    cfg = _tiny_config()
    run = Run(cfg, tmp_path)
    run.record("a", {"v": 1.0})
    assert run.store.record("a")["torch_threads"] == torch.get_num_threads()


def _tiny_config():
    from fisherscope.cli import find_config
    from fisherscope.experiments import load_config

    return load_config(find_config("model-accuracy"))


def test_weights_at_one_and_two_threads_agree_within_the_documented_tolerance(tiny):
    """docs/training-measurements.md promises 1e-4 (measured 2.4e-5 on the demo model)."""
    a = _train(tiny, None, cache=False, num_threads=1)
    b = _train(tiny, None, cache=False, num_threads=2)
    diff = max(float((a.model.state_dict()[k] - v).abs().max()) for k, v in b.model.state_dict().items()
               if v.is_floating_point())
    assert diff <= 1e-4, diff


# ------------------------------------------ item 10: one warning per call, as_logits, budgets


def _public_calls():
    from fisherscope import fisher
    from fisherscope.attacks import ATTACKS
    from fisherscope.evaluation import (
        fooling_ratio,
        least_perturbation,
        robust_accuracy,
        transfer_matrix,
    )

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    calls = {}
    for key, cls in sorted(ATTACKS.items()):
        atk = cls(**cls.standard)
        calls[f"{key}.run"] = lambda m, x, y, atk=atk: atk.run(m, x, y, generator=g())
        calls[f"{key}.run(y=None)"] = lambda m, x, y, atk=atk: atk.run(m, x, generator=g())
        calls[f"{key}()"] = lambda m, x, y, atk=atk: atk(m, x, y, generator=g())
        if hasattr(atk, "prepare"):
            calls[f"{key}.prepare"] = lambda m, x, y, atk=atk: atk.prepare(m, x, y)
    for name in ("fisher_spectrum", "fisher_trace", "fisher_matrix", "logits_jacobian", "param_fisher_trace",
                 "fisher_sensitivity", "param_fisher_form"):
        fn = getattr(fisher, name)
        calls[name] = lambda m, x, y, f=fn: f(m, x)
    fgsm = ATTACKS["fgsm"](eps=0.1)
    calls["fooling_ratio"] = lambda m, x, y: fooling_ratio(m, x, x.clone(), y)
    calls["least_perturbation"] = lambda m, x, y: least_perturbation(fgsm, m, x, y, hi=1.0, tol=0.05)
    calls["transfer_matrix"] = lambda m, x, y: transfer_matrix(fgsm, [m], [m], x, y)
    calls["robust_accuracy"] = lambda m, x, y: robust_accuracy(m, x, y, norm="linf", eps=0.1, checks=None,
                                                               generator=g())
    return calls


PUBLIC_CALLS = _public_calls()


@pytest.mark.parametrize("name", sorted(PUBLIC_CALLS))
def test_a_model_in_training_mode_gets_one_warning_per_public_call(net, name):
    """Old code: two ModelModeWarnings per attack.run (and per fooling_ratio), three per
    transfer_matrix; logits_jacobian crashed inside vmap on a BatchNorm model in training mode."""
    from fisherscope import ModelModeWarning

    model, x, pred = net
    model.train()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            PUBLIC_CALLS[name](model, x, pred)
        mode = [w for w in caught if issubclass(w.category, ModelModeWarning)]
        assert len(mode) == 1, [str(w.message)[:60] for w in mode]
        assert mode[0].filename == __file__  # points at the caller's line, not at fisherscope
        assert all(m.training for m in model.modules())  # every module's mode restored
    finally:
        model.eval()


def test_as_logits_follows_the_wrapped_models_mode():
    """Old code: as_logits returned a module in training mode around an eval-mode model."""
    from fisherscope import ModelModeWarning
    from fisherscope.attacks import FGSM
    from fisherscope.models import AsLogits, as_logits

    net_ = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Dropout(0.2),
                               torch.nn.Softmax(dim=1)).eval()
    wrapped = as_logits(net_)
    assert isinstance(wrapped, AsLogits) and not wrapped.training
    x = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelModeWarning)
        FGSM(eps=0.1).run(wrapped, x)  # no warning: nothing is in training mode
    assert wrapped.train() is wrapped and wrapped.training and net_.training and net_[2].training
    wrapped.eval()
    assert not wrapped.training and not net_.training
    net_.train()
    assert wrapped.training  # follows the wrapped model, whoever switches it
    net_.eval()


@pytest.mark.parametrize("cls, params, warns", [
    ("PGD", {"eps": 8}, True),
    ("FGSM", {"eps": 1.5}, True),
    ("APGD", {"eps": 2.0, "norm": "linf"}, True),
    ("PGD", {"eps": 8 / 255}, False),
    ("PGD", {"eps": 1.0}, False),  # exactly the whole range: allowed
    ("PGD", {"eps": 8.0, "norm": "l2"}, False),  # an L2 radius may exceed the range
    ("FGSM", {"eps": 1.5, "bounds": (-1.0, 1.0)}, False),
])
def test_an_linf_budget_beyond_the_input_range_warns(cls, params, warns):
    """Old code: PGD(eps=8) on [0, 1] images (the 8 vs 8/255 slip) was accepted silently."""
    from fisherscope import BudgetWarning, attacks

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(attacks, cls)(**params)
    budget = [w for w in caught if issubclass(w.category, BudgetWarning)]
    assert len(budget) == int(warns), [str(w.message) for w in caught]
    if warns:
        msg = str(budget[0].message)
        assert "larger than the whole input range" in msg and "bounds" in msg
        if "eps=8 " in msg:
            assert "eps=8/255" in msg
