"""The ``fisherscope`` command line (typer + rich).

Subcommands: ``demo`` (the main job), ``audit`` (a user's model and data), ``reproduce``, ``report``, ``train``, ``models``,
``data list|download``, ``list``, ``env``, ``results``.

Global options: ``--version``, ``--log-level``. Exit codes: 0 success, 1 a failure the
message explains (bad config, missing data, a write that failed), 2 a usage error (unknown
option or command, a malformed value). Heavy libraries (torch, scikit-learn) are imported
inside the commands, so ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="fisherscope",
    help="The Fisher information as a working instrument for adversarial robustness.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: what is available locally, and downloading them.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Dataset folder (default: $FISHERSCOPE_DATA, then ~/.cache/fisherscope/data)."),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Model checkpoint cache (default: $FISHERSCOPE_CACHE, then ~/.cache/fisherscope/models)."),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Parent folder of run directories.")]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"fisherscope {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="Logging level of fisherscope's per-stage log lines: DEBUG, INFO, WARNING or ERROR "
        "(default: $FISHERSCOPE_LOGLEVEL, then WARNING).")] = "",
) -> None:
    """The Fisher information as a working instrument for adversarial robustness."""
    level = (log_level or os.environ.get("FISHERSCOPE_LOGLEVEL", "WARNING")).upper()
    if level not in LOG_LEVELS:
        raise typer.BadParameter(f"must be one of {', '.join(LOG_LEVELS)}; got {level!r}.", param_hint="--log-level")
    logging.getLogger("fisherscope").setLevel(level)


def _device(value: str) -> str | None:
    """``--device auto|cpu|cuda|cuda:N`` -> the Context's device (None: auto)."""
    import re

    if value == "auto":
        return None
    if value == "cpu":
        return "cpu"
    if re.fullmatch(r"cuda(:\d+)?", value):
        import torch

        if not torch.cuda.is_available():
            raise typer.BadParameter(f"{value!r} was asked for but torch sees no CUDA device on this machine; "
                                     "use --device cpu (or auto).", param_hint="--device")
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            raise typer.BadParameter(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s).",
                                     param_hint="--device")
        return value
    raise typer.BadParameter(f"must be auto, cpu, cuda or cuda:N; got {value!r}.", param_hint="--device")


DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
WorkersOpt = Annotated[int, typer.Option(
    "--workers", min=1, help="Processes sharing the run's cells: this command relaunched as a torchrun of N ranks "
    "on this machine, each with OMP_NUM_THREADS = cores / N unless set (same numbers as 1; on CPU, N = the "
    "number of cores is usually fastest). 1: this process.")]

_ARGV: list[str] | None = None  # the command line main() was given (what --workers relaunches)


