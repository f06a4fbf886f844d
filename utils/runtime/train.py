"""The one training loop and the one evaluation function every stage uses.

channels_last on every device; bf16 autocast where the hardware multiplies bf16 natively (CUDA; CPUs with AMX or
AVX512-BF16), fp32 elsewhere; cudnn.benchmark on CUDA. Losses and correct counts
are summed as device tensors and read once per epoch (no per-batch host sync). The best state by
validation accuracy is kept on the device; test accuracy is never looked at here.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data.loader import DeviceLoader
from utils.core.curves import warmup_cosine as warmup_cosine_curve
from utils.core.distributed import all_reduce_sum, broadcast, current_world, is_main_process, sync_buffers
from utils.core.errors import UsageError
from utils.core.files import append_text, trim_csv
from utils.core.log import LOG
from utils.core.timer import Timer
from utils.runtime.resume import FinetuneParts, ResumePoint, read_point, write_point
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.sparsity.swap import SwapCycles


@dataclass
class EpochStats:
    """One row of a training log. Accuracies in percent [0, 100], losses are mean cross-entropy."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float


@dataclass
class FitState:
    """Progress of a ``fit`` call; enough to resume it."""

    epoch: int = 0  # epochs finished
    best_val_acc: float = -1.0
    best_epoch: int = 0
    epochs_since_best: int = 0
    stopped_early: bool = False
    best_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    swaps: dict = field(default_factory=dict)  # what swap cycles did (settings, swaps, weights moved); {} for none
    precisions: list = field(default_factory=list)  # [precision, first epoch] of each stretch ("bf16"/"fp32")

    def summary(self) -> dict:
        """The scalar fields (no tensors), for logs and checkpoints."""
        return {k: v for k, v in asdict(self).items() if k != "best_state"}


@dataclass
class FitSchedule:
    """How long ``fit`` trains and how its learning rate moves."""

    epochs: int  # train until this many epochs are done (a resumed state counts its own), >= 0
    patience: int = 0  # stop after N epochs without a strict val improvement (0: never)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # steps once per epoch
    batch_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # steps once per batch
    after_step: Callable[[], None] | None = None  # runs after every optimizer step (swap cycles, gradual pruning)
    select_after: int = 0  # epochs up to this one train but are never the best nor count toward patience (the
    # model is not final yet: gradual pruning has not reached its target)
    label_smoothing: float = 0.0  # of the training loss, in [0, 1) (validation losses are plain cross-entropy)
    epoch_columns: Callable[[], dict[str, float]] | None = None  # what the step hooks did so far (swaps, weights
    # moved, sparsity), added to each epoch's log line and CSV row


