"""Several processes through PyTorch's own distributed runtime (``torchrun``), and nothing home-made.

A script started by ``torchrun --nproc_per_node N`` finds ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its
environment; ``init_world`` then joins the process group (NCCL when the processes train on GPUs, gloo on
CPUs) and gives each process its device (``cuda:LOCAL_RANK``; with a search's ``--share_gpus``, P processes on
G < P GPUs, local rank r on GPU r mod G, over gloo). Two kinds of work use it:

* episode-parallel RL searches: every process runs the same policy and samples the same allocations; the
  episodes of one policy batch are dealt round-robin to the processes, their rewards gathered
  (``all_gather_object``) and the same policy step taken everywhere;
* data-parallel training (DistributedDataParallel): each process holds its shard of the device-resident
  training split.

Only rank 0 writes files: the one atomic writer, CSV appends and the log file check ``is_main_process``.
A single process without ``torchrun`` is world size 1 and behaves exactly as before.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from utils.core.errors import UsageError


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (``rank`` 0 is the one that writes files)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


LAUNCH_VARIABLES = {"RANK": 0, "WORLD_SIZE": 1, "LOCAL_RANK": 0}  # what torchrun sets, and the values without it


def _launch_value(name: str) -> int | None:
    """The environment's whole-number ``name`` (its default when unset); None when it is not a whole number."""
    text = os.environ.get(name)
    if text is None:
        return LAUNCH_VARIABLES[name]
    try:
        return int(text)
    except ValueError:
        return None


def launched_world() -> World:
    """The world ``torchrun`` describes in the environment (world size 1 without it). A value that is not a
    whole number counts as its default here, so that the ``error:`` line is still printed; ``init_world``
    refuses it (``check_launch_environment``)."""
    values = {name: _launch_value(name) for name in LAUNCH_VARIABLES}
    return World(*(default if values[name] is None else values[name] for name, default in LAUNCH_VARIABLES.items()))


def check_launch_environment() -> None:
    """A ``UsageError`` when RANK, WORLD_SIZE or LOCAL_RANK is set to something other than a whole number."""
    for name in LAUNCH_VARIABLES:
        if _launch_value(name) is None:
            raise UsageError(f"{name}={os.environ[name]!r} in the environment is not a whole number: unset it, or "
                             "launch the script with torchrun, which sets it")


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a ``torchrun`` launch (read from the environment, so it holds
    before the process group exists, e.g. for argument errors)."""
    return launched_world().is_main


def says_errors() -> bool:
    """Whether this process prints its ``error:`` line: rank 0 always; another rank once the process group exists
    (its error may be its own). Before that, on one node, an error comes from the flags and files every rank
    checks alike, so rank 0's one line is what the user sees."""
    world = launched_world()
    if world.is_main or (dist.is_available() and dist.is_initialized()):
        return True
    return os.environ.get("LOCAL_WORLD_SIZE") != str(world.size)  # several nodes: each may see other files


def current_world() -> World:
    """The joined world (world size 1 when no process group was started)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), launched_world().local_rank)


def gpu_placement(local_rank: int, per_node: int, gpus: int, share: bool) -> tuple[int, str]:
    """(GPU index, process-group backend) of local rank ``local_rank`` of ``per_node`` processes on a node with
    ``gpus`` GPUs: one process per GPU over NCCL; with ``share`` and more processes than GPUs, local rank r on
    GPU r mod ``gpus`` over gloo (NCCL refuses two ranks on one GPU; the search's collectives move small
    pickled objects, which gloo carries as well). More processes than GPUs without ``share`` is a usage error."""
    if gpus < 1:
        raise UsageError("--device cuda but no GPU is visible")
    if per_node <= gpus:
        return local_rank, "nccl"
    if not share:
        raise UsageError(f"torchrun started {per_node} processes per node but this node has {gpus} GPU(s): use "
                         "--nproc_per_node <= the GPU count, or --share_gpus (search scripts) to place several "
                         "episode processes on each GPU")
    return local_rank % gpus, "gloo"


def init_world(device: torch.device, share_gpus: bool = False) -> tuple[World, torch.device]:
    """Join the process group of a ``torchrun`` launch (once) and return (world, this process's device).

    ``device``: the resolved ``--device``; a CUDA device (any ``cuda:N``) becomes this process's GPU of
    ``gpu_placement`` (``share_gpus``: several processes per GPU, the episode-parallel search's
    ``--share_gpus``), a CPU stays the CPU (gloo).
    """
    check_launch_environment()
    world = launched_world()
    if not world.distributed:
        return world, device
    backend = "gloo"
    if device.type == "cuda":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world.local_rank + 1))
        index, backend = gpu_placement(world.local_rank, per_node, torch.cuda.device_count(), share_gpus)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=dt.timedelta(minutes=60))
    return current_world(), device


def close_world() -> None:
    """Leave the process group (end of a script); a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    world = current_world()
    if not world.distributed:
        return [obj]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any, src: int) -> Any:
    """Rank ``src``'s ``obj`` on every rank (the others pass anything, e.g. None)."""
    if not current_world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read next)."""
    if current_world().distributed:
        dist.barrier()


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics, masks) to every rank, so that evaluations, and the
    decisions made on them (best epoch, early stop), agree everywhere."""
    if current_world().distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over the ranks, in place (unchanged in a single process)."""
    if current_world().distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