def _strip_workers(args: list[str]) -> list[str]:
    """``args`` without ``--workers N`` / ``--workers=N``."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _relaunch(workers: int) -> None:
    """Run this command line again as ``workers`` torchrun ranks on this machine and exit with
    their status (``--workers N``; 1 returns at once and the command runs here)."""
    import subprocess
    import sys

    from . import distributed

    if workers == 1:
        return
    if distributed.world().distributed:
        raise typer.BadParameter("this process is already a torchrun rank; drop --workers (torchrun's "
                                 "--nproc-per-node sets the number of processes).", param_hint="--workers")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, _cores() // workers)))
    args = _strip_workers(list(_ARGV if _ARGV is not None else sys.argv[1:]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
           "-m", "fisherscope", *args]
    raise typer.Exit(subprocess.run(cmd, env=env).returncode)


def _fail(exc: Exception) -> None:
    import errno

    from ._io import WriteError, describe_write_error
    from .exceptions import ModelNotSavedError

    msg = str(exc)
    if isinstance(exc, ModelNotSavedError):
        m = exc.trained.metrics
        acc = m.get("test_accuracy")
        msg = (f"{exc.trained.arch} was trained (train accuracy {m.get('train_accuracy', float('nan')):.4f}"
               f"{f', test accuracy {acc:.4f}' if isinstance(acc, float) else ''}) but NOT saved: "
               f"{str(exc.__cause__ or exc).rstrip('.')}. Run the same command again with --cache-dir pointing at a "
               "writable folder with free space (or set $FISHERSCOPE_CACHE) to train and keep it there; "
               "no partial file was left behind.")
    if (isinstance(exc, OSError) and not isinstance(exc, WriteError) and exc.filename
            and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST)):
        msg = describe_write_error(exc.filename, exc, what="file or folder",
                                   fix="Choose another --out or --cache-dir folder, or free the space.")
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(msg)}")
    raise typer.Exit(code=1)


def _context(data_dir: Path | None, cache_dir: Path | None, quiet: bool, device: str = "auto") -> Any:
    from .experiments import Context

    return Context(data_dir=data_dir, cache_dir=cache_dir, progress=not quiet, device=_device(device))


def configs_dirs() -> list[Path]:
    """Folders searched for ``fisherscope reproduce NAME``: ./configs, the source tree's, the packaged copy."""
    here = Path(__file__).resolve().parent
    dirs = [Path.cwd() / "configs", here.parent.parent / "configs", here / "_configs"]
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def find_config(name: str) -> Path:
    """Resolve a config name (``model-accuracy``) or path to a TOML file."""
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        return p
    for d in configs_dirs():
        cand = d / f"{name.removesuffix('.toml')}.toml"
        if cand.is_file():
            return cand
    available = sorted({c.stem for d in configs_dirs() for c in d.glob("*.toml")})
    raise FileNotFoundError(
        f"no config named {name!r}; available: {available or 'none found'} "
        f"(searched {[str(d) for d in configs_dirs()]}). Pass a path to a .toml file or one of these names."
    )


def _run_and_report(config: Any, out: Path, resume: bool | Path, ctx: Any) -> Path:
    from . import distributed
    from .experiments import run_experiment

    try:
        run = run_experiment(config, out, resume=resume, context=ctx)
    finally:
        distributed.finish()
    if not distributed.world().is_main:  # torchrun: rank 0 says where the shared run is
        return run.dir
    console.print(f"[green]results:[/] {run.results_path}")
    console.print(f"[green]report:[/]  {run.dir / 'report.html'}")
    console.print(f"          {run.dir / 'report.md'}")
    return run.dir


@app.command()
def demo(
    out: OutOpt = Path("runs"),
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue the latest demo run without redoing finished cells.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for training and sampling.")] = 0,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress (bars on a terminal, log lines otherwise).")] = False,
) -> None:
    """Run the main job: the fisherscope tour on scikit-learn's digits, offline; prints where the report is."""
    from .experiments import DemoConfig

    try:
        _run_and_report(DemoConfig(seed=seed), out, resume, _context(data_dir, cache_dir, quiet, device))
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(exc)


def _floats_opt(value: str | None, flag: str) -> list[float] | None:
    """``"0.1,0.3"`` or ``"2/255,8/255"`` -> [0.1, 0.3]."""
    if value is None:
        return None
    out = []
    for part in value.split(","):
        part = part.strip()
        try:
            num, _, den = part.partition("/")
            out.append(float(num) / (float(den) if den else 1.0))
        except ValueError:
            raise typer.BadParameter(f"must be comma-separated budgets such as 0.1,0.3 or 2/255,8/255; got {value!r}.",
                                     param_hint=flag) from None
    return out


