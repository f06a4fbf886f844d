"""Resume points of a finetune: what ``finetune_model`` writes after an epoch when it is given a ``ResumePoint``,
so that a stage killed in the middle of a long finetune (the original finetunes one-shot models for 400 epochs)
continues with ``--resume`` where it stopped and ends as the uninterrupted run would.

A point holds the model (weights and masks), the optimizer and the per-step learning-rate curve, the fit's
progress and best state, the step hooks' progress (gradual pruning with its pruner's random streams, swap cycles)
and each process's random streams (data order, global torch RNG, CUDA RNG), with the run's defining flags and
the digest of the file it started from, sealed with a checksum: a damaged or hand-edited file, an older version's,
another run's point or a changed input is one ``UsageError``. The caller removes it once the finetune's result
is saved. A point is written after the first epoch and then after an epoch when ``POINT_EVERY_S`` seconds have
passed since the last one, so a large model's short GPU epochs do not each pay for a write; a kill loses the
epochs since the last point, never exactness (on a CPU; on CUDA, cudnn's autotuned kernels already make two
uninterrupted runs differ in the last bits).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from data import DataSettings
from data.loader import DeviceLoader
from utils.core.distributed import all_gather, current_world, is_main_process
from utils.core.errors import UsageError
from utils.core.fields import resumable_flags
from utils.core.files import atomic_save, check_same_run, check_seal, file_digest, plain, seal
from utils.runtime.settings import RunSettings, ScheduleSettings

POINT_VERSION = 2  # bumped when what a point holds changes (an older point is refused, not misread)
POINT_EVERY_S = 60.0  # at most one point a minute (the first epoch's always): a write costs a few model sizes
RESUME_SUFFIX = ".resume.pt"  # beside the checkpoint a finetune makes (not *.pth: never taken for a model)
# flags a resumed finetune may change: where and how fast it runs, and which other steps its run makes (a point
# belongs to one step, named by its checkpoint)
MAY_CHANGE_ON_RESUME = frozenset(resumable_flags(RunSettings, DataSettings, ScheduleSettings))


def resume_point(checkpoint: Path) -> Path:
    """The resume point of the finetune that makes ``checkpoint``: ``{stem}.resume.pt`` beside it."""
    return checkpoint.with_name(checkpoint.stem + RESUME_SUFFIX)


def check_point(point: Path, run: RunSettings) -> None:
    """Before any work: a resume point at ``point`` (a killed finetune) needs --resume (continue it) or
    --overwrite (it is removed here)."""
    if point.exists() and run.overwrite:
        point.unlink(missing_ok=True)  # every process of a torchrun launch gets here
    elif point.exists() and not run.resume:
        raise UsageError(f"{point} is the resume point of a killed finetune: pass --resume to continue it, or "
                         "--overwrite to start over")


class Resumable(Protocol):
    """A step hook whose progress a resume point keeps (``GradualPruning``, ``SwapCycles``)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class ResumePoint:
    """Where a finetune keeps its resume point (``path``) and whether it continues from the one there
    (``resume``). ``settings``: the run's defining flags (``Stage.flags``) and ``source``: the digest of the file
    the finetune starts from, both recorded in the point and compared on resume; ``may_change``: the flags a
    resumed run may change."""

    path: Path
    resume: bool = False
    settings: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    may_change: frozenset[str] = frozenset()

    @classmethod
    def of_stage(cls, checkpoint: Path, source: Path, run: RunSettings, flags: Mapping[str, Any]) -> ResumePoint:
        """The point of the finetune that makes ``checkpoint`` from the file ``source`` in a stage run with ``run``
        and ``flags``."""
        return cls(resume_point(checkpoint), run.resume, flags, file_digest(source), MAY_CHANGE_ON_RESUME)

    @property
    def continues(self) -> bool:
        """Whether the finetune starts from the point at ``path`` (--resume and a point there)."""
        return self.resume and self.path.is_file()