class StepHook(Protocol):
    """Something that changes the model while it trains (``utils.prune.gradual.GradualPruning``): called after
    every optimizer step; ``last_step`` is the optimizer step of its last change."""

    last_step: int

    def after_step(self) -> None: ...

    def epoch_columns(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...  # its progress, for a finetune's resume point

    def load_state_dict(self, state: dict) -> None: ...


def use_channels_last(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Put conv weights in channels_last (NHWC) layout, which both CPU and GPU convolutions prefer."""
    return model.to(memory_format=torch.channels_last) if enabled else model


# CPU flags (Linux /proc/cpuinfo) of units that multiply bf16 in hardware; without them oneDNN emulates bf16 and
# autocast is slower than fp32
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bf16_in(cpuinfo: str) -> bool:
    """Whether the first ``flags`` line of a ``/proc/cpuinfo`` text names one of ``NATIVE_BF16_CPU_FLAGS``."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return any(flag in line.partition(":")[2].split() for flag in NATIVE_BF16_CPU_FLAGS)
    return False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16, read from ``/proc/cpuinfo``); False where
    that file does not exist (not Linux) or names neither."""
    try:
        return native_bf16_in(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast precision on ``device``: bf16 when ``amp`` and the device multiplies bf16 natively (CUDA, or a
    CPU with ``cpu_has_native_bf16``), else None (fp32)."""
    if not amp:
        return None
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return torch.bfloat16 if native else None


def precision_name(device: torch.device, amp: bool) -> str:
    """``"bf16"`` (autocast) or ``"fp32"``: what ``autocast(device, amp)`` trains and evaluates in."""
    return "bf16" if autocast_dtype(device, amp) is not None else "fp32"


def continue_precisions(stretches: list, current: str, first: int, unit: str = "epoch") -> list[list]:
    """The precision record of a run that goes on in ``current`` (``"bf16"`` or ``"fp32"``) from ``unit`` number
    ``first`` (1-based): ``stretches`` ([precision, first unit] pairs, oldest first; [] for a fresh run), with
    ``[current, first]`` added when it differs from the last. A change (a run started where bf16 is native and
    resumed where it is not, or the reverse) is one warning: the resumed run no longer equals an uninterrupted
    one, and the record (in the summary or checkpoint meta) says which units ran in which precision."""
    if stretches and stretches[-1][0] == current:
        return stretches
    if stretches:
        (before, start), end = stretches[-1], first - 1
        span = f"{unit} {start}" if start == end else f"{unit}s {start}-{end}"
        LOG.warning("resumed in %s at %s %d after %s in %s: the run no longer equals an uninterrupted one (its "
                    "summary or checkpoint records the precision of each stretch as 'precisions'; resume where the "
                    "precision is the same, or run with --no_amp throughout, for an exact resume)", current, unit,
                    first, span, before)
    return [*stretches, [current, first]]


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where ``autocast_dtype`` says so (``amp`` and native bf16 on the device); a no-op elsewhere."""
    dtype = autocast_dtype(device, amp)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _progress(items: Iterable, enabled: bool, desc: str) -> Iterable:
    return tqdm(items, desc=desc, leave=False, disable=not (enabled and sys.stderr.isatty()))


def train_epoch(model: nn.Module, loader: DeviceLoader, optimizer: torch.optim.Optimizer, *,
                amp: bool = True, progress: bool = True, desc: str = "train",
                batch_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                after_step: Callable[[], None] | None = None,
                label_smoothing: float = 0.0) -> tuple[float, float]:
    """One pass over ``loader`` (or its ``steps`` batches) with cross-entropy (``label_smoothing`` in [0, 1): the
    share of each target spread evenly over the classes); returns (mean loss, accuracy %) on the augmented images
    it trained on.

    ``batch_scheduler`` (if any) steps after every optimizer step, then ``after_step()`` (if any). A data-parallel
    shard (``loader.shards`` > 1) reports the figures of all shards together.
    """
    model.train()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    seen = 0
    for images, labels in _progress(loader, progress, desc):
        with autocast(loader.device, amp):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if batch_scheduler is not None:
            batch_scheduler.step()
        if after_step is not None:
            after_step()
        loss_sum += loss.detach().float() * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.numel()
    n = max(seen, 1) * loader.shards  # images this pass trained on (a ``steps`` view: not the split's size)
    if loader.shards > 1:
        all_reduce_sum(loss_sum)
        all_reduce_sum(correct)
    return loss_sum.item() / n, 100.0 * correct.item() / n


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under ``torchrun`` (gradients averaged over the
    processes); the model itself in a single process."""
    if not current_world().distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DeviceLoader, *, amp: bool = True) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) of ``model`` in eval mode over all of ``loader``."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    for images, labels in loader:
        with autocast(loader.device, amp):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    model.train(was_training)
    n = loader.num_samples
    return loss_sum.item() / n, 100.0 * correct.item() / n


@torch.no_grad()
def correct_per_image(model: nn.Module, loader: DeviceLoader, *, amp: bool = True) -> torch.Tensor:
    """Bool [N] on the CPU: whether ``model`` (eval mode) classifies each image of ``loader`` correctly, in the
    loader's order (val and test loaders do not shuffle)."""
    was_training = model.training
    model.eval()
    hits = []
    for images, labels in loader:
        with autocast(loader.device, amp):
            hits.append(model(images).argmax(1) == labels)
    model.train(was_training)
    return torch.cat(hits).cpu()


def append_csv(path: Path, row: dict) -> None:
    """Append ``row`` to a CSV file, writing the header when the file is new (rank 0 only)."""
    if not is_main_process():
        return
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(row))
    if new:
        writer.writeheader()
    writer.writerow(row)
    append_text(path, text.getvalue())  # whole rows only: a full disk is one error line, the earlier rows kept


def passes(model: nn.Module, loop: LoopSettings) -> tuple[nn.Module, nn.Module]:
    """The modules that run the (training, val) passes over ``model``'s parameters: its DistributedDataParallel
    wrapper (``loop.data_parallel_device``) and ``torch.compile`` of it (``loop.compile``), or ``model`` itself."""
    device = loop.data_parallel_device
    wrapped = data_parallel(model, device) if device is not None else model
    forward = torch.compile(wrapped) if loop.compile else wrapped
    evaluator = forward if wrapped is model else (torch.compile(model) if loop.compile else model)
    return forward, evaluator


