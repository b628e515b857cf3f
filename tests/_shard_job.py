"""A small run that tests/test_distributed.py makes on one process and under torchrun.

Its cells are the random choices an evaluation makes, per fixed-size image block
(:meth:`Run.blocks` with :func:`fisherscope.distributed.block_generator`): random starts,
random target classes and a noise control; then one cell that reads every block (the
values other ranks computed) and draws a bootstrap, with a cell nested inside it.

``python -m torch.distributed.run --standalone --nproc-per-node N tests/_shard_job.py OUT [RUN_DIR]``
runs it on N processes (resuming RUN_DIR when given); :func:`job` runs it in this process.
``... tests/_shard_job.py OUT --uneven`` runs :func:`uneven_job` instead: one slow cell, then
quick ones, to show that a rank busy with a long cell does not hold back the others.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fisherscope import distributed
from fisherscope.experiments import Run


@dataclass(frozen=True)
class ShardJobConfig:
    name: str = "shard-job"
    kind: str = "shard_job"
    seed: int = 3
    n_images: int = 40
    block_size: int = 6  # a setting of the job: the same on any number of processes


def images(cfg: ShardJobConfig) -> torch.Tensor:
    return torch.linspace(0, 1, cfg.n_images * 16).reshape(cfg.n_images, 1, 4, 4)


def job(out_dir: str | Path, resume: bool | str | Path = False) -> Run:
    cfg = ShardJobConfig()
    x = images(cfg)
    run = Run(cfg, out_dir, resume=resume)

    def block(b: int, part: slice) -> dict[str, Any]:
        g = distributed.block_generator(cfg.seed, b)
        xb = x[part]
        start = (xb + torch.empty_like(xb).uniform_(-0.1, 0.1, generator=g)).clamp(0, 1)  # random start
        target = torch.randint(0, 10, (len(xb),), generator=g)  # random targets
        noise = xb + 0.05 * torch.randn(xb.shape, generator=g)  # a noise control
        return {"start_sum": start.flatten(1).sum(1).tolist(), "target": target.tolist(),
                "noise_norm": noise.flatten(1).norm(dim=1).tolist(), "n": len(xb)}

    blocks = run.blocks("draws", cfg.n_images, cfg.block_size, block, spec={"seed": cfg.seed})

    def summary() -> dict[str, Any]:
        targets = torch.tensor([t for blk in blocks for t in blk["target"]])  # every block, any rank's
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randint(0, len(targets), (500, len(targets)), generator=g)  # bootstrap
        boot = targets[idx].double().mean(1)
        detail = run.cell("summary/detail", lambda: {"n_blocks": len(blocks)}, spec={"seed": cfg.seed})
        return {"n": int(len(targets)), "mean": float(targets.double().mean()),
                "bootstrap_sd": float(boot.std()), "n_blocks": detail["n_blocks"]}

    run.cell("summary", summary, spec={"seed": cfg.seed})
    run.cell("after", lambda: {"ok": True}, spec={"seed": cfg.seed})
    run.wait_for_pending()
    return run


@dataclass(frozen=True)
class UnevenJobConfig:
    name: str = "uneven-job"
    kind: str = "uneven_job"
    seed: int = 0
    slow_s: float = 3.0
    n_quick: int = 6


def uneven_job(out_dir: str | Path) -> Run:
    """A slow cell first, then ``n_quick`` quick ones. With fixed shares (round robin) the rank
    holding the slow cell would also owe half the quick ones; claimed as met, the other
    ranks take every quick cell while the slow one runs."""
    cfg = UnevenJobConfig()
    run = Run(cfg, out_dir)

    def slow() -> dict[str, Any]:
        time.sleep(cfg.slow_s)
        return {"slow": True}

    run.cell("slow", slow, spec={"seed": cfg.seed})
    for i in range(cfg.n_quick):
        run.cell(f"quick/{i}", lambda i=i: {"i": i}, spec={"seed": cfg.seed})
    run.wait_for_pending()
    return run


if __name__ == "__main__":
    if sys.argv[2:] == ["--uneven"]:
        uneven_job(sys.argv[1])
    else:
        job(sys.argv[1], resume=sys.argv[2] if len(sys.argv) > 2 else False)
    distributed.finish()
