"""Process-group set-up for ``torchrun`` (NCCL on GPUs, gloo on CPU) and the few collectives
training and evaluation need. A plain ``python -m repvit train`` is a world of size one and uses none.

Every collective waits at most ``--dist-timeout`` minutes for the slowest rank (NCCL's own default
is 10, about what a COCO val2017 evaluation takes on one GPU). Evaluation does not lean on that
limit: every rank scores its ``shard`` of the data and the shares are merged (``each_rank``), so
no rank idles while another works through the whole validation set.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar, Union

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} asked for CUDA but no GPU is visible; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


DEFAULT_TIMEOUT_MINUTES = 60.0


def timeout_minutes(value) -> float:
    """argparse/YAML type of ``--dist-timeout``: minutes, more than zero."""
    try:
        minutes = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        minutes = math.nan
    if not (0 < minutes < math.inf):
        raise ValueError(f"--dist-timeout takes minutes, a number more than zero, got {value!r}")
    return minutes


timeout_minutes.describe = "a number of minutes, more than zero"

# The option row every training command's table includes, so the flag and its default are the same everywhere.
TIMEOUT_OPTION = (("--dist-timeout",), dict(
    type=timeout_minutes, default=DEFAULT_TIMEOUT_MINUTES, metavar="MINUTES",
    help="under torchrun, how long a rank waits for the others at a collective before the run fails"))


def setup(device_name: str, timeout: Union[timedelta, float, None] = None) -> DistEnv:
    """Join the process group torchrun describes in the environment, or run alone. ``timeout`` (a
    ``timedelta``, or minutes; default ``DEFAULT_TIMEOUT_MINUTES``) bounds every collective's wait."""
    if timeout is None:
        timeout = DEFAULT_TIMEOUT_MINUTES
    if not isinstance(timeout, timedelta):
        timeout = timedelta(minutes=timeout_minutes(timeout))
    elif timeout <= timedelta(0):
        raise ValueError(f"the process-group timeout must be more than zero, got {timeout}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, env: DistEnv, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Reduce across ranks in place (a no-op for one process); returns the tensor."""
    if env.distributed:
        dist.all_reduce(tensor, op=op)
    return tensor


def any_rank(flags: list[bool], env: DistEnv) -> list[bool]:
    """For each flag, whether it is set on at least one rank (one collective for all of them)."""
    if not env.distributed:
        return flags
    t = torch.tensor([float(f) for f in flags], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather_objects(obj: Any, env: DistEnv) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not env.distributed:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shard(indices: Sequence[int], env: DistEnv | None, block: int = 1) -> list[int]:
    """This rank's share of ``indices``: consecutive blocks of ``block`` dealt out in turn (rank r
    takes blocks r, r + world_size, ...). With ``block`` the evaluation batch size every batch holds
    the same images as in a single-process run, so batched models (padding to the largest image)
    give the same outputs. One process (``env`` None or of size one) gets everything."""
    indices = list(indices)
    if block < 1:
        raise ValueError(f"block must be 1 or more, got {block}")
    if env is None or not env.distributed:
        return indices
    blocks = [indices[i:i + block] for i in range(0, len(indices), block)]
    return [i for part in blocks[env.rank::env.world_size] for i in part]


def each_rank(work: Callable[[], T], env: DistEnv | None) -> list[T]:
    """``work()`` run on this rank, and its result from every rank in rank order (``[work()]`` for
    one process). If ``work`` raises on any rank, every rank raises, instead of the others waiting
    at their next collective until the timeout: the failing rank its own error, the others a
    RuntimeError naming that rank and error."""
    if env is None or not env.distributed:
        return [work()]
    try:
        outcome, error = (True, work()), None
    except Exception as err:   # noqa: BLE001 - re-raised below, after the other ranks have heard of it
        outcome, error = (False, f"{type(err).__name__}: {err}"), err
    outcomes = gather_objects(outcome, env)
    if error is not None:
        raise error
    failed = [(rank, message) for rank, (ok, message) in enumerate(outcomes) if not ok]
    if failed:
        rank, message = failed[0]
        raise RuntimeError(f"rank {rank} of {env.world_size} failed ({message}); this rank stops too")
    return [value for _, value in outcomes]