def _shape_opt(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        shape = [int(v) for v in value.replace("x", ",").split(",")]
    except ValueError:
        shape = []
    if len(shape) != 3 or min(shape) < 1:
        raise typer.BadParameter(f"must be C,H,W such as 3,32,32; got {value!r}.", param_hint="--input-shape")
    return shape


def _ensemble_base(name: str) -> dict[str, Any]:
    from .experiments.audit import QUICK_ENSEMBLE
    from .experiments.config import config_to_dict
    from .experiments.robust_kit import EnsembleSpec

    return dict(config_to_dict(EnsembleSpec() if name == "standard" else QUICK_ENSEMBLE))


@app.command()
def audit(
    model: Annotated[str | None, typer.Option("--model", "-m", help="An architecture name (with --weights), a fisherscope "
                                              "checkpoint, a TorchScript or torch.export (.pt2) file, or "
                                              "package.module:factory / file.py:factory (with --weights). Default: the "
                                              "built-in digits model.")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", "-w", help="State dict (.pt, read with weights_only=True) "
                                                 "or .safetensors file for --model.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="A dataset name (digits, mnist, cifar10), a .npz file, "
                                             "an image folder (one subfolder per class) or CIFAR-style batches. "
                                             "Default: the digits test split.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="train or test (datasets, .npz, CIFAR batches); a "
                                              "subfolder of an image folder.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="Audit a seeded random draw of this many images "
                                              "(default: all; 200 for the built-in digits audit).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the draw, the attacks and the detector splits.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per model call.")] = 128,
    normalize: Annotated[str | None, typer.Option("--normalize", help="The model expects (x - mean) / std: 'mean,std', "
                                                  "per channel 'm1,m2,m3,s1,s2,s3', or imagenet / cifar10 / mnist.")] = None,
    as_logits: Annotated[bool, typer.Option("--as-logits", help="The model returns probabilities (a final softmax): "
                                            "take their log as logits.")] = False,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="The number of classes the model outputs "
                                                    "(passed to factories and architectures; checked).")] = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="C,H,W the model takes, e.g. 1,28,28 "
                                                    "(checked against the data).")] = None,
    resize: Annotated[int | None, typer.Option("--resize", help="Image folders: resize the shorter side to this.")] = None,
    channels: Annotated[int | None, typer.Option("--channels", help="Image folders: 1 (grey) or 3 (RGB).")] = None,
    linf_eps: Annotated[str | None, typer.Option("--linf-eps", help="L∞ budgets, e.g. 2/255,8/255 (default: scaled "
                                                 "to the data).")] = None,
    l2_eps: Annotated[str | None, typer.Option("--l2-eps", help="L2 budgets, e.g. 0.5,1 (default: scaled to the "
                                               "data's dimension).")] = None,
    ensemble: Annotated[str | None, typer.Option("--ensemble", help="standard (AutoAttack's settings; the default for "
                                                 "--model) or quick (a stated reduction; the built-in default).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON summary (summary.json) on stdout.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any other audit setting, e.g. --set chunk=250, "
                                                   "--set minimal_samples=50, --set ensemble.square_queries=1000.")] = None,
    out: OutOpt = Path("runs"),
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue the latest audit run (same model and "
                                         "data) without redoing finished cells.")] = False,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Resume this run directory.")] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Audit your model on your data: accuracy and calibration, worst-case robust accuracy, minimal
    perturbations, the Fisher spectrum, OSSA vs PGD, detectors (oblivious and adaptive), saliency maps.

    With no arguments it audits the built-in digits model offline (about a minute or two).
    Example: fisherscope audit --model pkg.mod:factory --weights w.safetensors --data images/ --limit 200 --json
    """
    from .experiments.audit import audit as run_audit

    _relaunch(workers)
    linf = _floats_opt(linf_eps, "--linf-eps")
    l2 = _floats_opt(l2_eps, "--l2-eps")
    shape = _shape_opt(input_shape)
    if ensemble is not None and ensemble not in ("standard", "quick"):
        raise typer.BadParameter(f"must be standard or quick; got {ensemble!r}.", param_hint="--ensemble")
    say = err_console if json_out else console
    try:
        from .experiments import parse_overrides

        settings = parse_overrides(set_ or ())
        ens = {k.split(".", 1)[1]: settings.pop(k) for k in list(settings) if k.startswith("ensemble.")}
        summary = run_audit(model, data, out=out, weights=weights, normalize=normalize, as_logits=as_logits,
                            num_classes=num_classes, input_shape=shape, split=split, limit=limit, seed=seed,
                            batch_size=batch_size, resize=resize, channels=channels, linf_eps=linf, l2_eps=l2,
                            ensemble=ensemble if not ens else ens if ensemble is None else
                            {**_ensemble_base(ensemble), **ens}, resume=run_dir or resume, data_dir=data_dir,
                            cache_dir=cache_dir, device=_device(device), progress=not quiet, **settings)
    except (ValueError, TypeError, OSError, RuntimeError, KeyError) as exc:
        _fail(exc)
        return
    finally:
        from . import distributed

        distributed.finish()
    if not distributed.world().is_main:  # torchrun: rank 0 alone says where the shared run is
        return
    run_path = Path(summary["run_dir"])
    say.print(f"[bold]{summary['headline']}[/]")
    say.print(f"[green]report:[/]  {run_path / 'report.html'}")
    say.print(f"          {run_path / 'report.md'}")
    say.print(f"[green]summary:[/] {run_path / 'summary.json'}")
    if json_out:
        typer.echo((run_path / "summary.json").read_text(encoding="utf-8"), nl=False)


@app.command()
def reproduce(
    name: Annotated[str, typer.Argument(help="Config name in configs/ (e.g. model-accuracy) or a path to a TOML file.")],
    out: OutOpt = Path("runs"),
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue the latest run of this config.")] = False,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Resume this run directory.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key, e.g. --set seed=1.")] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run a paper table/figure config from configs/ (resumable)."""
    from .experiments import load_config

    _relaunch(workers)
    try:
        config = load_config(find_config(name), set_ or ())
        _run_and_report(config, out, run_dir or resume, _context(data_dir, cache_dir, quiet, device))
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        _fail(exc)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<timestamp>-<name>).")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress (bars or log lines).")] = False,
) -> None:
    """Re-render a run's report from its stored results alone (no model is loaded or run)."""
    from ._progress import show_progress
    from .experiments.base import render_stored

    try:
        with show_progress(not quiet):
            html_path = render_stored(run_dir)
        console.print(f"[green]report:[/]  {html_path}")
        console.print(f"          {run_dir / 'report.md'}")
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        _fail(exc)


