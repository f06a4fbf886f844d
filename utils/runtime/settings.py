"""Typed settings: what the library reads instead of a parsed command line.

A stage script's flags become these dataclasses in one place per flag group (``utils.cli.flags``); everything
below the scripts takes them. Each field says its unit and range; the defaults are the flags' defaults, so a
settings object built by hand (tests, benchmarks, notebooks) behaves as the command line with no flags, except
where scripts differ among themselves: ``FinetuneSettings`` defaults to no early stop and no warm-up (the
scripts' ``--patience`` is 40 or 50, finetune.py warms up).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from utils.sparsity.swap import SwapSettings


@dataclass(frozen=True)
class RunSettings:
    """What every stage shares: where it writes, its seed, which images it sees, and how it runs."""

    save_dir: str = "./runs"  # root of all run folders
    seed: int = 42  # run seed: data order, val split, init draws, policy
    val_split: float = 0.1  # fraction of the training set held out for validation, in (0, 1)
    batch_size: int = 128  # global training batch
    train_subset: int | None = None  # first N training images only (None: all)
    eval_subset: int | None = None  # first N val and N test images only (None: all)
    augment: bool = True  # crop / flip / jitter while training
    progress: bool = True  # progress bars
    amp: bool = True  # bf16 autocast where the device has native bf16 (CUDA; AMX / AVX512-BF16 CPUs), else fp32
    channels_last: bool = True  # channels_last memory layout
    compile: bool = False  # torch.compile the model
    overwrite: bool = False  # replace what an earlier run wrote
    resume: bool = False  # continue an earlier run from its resume point
    pretrained: str | None = None  # the dense checkpoint (None: pretrain.py's for the model)
    trust_pickle: bool = False  # load checkpoints that are pickled nn.Modules (runs code from the file)
    allow_other_dense: bool = False  # pair a sparse checkpoint with a dense model it was not pruned from

    @property
    def speed(self) -> dict[str, bool]:
        """The ``amp`` and ``compile`` fields of ``LoopSettings`` (how a training loop runs)."""
        return {"amp": self.amp, "compile": self.compile}

    @property
    def val_settings(self) -> dict:
        """What picks the val images besides the data set, and the precision (the key of caches of val results);
        the eval subset only when one is set, so caches written before it existed stay valid."""
        subset = {} if self.eval_subset is None else {"eval_subset": self.eval_subset}
        precision = {"amp": True} if self.amp else {}  # bf16 where native: results cached apart from fp32 ones
        return {"seed": self.seed, "val_split": self.val_split, **subset, **precision}


@dataclass(frozen=True)
class FinetuneSettings:
    """An AdamW finetune with the best epoch kept (after pruning, after regrowth)."""

    epochs: int  # finetune epochs, >= 1
    lr: float = 3e-4  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    patience: int = 0  # stop after N epochs without a val gain (0: never; the scripts' flags default to 40-50)
    select_on: str = "val"  # split that picks the best epoch: val, or test (only to reproduce the original)
    warmup_frac: float | None = None  # None: constant lr; a fraction in [0, 1]: linear warm-up over that share of
    # all steps, then cosine decay to 0 (the full finetune of finetune.py)
    swap: SwapSettings | None = None  # swap cycles at constant density during the finetune (None: none)


@dataclass(frozen=True)
class LoopSettings:
    """How a training loop runs (``utils.runtime.train.fit`` and ``finetune_model``): precision, compilation, what it
    shows and writes, and data-parallel training. Defaults: bf16 where native, no compile, bars and a log line per
    epoch, no CSV, one process."""

    amp: bool = True  # bf16 autocast where the device has native bf16 (CUDA; AMX / AVX512-BF16 CPUs), else fp32
    compile: bool = False  # run the passes through torch.compile (same parameters, so the model itself learns)
    progress: bool = True  # progress bars (only on a terminal)
    verbose: bool = True  # one log line per epoch (False: the mini-finetunes of a search)
    csv_path: Path | None = None  # one CSV row per epoch (finetune: an existing file is replaced)
    data_parallel_device: torch.device | None = None  # train through DistributedDataParallel on this device (under
    # torchrun; the loader is this process's shard); None: the model itself


@dataclass(frozen=True)
class ScheduleSettings:
    """A pruning schedule: iterative steps from a start, one-shot targets from the dense model, or gradual pruning
    to one target during one finetune."""

    mode: str = "iterative"  # iterative | oneshot | gradual
    amount: float = 0.3  # iterative: fraction of the surviving entries removed per step, in (0, 1)
    iter_start: int = 1  # first step (1: from the dense model)
    iter_end: int = 15  # last step, inclusive
    target_sparsity: tuple[float, ...] = ()  # oneshot: targets in [0, 1], each from the dense model; gradual: one
    gradual_steps: int = 10  # gradual: pruning steps of the cubic schedule, >= 1
    gradual_until: float = 0.5  # gradual: share of the finetune's optimizer steps by which the target is reached

    @property
    def iterative(self) -> bool:
        return self.mode == "iterative"


@dataclass(frozen=True)
class ScoringSettings:
    """The layer scores of a regrowth stage: SSIM on val images, saliency on train batches."""

    ssim_num_batches: int = 64  # val batches for the SSIM attention maps (at most all of val)
    ssim_threshold: float = 0.3  # units with SSIM <= this are searched
    saliency_batches: int | None = None  # train batches for the saliency (None: all)
    regrowth_score: str = "fisher"  # fisher: F · θ² (F a diagonal Fisher estimate, see fisher); taylor: mean |g| |θ|
    saliency_model: str = "dense"  # score on the dense model (original) or the sparse one
    fisher: str = "batch"  # batch: mean over batches of (batch-mean dL/dθ)², changes with the batch size (original);
    #                        per_sample: mean over images of (dL_i/dθ)², the empirical Fisher (FISHER_ESTIMATORS)


@dataclass(frozen=True)
class SelectionSettings:
    """Which masked entries of a unit regrow first, and the values they start from."""

    selection: str = "saliency"  # saliency | reference | magnitude | random
    reference_ckpt: str | None = None  # --selection reference: a less sparse checkpoint of the same model
    init_strategy: str = "zero"  # value of regrown entries (the granularity's init strategies)


@dataclass(frozen=True)
class SearchSettings:
    """One RL (or random) regrowth search: episodes, the mini-finetune, the reward, the controller and REINFORCE.

    Defaults are the original one-shot script's. ``temperature`` None divides advantages by the rolling std of
    the last ``reward_window_size`` rewards (the iterative search)."""

    episodes: int = 400  # maximum episodes
    finetune_epochs: int = 50  # mini-finetune epochs per episode (best epoch on val)
    episode_steps: int | None = None  # instead: a mini-finetune of exactly this many optimizer steps, >= 1
    episode_val_subset: int | None = None  # rewards on the first N val images only, the same in every episode
    lr: float = 3e-4  # AdamW learning rate of the mini-finetune
    weight_decay: float = 0.01  # AdamW weight decay of the mini-finetune
    init_strategy: str = "zero"  # value of regrown entries
    budget_bonus: float = 0.005  # reward per share of the budget used
    early_stop_patience: int = 50  # stop after N episodes without a new best reward
    min_epochs: int = 50  # episodes before the flat-reward stop
    reward_std_threshold: float = 0.002  # flat-reward stop: std of the reward window below this
    reward_window_size: int = 20  # rewards in the flat-reward window and in the rolling std of the temperature
    episodes_per_update: int = 1  # M: episodes sampled from one policy per REINFORCE step
    paired: bool = True  # every episode uses the same random draws (common random numbers)
    learn: bool = True  # False: random search (uniform allocations, no policy step)
    # the controller and REINFORCE
    action_space_size: int = 11  # A: options j/A of min(capacity, remaining) per unit
    hidden_size: int = 64  # LSTM hidden units
    skip: bool = True  # a j = 0 option (the original has 1..A)
    learning_rate: float = 3e-4  # controller Adam learning rate
    temperature: float | None = 0.005  # τ, the advantage divisor (None: rolling std)
    clip: float = 100.0  # advantage clip
    ema: float = 0.9  # EMA baseline factor (M = 1)
    start_beta: float = 0.4  # entropy bonus at the start
    end_beta: float = 0.04  # entropy bonus after the decay
    decay_fraction: float = 0.4  # share of the episodes the entropy bonus decays over
    grad_clip: float = 1.0  # controller gradient norm clip
