"""Experiments: TOML configs, a resumable runner, reports, the demo and paper reproductions."""

from __future__ import annotations

from . import (  # noqa: F401  (register the experiment kinds and demo sections)
    accuracy,
    adaptive_detection,
    audit,
    demo,
    demo_attacks,
    demo_defend,
    demo_detect,
    demo_inspect,
    demo_ossa,
    hendrycks_gimpel,
    hendrycks_gimpel_detection,
    martin_elster,
    robustness,
    shen,
    unified_detection,
    zhao,
    zhao_detection,
    zhao_table3,
)
from .base import EXPERIMENTS, Context, Experiment, load_config, parse_overrides, run_experiment
from .config import config_from_dict, config_hash, config_to_dict
from .kit import DEMO_SECTIONS, DemoConfig
from .report import render_report
from .runner import Run, find_latest_run

__all__ = [
    "DEMO_SECTIONS",
    "EXPERIMENTS",
    "Context",
    "DemoConfig",
    "Experiment",
    "Run",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "find_latest_run",
    "load_config",
    "parse_overrides",
    "render_report",
    "run_experiment",
]