@dataclass
class FinetuneParts:
    """What a finetune's resume point saves and restores, besides the fit's progress."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: DeviceLoader  # its generator is the data order
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # the per-step learning-rate curve, if any
    hooks: dict[str, Resumable] = field(default_factory=dict)  # by name: "gradual", "swap"
    written: float = field(default=-float("inf"), repr=False)  # when the last point was written (monotonic s)


def write_point(point: ResumePoint, parts: FinetuneParts, fit_state: dict[str, Any],
                best_state: dict[str, torch.Tensor]) -> None:
    """Write the resume point of a finetune after an epoch (``fit_state``: ``FitState.summary()``) when
    ``POINT_EVERY_S`` have passed since the last. Every process gathers its streams after every epoch (so the
    processes of a torchrun launch always meet in the same collective); the main one decides and writes."""
    rngs = all_gather(current_streams(parts.train))
    if not is_main_process() or time.monotonic() - parts.written < POINT_EVERY_S:
        return
    parts.written = time.monotonic()
    cpu = {k: v.detach().cpu() for k, v in parts.model.state_dict().items()}
    atomic_save(seal({
        "version": POINT_VERSION, "settings": plain(dict(point.settings)), "source": point.source,
        "device": parts.train.device.type, "model": cpu, "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
        "hooks": {name: hook.state_dict() for name, hook in parts.hooks.items()},
        "fit": fit_state, "best_state": {k: v.detach().cpu() for k, v in best_state.items()},
        "rng_per_process": rngs}), point.path)


def read_point(point: ResumePoint, parts: FinetuneParts) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore ``parts`` from the point at ``point.path``; returns the fit's progress (``FitState.summary()``)
    and its best state (on the model's device). A damaged point, one of another run (a defining flag or the
    input file changed), of other hooks, of another device type or process count is a ``UsageError``."""
    path, redo = point.path, "start over with --overwrite"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, a pickled call, ...
        raise UsageError(f"--resume: cannot read {path}: damaged or not a resume point ({type(exc).__name__}); "
                         f"{redo}") from None
    if not check_seal(saved, path) or saved.get("version") != POINT_VERSION:
        raise UsageError(f"--resume: {path} is not a resume point of this version; {redo}")
    check_same_run(saved["settings"], point.settings, set(point.may_change))
    if saved["source"] != point.source:
        raise UsageError(f"--resume: the file this finetune started from changed since {path} was written; {redo}")
    if set(saved["hooks"]) != set(parts.hooks) or (saved["scheduler"] is None) != (parts.scheduler is None):
        raise UsageError(f"--resume: {path} was written by another kind of finetune (gradual pruning, swap cycles or "
                         f"learning-rate curve differ); {redo}")
    restore_streams(saved["rng_per_process"], saved["device"], parts.train, path)  # checks first: one line
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    if parts.scheduler is not None:
        parts.scheduler.load_state_dict(saved["scheduler"])
    for name, hook in parts.hooks.items():
        hook.load_state_dict(saved["hooks"][name])
    device = next(parts.model.parameters()).device
    return saved["fit"], {k: v.to(device) for k, v in saved["best_state"].items()}


def current_streams(train: DeviceLoader) -> tuple[torch.Tensor, ...]:
    """This process's random streams: ``train``'s data order, the global torch RNG and, on CUDA, the device's
    (dropout draws from it there)."""
    device = train.device
    cuda = (torch.cuda.get_rng_state(device),) if device.type == "cuda" else ()
    return (train.generator.get_state(), torch.get_rng_state(), *cuda)


def restore_streams(rngs: list, device_type: str, train: DeviceLoader, path: Path) -> None:
    """Set this process's streams (``current_streams``) to its entry of ``rngs`` (one per process, rank order;
    pretraining's older states hold no CUDA one) written on a ``device_type`` device; a run resumed with another
    process count or on another device type (the data-order stream lives on the device) is a ``UsageError``."""
    world = current_world()
    if len(rngs) != world.size:
        raise UsageError(f"--resume: {path} was written by {len(rngs)} process(es) and this run has {world.size}; "
                         "resume with the same torchrun --nproc_per_node (each process continues its own data shard)")
    if device_type != train.device.type:
        raise UsageError(f"--resume: {path} was written on {device_type} and this run trains on "
                         f"{train.device.type}: the data order is a {device_type} random stream; resume with "
                         f"--device {device_type}")
    data, cpu, *cuda = rngs[world.rank]
    train.generator.set_state(data)
    torch.set_rng_state(cpu)
    if cuda:
        torch.cuda.set_rng_state(cuda[0], train.device)
