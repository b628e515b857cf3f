"""Sharding work over the processes of a ``torchrun`` launch (gloo on CPU, NCCL on GPUs).

``torchrun --nproc-per-node N -m fisherscope reproduce CONFIG`` starts N processes with
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (and a rendezvous) in their environment. Each
rank runs the same experiment code; the runner (:class:`fisherscope.experiments.Run`)
computes only the cells :func:`owner` gives to its rank, reads the others from the one
shared results store, and rank 0 renders the report once every cell is stored. Nothing
else crosses processes: the results themselves travel through the store (a file on a
shared file system), the process group only agrees on the run directory at the start.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) :func:`world` is rank 0 of 1, nothing is
initialised, and every helper here is a no-op: the single-process path is unchanged.

Determinism: which rank computes a cell never changes its value. Cells are pure functions
of their spec and seed their own generators (per cell, or per fixed-size image block with
:func:`block_generator`; the block size comes from the config, never from the world size),
so a run on N processes stores the same values as a run on one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ._validation import NON_NEGATIVE_INT, POSITIVE_INT, check_param

__all__ = [
    "World",
    "barrier",
    "block_generator",
    "block_seed",
    "broadcast_object",
    "device_for",
    "exclusive",
    "finish",
    "init",
    "owner",
    "shard",
    "world",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a collective (the start-up agreement, :func:`barrier`) may wait for the other
#: ranks; ``$FISHERSCOPE_DIST_TIMEOUT`` overrides it. Waiting for another rank's *cell*
#: is not a collective: it polls the results store and has no limit.
DEFAULT_TIMEOUT_S = 3600.0

_control_group: Any = None  # a gloo group for the object collectives when the default is NCCL


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that creates the run directory and renders the report."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"fisherscope.distributed: ${name} must be an integer; got {raw!r}. It is set by torchrun; "
            "unset it, or launch with torchrun."
        ) from None


def world(env: Mapping[str, str] | None = None) -> World:
    """This process's :class:`World`, from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``.

    Without them (a plain ``python -m fisherscope``) it is rank 0 of 1.
    """
    env = os.environ if env is None else env
    size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local = _env_int(env, "LOCAL_RANK", rank)
    check_param("fisherscope.distributed", "WORLD_SIZE", size, POSITIVE_INT,
                fix="It is set by torchrun (--nproc-per-node, --nnodes).")
    if not 0 <= rank < size:
        raise ValueError(f"fisherscope.distributed: RANK must be in [0, {size}); got {rank}. "
                         "RANK and WORLD_SIZE are set by torchrun; do not set them by hand.")
    return World(rank=rank, size=size, local_rank=local)


def device_for(device: str | None, w: World | None = None) -> str | None:
    """The device of this rank: ``cuda`` (or auto with CUDA present) becomes ``cuda:LOCAL_RANK``.

    One GPU per process, as torchrun launches them; an explicit ``cuda:N``, ``cpu`` and a
    single-process run are returned unchanged.
    """
    w = world() if w is None else w
    if not w.distributed or device not in (None, "cuda") or not torch.cuda.is_available():
        return device
    return f"cuda:{w.local_rank % torch.cuda.device_count()}"


def _timeout() -> _dt.timedelta:
    raw = os.environ.get("FISHERSCOPE_DIST_TIMEOUT")
    seconds = DEFAULT_TIMEOUT_S if not raw else float(raw)
    return _dt.timedelta(seconds=seconds)


def init(device: str | None = None) -> World:
    """Join the process group of a torchrun launch (once; later calls return the world).

    The backend is NCCL when this rank works on a CUDA device, gloo otherwise; the object
    collectives used here run on a gloo group either way. A single process initialises nothing.
    """
    global _control_group
    w = world()
    if not w.distributed:
        return w
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - every supported torch build has it
        raise RuntimeError("fisherscope was launched by torchrun, but this torch build has no torch.distributed.")
    if not dist.is_initialized():
        dev = device_for(device, w)
        cuda = dev is not None and dev.startswith("cuda")
        backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
        if cuda:
            torch.cuda.set_device(torch.device(str(dev)))
        dist.init_process_group(backend=backend, timeout=_timeout())
        log.info("rank %d of %d joined the process group (%s)", w.rank, w.size, backend)
    if _control_group is None:
        _control_group = (dist.new_group(backend="gloo", timeout=_timeout())
                          if dist.get_backend() != "gloo" else dist.group.WORLD)
    return w


def finish() -> None:
    """Leave the process group :func:`init` joined (a no-op when none was joined)."""
    global _control_group
    if not world().distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


def _group() -> Any:
    if not world().distributed:
        return None
    init()
    return _control_group


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (picklable objects; a no-op in one process)."""
    group = _group()
    if group is None:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def barrier() -> None:
    """Wait until every rank got here (a no-op in one process)."""
    group = _group()
    if group is None:
        return
    import torch.distributed as dist

    dist.barrier(group=group)


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` while the block runs, under torchrun only.

    For work every rank would otherwise repeat at once, such as training a model that is
    not cached yet: one rank trains and saves it, the others wait and then load it. In a
    single process (or where the lock file cannot be made, e.g. a read-only cache) it
    does nothing.
    """
    if not world().distributed:
        yield
        return
    lock = Path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.info("no lock at %s (%s); ranks may repeat the same work", lock, exc)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---------------------------------------------------------------- sharding


def owner(index: int, w: World | None = None) -> int:
    """The rank that computes work item ``index`` (0, 1, 2, ... in the order every rank
    meets them): round robin, ``index % size``."""
    check_param("owner", "index", index, NON_NEGATIVE_INT)
    w = world() if w is None else w
    return index % w.size


def shard(items: Sequence[T], w: World | None = None) -> list[T]:
    """The items of ``items`` this rank computes (:func:`owner` of their position).

    Examples
    --------
    >>> shard(["a", "b", "c", "d", "e"], World(rank=1, size=2))
    ['b', 'd']
    >>> shard(["a", "b", "c"])  # one process: all of them
    ['a', 'b', 'c']
    """
    w = world() if w is None else w
    return [item for i, item in enumerate(items) if owner(i, w) == w.rank]


# ------------------------------------------------------------- randomness


def block_seed(seed: int, block: int) -> int:
    """A 63-bit seed for image block ``block`` of a run seeded ``seed``.

    A hash (sha256 of both numbers), so neighbouring blocks and neighbouring seeds get
    unrelated streams; it depends on the block's index only, never on which rank or how
    many processes compute it.
    """
    check_param("block_seed", "seed", seed, NON_NEGATIVE_INT)
    check_param("block_seed", "block", block, NON_NEGATIVE_INT)
    digest = hashlib.sha256(f"fisherscope-block:{seed}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def block_generator(seed: int, block: int, device: str | torch.device | None = None) -> torch.Generator:
    """A fresh :class:`torch.Generator` on ``device`` seeded with :func:`block_seed`.

    Examples
    --------
    >>> a = torch.rand(3, generator=block_generator(0, 5))
    >>> torch.equal(a, torch.rand(3, generator=block_generator(0, 5)))  # on any rank
    True
    >>> torch.equal(a, torch.rand(3, generator=block_generator(0, 6)))
    False
    """
    gen = torch.Generator(device=device) if device is not None else torch.Generator()
    return gen.manual_seed(block_seed(seed, block))