@app.command()
def train(
    arch: Annotated[str, typer.Argument(help="Architecture name (see `fisherscope models`).")],
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Dataset name (default: the preset's dataset).")] = None,
    preset: Annotated[str | None, typer.Option(help="Named hyperparameter preset (default: the architecture's).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Mini-batch size.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (training is deterministic given it).")] = 0,
    defense: Annotated[str | None, typer.Option(help="Defensive training: fisher, label_smoothing or adversarial.")] = None,
    mu: Annotated[float | None, typer.Option(help="Fisher penalty weight (--defense fisher), e.g. 0.02.")] = None,
    penalty: Annotated[str | None, typer.Option(help="softmax_trace (default), log_softmax_trace, input_trace or top_eigenvalue.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Label smoothing (--defense label_smoothing, or with fisher).")] = None,
    attack: Annotated[str | None, typer.Option(help="Attack for --defense adversarial: fgsm, pgd, fgm, ...")] = None,
    attack_params: Annotated[str | None, typer.Option("--attack-params", help='JSON hyperparameters of --attack, e.g. \'{"eps": 0.3, "steps": 7}\'.')] = None,
    mix: Annotated[float | None, typer.Option(help="Weight of the adversarial loss (default 0.5; Madry's PGD training: 1).")] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a model (or load it from the checkpoint cache) and report its accuracy.

    Defensive training: ``--defense fisher --mu 0.02 [--penalty softmax_trace]``,
    ``--defense label_smoothing --alpha 0.1``, ``--defense adversarial --attack pgd
    --attack-params '{"eps": 0.3, "steps": 7}' --mix 1``.
    """
    from .experiments.common import trained_model

    overrides: dict[str, Any] = {k: v for k, v in dict(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer).items() if v is not None}
    try:
        spec = _defense_spec(defense, mu=mu, penalty=penalty, alpha=alpha, attack=attack,
                             attack_params=attack_params, mix=mix)
        if spec is not None:
            overrides["defense"] = spec
        if dataset is None:
            from .training import resolve_training

            dataset = resolve_training(preset or arch)["dataset"] or "digits"
        trained = trained_model(arch, dataset, _context(data_dir, cache_dir, quiet), seed=seed,
                                preset=preset, overrides=overrides)
    except (ValueError, TypeError, OSError, RuntimeError, FloatingPointError) as exc:
        _fail(exc)
        return
    m = trained.metrics
    src = "loaded from cache" if trained.from_cache else "trained"
    console.print(
        f"{arch} on {dataset}: {src} — train accuracy {m['train_accuracy']:.4f}, "
        f"test accuracy {m['test_accuracy']:.4f}, training time {m['wall_time_s']:.1f} s"
    )
    if trained.config.get("defense") is not None:
        console.print(f"defense: {json.dumps(trained.config['defense'], sort_keys=True)}")
    console.print(f"checkpoint: {trained.checkpoint}")


def _defense_spec(kind: str | None, **options: Any) -> dict[str, Any] | None:
    """The ``defense`` mapping of the ``train`` options (validated by train_model)."""
    allowed = {
        "fisher": {"mu", "penalty", "alpha"},
        "label_smoothing": {"alpha"},
        "adversarial": {"attack", "attack_params", "mix"},
    }
    given = {k: v for k, v in options.items() if v is not None}
    if kind is None:
        if given:
            owners = sorted({d for d, keys in allowed.items() if set(given) & keys})
            flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
            raise ValueError(f"{flags} need(s) a defense: add {' or '.join('--defense ' + o for o in owners)}.")
        return None
    if kind not in allowed:
        raise ValueError(f"--defense must be one of {sorted(allowed)}; got {kind!r}.")
    extra = sorted(set(given) - allowed[kind])
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise ValueError(f"{flags} do(es) not apply to --defense {kind}.")
    spec: dict[str, Any] = {"kind": kind}
    for key in ("mu", "penalty", "alpha", "attack", "mix"):
        if key in given:
            spec[key] = given[key]
    if "attack_params" in given:
        try:
            params = json.loads(given["attack_params"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"--attack-params must be a JSON object such as '{{\"eps\": 0.3}}'; got {given['attack_params']!r} ({exc}).") from exc
        if not isinstance(params, dict):
            raise ValueError(f"--attack-params must be a JSON object such as '{{\"eps\": 0.3}}'; got {given['attack_params']!r}.")
        spec["params"] = params
    return spec


@app.command()
def models() -> None:
    """List the model architectures and their default training presets."""
    from .models import MODELS
    from .training import PRESETS

    table = Table("name", "description")
    for name, ctor in MODELS.items():
        doc = (ctor.__doc__ or "").strip().splitlines()
        table.add_row(name, doc[0] if doc else "")
    console.print(table)
    ptable = Table("preset", "arch", "dataset", "hyperparameters")
    for pname, p in PRESETS.items():
        hp = {k: v for k, v in p.items() if k not in ("arch", "dataset")}
        ptable.add_row(pname, p.get("arch", ""), p.get("dataset", ""), json.dumps(hp))
    console.print(ptable)


@data_app.command("list")
def data_list(data_dir: DataDirOpt = None) -> None:
    """Show which datasets are available locally and where they came from."""
    from .data import list_datasets, resolve_data_dir

    table = Table("name", "label", "available", "train", "test", "source", "checksum")
    for row in list_datasets(data_dir):
        table.add_row(
            row.name,
            row.label or row.name,
            "yes" if row.available else "no",
            str(row.n_train or "–"),
            str(row.n_test or "–"),
            f"cannot load: {row.error}" if row.error else str(row.source),
            (row.checksum or "")[:16],
        )
    console.print(f"data directory: {resolve_data_dir(data_dir)}")
    console.print(table)


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="mnist, fashion_mnist or cifar10.")],
    data_dir: DataDirOpt = None,
    mirror: Annotated[str | None, typer.Option(help="Base URL to fetch the raw files from instead of the canonical one.")] = None,
    raw_dir: Annotated[Path | None, typer.Option("--raw-dir", help="Convert raw files already in this folder (no network).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the npz exists.")] = False,
) -> None:
    """Fetch the canonical distribution files, check their checksums and write <name>.npz."""
    from .data import download_dataset

    try:
        path = download_dataset(name, data_dir, mirror=mirror, raw_dir=raw_dir, force=force)
    except (ValueError, OSError, RuntimeError) as exc:
        _fail(exc)
        return
    console.print(f"[green]wrote[/] {path}")


@app.command("list")
def list_registries() -> None:
    """Print every registry: models, datasets, attacks (norms, budget, standard setting),
    detectors (feature, supervised), features, experiments, and the packaged configs."""
    for title, (columns, rows) in _registry_tables().items():
        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _registry_tables() -> dict[str, tuple[list[str], list[list[str]]]]:
    """Title -> (column names, rows) of every registry, for ``fisherscope list``."""
    from .attacks import ATTACKS
    from .detectors import DETECTORS
    from .features import FEATURES

    regs = _registries()
    out: dict[str, tuple[list[str], list[list[str]]]] = {}
    for title in ("models", "datasets"):
        out[title] = (["name", "description"], [[k, d] for k, d in regs[title].descriptions()])
    out["attacks"] = (
        ["name", "norms", "budget", "standard setting", "description"],
        [[k, "/".join(cls.norms), cls.budget, cls.standard_description, ATTACKS.describe(k)]
         for k, cls in ATTACKS.items()],
    )
    out["detectors"] = (
        ["name", "feature", "supervised", "description"],
        [[k, cls.feature, _supervised(cls), DETECTORS.describe(k)] for k, cls in DETECTORS.items()],
    )
    out["features"] = (["name", "description"], [[k, d] for k, d in FEATURES.descriptions()])
    out["experiments"] = (["name", "description"], [[k, d] for k, d in regs["experiments"].descriptions()])
    out["configs"] = (["name", "description"], [[k, _describe(v)] for k, v in regs["configs"].items()])
    return out


def _supervised(cls: type) -> str:
    flag = getattr(cls, "supervised", None)
    return ("yes" if flag else "no") if isinstance(flag, bool) else "per instance"


def _describe(value: Any) -> str:
    desc = getattr(value, "description", None)
    if isinstance(desc, str):
        return desc
    doc = (getattr(value, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""


def _registries() -> dict[str, Any]:
    from .data import DATASETS
    from .experiments import EXPERIMENTS
    from .models import MODELS

    regs: dict[str, Any] = {"models": MODELS, "datasets": DATASETS, "experiments": EXPERIMENTS}
    configs = {c.stem: c for d in configs_dirs() for c in sorted(d.glob("*.toml"))}
    regs["configs"] = {name: _ConfigEntry(path) for name, path in configs.items()}
    return regs


class _ConfigEntry:
    def __init__(self, path: Path):
        self.path = path
        try:
            from .experiments.config import read_toml

            self.description = str(read_toml(path).get("description", "")) or str(path)
        except ValueError as exc:
            self.description = f"invalid: {exc}"


@app.command()
def env() -> None:
    """Print versions, git SHA and device (paste this into bug reports)."""
    from .data import resolve_data_dir
    from .experiments.provenance import environment

    info = environment()
    info["data_dir"] = str(resolve_data_dir())
    info["cache_dir"] = os.environ.get("FISHERSCOPE_CACHE", str(Path.home() / ".cache" / "fisherscope" / "models"))
    for k, v in info.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                console.print(f"{kk:>14}: {vv}")
        else:
            console.print(f"{k:>14}: {v}")


@app.command()
def results(
    claims: Annotated[Path, typer.Option("--claims", help="The claims file.")] = Path("docs/results/claims.toml"),
    out: Annotated[Path, typer.Option("--out", help="The summary page to write (or to check).")] = Path("docs/RESULTS.md"),
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if the page differs from what the claims give.")] = False,
) -> None:
    """Generate docs/RESULTS.md (one table of every reproduced claim) from docs/results/claims.toml."""
    from .results_summary import check_results, load_claims, render_results

    try:
        parsed = load_claims(claims)
        if check:
            diff = check_results(parsed, out)
            if diff:
                err_console.print(f"[bold red]{out} is out of date[/] with {claims}; run `fisherscope results` to regenerate it.")
                err_console.print("\n".join(diff[:60]), markup=False, highlight=False, soft_wrap=True)
                raise typer.Exit(code=1)
            console.print(f"{out} is up to date with {claims} ({len(parsed.claims)} claims).")
            return
        out.write_text(render_results(parsed, out), encoding="utf-8")
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(exc)
        return
    console.print(f"[green]wrote[/] {out} ({len(parsed.claims)} claims from {claims})")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    global _ARGV
    _ARGV = None if argv is None else list(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fisherscope").setLevel(os.environ.get("FISHERSCOPE_LOGLEVEL", "WARNING").upper())
    os.environ.setdefault("MPLBACKEND", "Agg")
    app(args=argv, prog_name="fisherscope")