def fit(model: nn.Module, train: DeviceLoader, val: DeviceLoader, optimizer: torch.optim.Optimizer,
        schedule: FitSchedule, *, loop: LoopSettings | None = None, state: FitState | None = None,
        on_epoch_end: Callable[[FitState, EpochStats, bool], None] | None = None) -> FitState:
    """Train for up to ``schedule.epochs`` epochs (continuing from ``state``), keeping the best state by val
    accuracy.

    ``schedule.patience`` > 0 stops after that many epochs without a strict val improvement;
    ``schedule.scheduler`` steps once per epoch, ``schedule.batch_scheduler`` once per batch. ``loop`` (default:
    ``LoopSettings()``) says how the passes run (``passes``: data-parallel and compiled wrappers of ``model``),
    whether bars and the per-epoch log line show (``verbose=False``: mini-finetunes inside a search) and where
    the per-epoch CSV rows go. ``on_epoch_end(state, stats, improved)`` runs after each epoch (checkpointing). A
    non-finite training loss stops with a ``UsageError`` before that epoch is evaluated or saved. The best state
    is left in ``state.best_state``; the model keeps the last epoch's weights.
    """
    loop = LoopSettings() if loop is None else loop
    epochs, patience, scheduler = schedule.epochs, schedule.patience, schedule.scheduler
    state = state or FitState()
    net, eval_net = passes(model, loop)
    if state.epoch < epochs and not state.stopped_early:
        state.precisions = continue_precisions(state.precisions, precision_name(train.device, loop.amp),
                                               state.epoch + 1)
    if train.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    while state.epoch < epochs and not state.stopped_early:
        timer = Timer()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_epoch(net, train, optimizer, amp=loop.amp, progress=loop.progress,
                                            desc=f"epoch {state.epoch + 1}/{epochs}",
                                            batch_scheduler=schedule.batch_scheduler,
                                            after_step=schedule.after_step,
                                            label_smoothing=schedule.label_smoothing)
        if not math.isfinite(train_loss):
            raise UsageError(f"training diverged in epoch {state.epoch + 1} (train loss {train_loss}): this epoch is "
                             "not saved and earlier checkpoints are kept; lower --lr (or check the data)")
        if scheduler is not None:
            scheduler.step()
        if train.shards > 1:  # data-parallel: the same model everywhere (rank 0's BN statistics) ...
            sync_buffers(model)
        val_loss, val_acc = evaluate_model(eval_net, val, amp=loop.amp)
        if train.shards > 1:  # ... and rank 0's figures, so best-epoch and early-stop decisions agree
            val_loss, val_acc = broadcast((val_loss, val_acc), 0)
        state.epoch += 1
        stats = EpochStats(state.epoch, lr, train_loss, train_acc, val_loss, val_acc, timer.seconds)
        improved = val_acc > state.best_val_acc and state.epoch > schedule.select_after
        if improved:
            state.best_val_acc, state.best_epoch, state.epochs_since_best = val_acc, state.epoch, 0
            state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif state.epoch > schedule.select_after:
            state.epochs_since_best += 1
        state.stopped_early = patience > 0 and state.epochs_since_best >= patience
        columns = schedule.epoch_columns() if schedule.epoch_columns is not None else {}
        if loop.verbose:
            notes = "".join(f"  {k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"  {k} {v:.4f}"
                            for k, v in columns.items())
            LOG.info("epoch %d/%d  lr %.4g  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%%s%s  (%.1fs)",
                     state.epoch, epochs, lr, train_loss, train_acc, val_loss, val_acc, notes,
                     "  *" if improved else "", stats.seconds)
        if loop.csv_path is not None:
            append_csv(loop.csv_path, {**asdict(stats), **columns})
        if on_epoch_end is not None:
            on_epoch_end(state, stats, improved)
    if state.stopped_early:
        LOG.info("early stop: no val improvement for %d epochs (best %.2f%% at epoch %d)",
                 patience, state.best_val_acc, state.best_epoch)
    return state


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_frac: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over ``warmup_frac`` of ``total_steps``, then cosine decay to 0."""
    warmup = max(1, round(warmup_frac * total_steps)) if warmup_frac > 0 else 0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_curve(total_steps, warmup))


def finetune_steps(settings: FinetuneSettings, train: DeviceLoader) -> int:
    """Optimizer steps of a finetune with ``settings`` on ``train``: epochs x batches per epoch (this process's
    shard under data parallelism). The learning-rate schedule, swap cycles and gradual pruning count in these."""
    return settings.epochs * len(train)


def _epoch_columns(*hooks: StepHook | SwapCycles | None) -> Callable[[], dict[str, float]] | None:
    """The hooks' per-epoch columns together (gradual pruning's sparsity, the swaps so far); None without hooks."""
    present = [hook for hook in hooks if hook is not None]
    return (lambda: {k: v for hook in present for k, v in hook.epoch_columns().items()}) if present else None


def finetune_model(model: nn.Module, train: DeviceLoader, select: DeviceLoader, settings: FinetuneSettings,
                   loop: LoopSettings | None = None, dense: dict[str, torch.Tensor] | None = None,
                   during: StepHook | None = None, resume: ResumePoint | None = None) -> FitState:
    """Finetune with a fresh AdamW (``settings.lr``, ``settings.weight_decay``; the original's recipe is 3e-4 and
    0.01) for up to ``settings.epochs`` epochs (``settings.patience``: early stop) and load the best state by
    accuracy on ``select`` (the val split) into ``model``. ``settings.select_on`` is the caller's to read (it
    picks ``select``).

    ``settings.warmup_frac=None``: constant learning rate (prune and regrowth finetunes); a number: per-step
    linear warm-up over that fraction of all steps, then cosine decay (the full finetune).
    ``settings.swap`` (enabled): swap cycles at constant density during the finetune (``utils.sparsity.swap``;
    ``dense``: the dense weights by layer, for the ``saliency`` grow score); what they did is ``state.swaps``.
    ``during`` (gradual pruning) changes the model after each optimizer step, before a swap; the best epoch is
    chosen among those that end after its last change.
    ``loop`` (default: ``LoopSettings()``): ``compile`` runs the passes through ``torch.compile(model)`` (same
    parameters, so ``model`` is trained); ``data_parallel_device`` trains through DistributedDataParallel on
    that device (``train`` is this process's shard; every process evaluates the whole val split); ``csv_path``
    is replaced by this finetune's rows. ``resume``: the finetune writes its resume point there after epochs
    (``write_point`` says which) and, when it continues (--resume and a point there), starts from it
    (``utils.runtime.resume``; ``csv_path`` then keeps the rows up to the point's epoch); the caller removes the
    point once the result is saved.
    """
    loop = LoopSettings() if loop is None else loop
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total_steps = finetune_steps(settings, train)
    per_batch = (None if settings.warmup_frac is None
                 else warmup_cosine(optimizer, total_steps, settings.warmup_frac))
    cycles = (SwapCycles(model, settings.swap.in_steps(len(train)), total_steps, optimizer, dense,
                         data_parallel=train.shards > 1)
              if settings.swap is not None and settings.swap.enabled else None)
    parts = FinetuneParts(model, optimizer, train, per_batch,
                          {name: hook for name, hook in (("gradual", during), ("swap", cycles)) if hook is not None})
    state = FitState()
    if resume is not None and resume.continues:
        progress, best = read_point(resume, parts)
        state = FitState(**progress, best_state=best)

    def keep_point(fit_state: FitState, _stats: EpochStats, _improved: bool) -> None:
        """After each epoch: the resume point (``write_point`` decides whether it is time to write one)."""
        write_point(resume, parts, fit_state.summary(), fit_state.best_state)
    if loop.csv_path is not None and is_main_process():
        if state.epoch:  # rows a killed run logged after its point would come twice
            trim_csv(loop.csv_path, lambda row: int(row["epoch"]) <= state.epoch)
        else:
            loop.csv_path.unlink(missing_ok=True)
    hooks = [h.after_step for h in (during, cycles) if h is not None]
    select_after = 0 if during is None else math.ceil(during.last_step / len(train)) - 1
    try:
        state = fit(model, train, select, optimizer,
                    FitSchedule(settings.epochs, patience=settings.patience, batch_scheduler=per_batch,
                                after_step=(lambda: [hook() for hook in hooks]) if hooks else None,
                                select_after=select_after, epoch_columns=_epoch_columns(during, cycles)), loop=loop,
                    state=state, on_epoch_end=None if resume is None else keep_point)
    finally:
        swaps = {} if cycles is None else cycles.close()
    state.swaps = swaps
    model.load_state_dict(state.best_state)
    return state
