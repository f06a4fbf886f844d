"""Typed settings: what the library reads instead of a parsed command line.

Each field with ``setting(...)`` metadata is its own flag: default, value type, help and spellings are written
here once, and ``utils.cli.settings_flags`` makes the flags from them and the dataclasses from the parsed flags;
everything below the scripts takes the dataclasses. A settings object built by hand (tests, benchmarks, notebooks)
behaves as the command line with no flags, except where a stage states its own default where it adds the flags:
``FinetuneSettings`` has no early stop and no warm-up by default, the prune scripts' ``--patience`` is 50, greedy
regrowth's 40, finetune.py warms up; the searches' lengths come from the command line's table per
granularity and schedule (``utils.cli.commands``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from data import DataSettings
from utils.core.fields import REQUIRED, setting
from utils.core.values import (
    BATCH_LIMIT,
    finite_float,
    float_up_to,
    fraction,
    fraction_below_one,
    int_up_to,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
    seed_int,
)
from utils.runtime.schedules import LR_SCHEDULES
from utils.sparsity.swap import SwapSettings

_DATA = DataSettings()  # the data set's defaults of the seven fields the run's settings carry the flags of


@dataclass(frozen=True)
class RunSettings:
    """What every stage shares: which model and data set (as given: None for the checkpoint's or the model's own;
    ``Stage.model_name`` / ``Stage.dataset`` are the resolved names), where it writes, its seed, which images it
    sees, and where and how it runs."""

    m_name: str | None = setting("resnet20", "model name (see models/)")
    dataset: str | None = setting(None, "cifar10 | tiny_imagenet | synthetic (default: the model's own data set)")
    save_dir: str = setting("./runs", "root of all run folders", resumable=True)
    seed: int = setting(_DATA.seed, "run seed (data order, val split, init)", parse=seed_int)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", resumable=True)
    share_gpus: bool = setting(False, "under torchrun, allow more processes than GPUs: local rank r runs its episodes "
                                      "on GPU r mod G (collectives over gloo); one small model's episode leaves a GPU "
                                      "mostly idle", switch=True, resumable=True)
    val_split: float = setting(_DATA.val_split, "fraction of the training set held out for validation",
                               parse=open_fraction)
    batch_size: int = setting(_DATA.batch_size, "training batch size", parse=int_up_to(BATCH_LIMIT))
    train_subset: int | None = setting(_DATA.train_subset, "use only the first N training images (quick runs)",
                                       parse=positive_int)
    eval_subset: int | None = setting(_DATA.eval_subset, "evaluate on only the first N val and N test images (quick "
                                                         "runs; default: all)", parse=positive_int)
    augment: bool = setting(_DATA.augment, "train without crop/flip/jitter augmentation",
                            names=("--no_augment",), negated=True)
    progress: bool = setting(True, "no progress bars", names=("--no_progress",), negated=True, resumable=True)
    amp: bool = setting(True, "fp32 everywhere, evaluation included: no bf16 autocast (the default on CUDA and on "
                              "CPUs with AMX or AVX512-BF16)", names=("--no_amp",), negated=True)
    channels_last: bool = setting(_DATA.channels_last, "keep NCHW memory layout", names=("--no_channels_last",),
                                  negated=True, resumable=True)
    compile: bool = setting(False, "torch.compile the model", switch=True, resumable=True)
    overwrite: bool = setting(False, "replace what an earlier run wrote", switch=True, resumable=True)
    resume: bool = setting(False, "continue an earlier run from its resume point", switch=True, resumable=True)
    pretrained: str | None = setting(None, "dense pretrained checkpoint (default {save_dir}/{m_name}/checkpoint/"
                                           "ckpt.pth)")
    trust_pickle: bool = setting(False, "allow checkpoints that are pickled nn.Modules (runs code from the file)",
                                 switch=True, resumable=True)
    allow_other_dense: bool = setting(False, "pair a sparse checkpoint with a dense model it was not pruned from (its "
                                             "meta records its dense parent's fingerprint; a mismatch is refused by "
                                             "default); what this stage writes then records --pretrained as its "
                                             "parent", switch=True, resumable=True)

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


# pretrain.py --recipe: named sets of defaults for the pretraining flags (a flag given on the command line still wins)
PRETRAIN_RECIPES: dict[str, dict] = {
    "original": {},  # the original repository's: 200 epochs, lr 0.1, cosine per epoch, plain momentum
    # the recipe of the reference dense models (docs/results/data/dense/): ResNet-20 on the JPEG CIFAR-10 at 88.6 and
    # 88.1% test after 80 epochs (87.6 and 87.5% after 40), short of the 91% goal (docs/results/dense_recipe.md)
    "short": {"epochs": 80, "lr": 0.2, "lr_schedule": "onecycle", "warmup_epochs": 2.0, "nesterov": True,
              "label_smoothing": 0.1, "patience": 0},
}

_RECIPE_HELP = ("defaults of the flags below: original (the original repository's) or short (80 epochs: "
                + ", ".join(f"--{k} {v}" for k, v in PRETRAIN_RECIPES["short"].items() if k != "epochs")
                + "); a flag given still wins")


@dataclass(frozen=True)
class PretrainSettings:
    """Dense pretraining (pretrain.py): SGD, its learning-rate curve (``utils.runtime.schedules``) and the early
    stop, the best epoch chosen on val. The defaults are the original repository's; ``PRETRAIN_RECIPES`` names
    other sets of defaults. A resumed run may change its length and patience (and the recipe that only set
    defaults), nothing else."""

    recipe: str = setting("original", _RECIPE_HELP, choices=PRETRAIN_RECIPES, resumable=True)
    epochs: int = setting(200, "epochs; the learning-rate curve spans them", parse=positive_int, resumable=True)
    lr: float = setting(0.1, "SGD learning rate", parse=positive_float)
    momentum: float = setting(0.9, "SGD momentum, in [0, 1)", parse=fraction_below_one)
    nesterov: bool = setting(False, "Nesterov momentum (the original: plain)", switch=True)
    lr_schedule: str = setting("cosine", "learning-rate curve: " + "; ".join(f"{k}: {v.help}"
                                                                            for k, v in LR_SCHEDULES.items()),
                               choices=sorted(LR_SCHEDULES))
    warmup_epochs: float = setting(0.0, "per-step schedules: linear warm-up over this many epochs (a fraction "
                                        "allowed)", parse=non_negative_float)
    label_smoothing: float = setting(0.0, "label smoothing of the training loss, in [0, 1) (the original: 0)",
                                     parse=fraction_below_one)
    weight_decay: float = setting(5e-4, "SGD weight decay", parse=float_up_to(1.0))
    patience: int = setting(30, "early stop after N epochs without val gain (0: off)", parse=non_negative_int,
                            resumable=True)

    @property
    def per_step(self) -> bool:
        """Whether the learning-rate curve moves after every optimizer step (else after every epoch)."""
        return LR_SCHEDULES[self.lr_schedule].per_step


def adamw_lr() -> float:
    """The AdamW learning rate of every finetune (after pruning, after regrowth, a search's mini-finetunes): the
    original's 3e-4. A function, so that two settings classes declare the one setting."""
    return setting(3e-4, "AdamW learning rate of the finetunes", parse=positive_float)


def adamw_weight_decay() -> float:
    """The AdamW weight decay of every finetune: the original's 0.01, at most 1."""
    return setting(0.01, "AdamW weight decay", parse=float_up_to(1.0))


@dataclass(frozen=True)
class FinetuneSettings:
    """An AdamW finetune with the best epoch kept (after pruning, after regrowth)."""

    epochs: int = setting(REQUIRED, "finetune epochs", names=("--finetune_epochs",), parse=positive_int)
    lr: float = adamw_lr()
    weight_decay: float = adamw_weight_decay()
    warmup_frac: float | None = setting(None, "share of steps for linear warm-up (None: constant lr; else a linear "
                                              "warm-up over that share of all steps, then cosine decay to 0)",
                                        parse=fraction)
    patience: int = setting(0, "stop a finetune after N epochs without val gain (0: never)", parse=non_negative_int)
    select_on: str = setting("val", "split that picks the best finetune epoch ('test' only to reproduce the "
                                    "original)", choices=("val", "test"))
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


# --mode: the schedules and their spellings (``iterate``: the original's)
MODE_ALIASES = {"iterate": "iterative", "iterative": "iterative", "oneshot": "oneshot", "gradual": "gradual"}


@dataclass(frozen=True)
class ScheduleSettings:
    """A pruning schedule: iterative steps from a start, one-shot targets from the dense model, or gradual pruning
    to one target during one finetune. The prune scripts spell ``amount`` and ``iter_end`` their own way."""

    mode: str = setting("iterative", "iterative (alias iterate), oneshot", names=("--mode", "--m_prune"),
                        choices=sorted(MODE_ALIASES))
    amount: float = setting(0.3, "iterative: fraction of the surviving entries removed per step, in (0, 1)",
                            names=("--amount",), parse=open_fraction, metavar="FRACTION")
    # which steps a run makes may change on --resume (a finetune's resume point belongs to one step)
    iter_start: int = setting(1, "first step (resume point)", parse=positive_int, resumable=True)
    iter_end: int = setting(15, "last step (inclusive)", parse=positive_int, metavar="STEP", resumable=True)
    target_sparsity: tuple[float, ...] = setting((), "oneshot: target sparsity (one or more, each from the "
                                                     "pretrained model); gradual: the one target",
                                                 names=("--target_sparsity", "--oneshot"), parse=fraction, nargs="+",
                                                 resumable=True)
    gradual_steps: int = setting(10, "gradual: pruning steps of the cubic schedule (Zhu & Gupta)", parse=positive_int)
    gradual_until: float = setting(0.5, "gradual: share of the finetune's steps by which the target is reached (the "
                                        "best epoch is chosen after it)", parse=open_fraction)

    @property
    def iterative(self) -> bool:
        return self.mode == "iterative"


@dataclass(frozen=True)
class ScoringSettings:
    """The layer scores of a regrowth stage: SSIM on val images, saliency on train batches."""

    ssim_num_batches: int = setting(64, "val batches (of --eval_batch_size) used for SSIM attention maps (at most "
                                        "all of val)", parse=positive_int)
    ssim_threshold: float = setting(0.3, "layers with SSIM <= this are searched (lowest first); none -> the lowest "
                                         "one", parse=finite_float)
    saliency_batches: int | None = setting(None, "train batches for the regrowth scores (default: all; channels: 10)",
                                           names=("--saliency_batches", "--taylor_batches"), parse=positive_int)
    regrowth_score: str = setting("fisher", "fisher: F · θ^2, F the diagonal Fisher estimate of --fisher (the "
                                            "saliency); taylor: mean |dL/dθ| · |θ|", choices=("fisher", "taylor"))
    fisher: str = setting("batch", "how the scores average gradients: batch (original): the square of each batch's "
                                   "mean gradient, averaged over batches (a batch-level Fisher: its values change with "
                                   "--batch_size); per_sample: the square of each image's gradient, averaged over "
                                   "images (the empirical Fisher; slower)", choices=("batch", "per_sample"))
    saliency_model: str = setting("dense", "score on the dense pretrained model (original) or the sparse one",
                                  choices=("dense", "sparse"))


@dataclass(frozen=True)
class SearchSettings:
    """One RL (or random) regrowth search: episodes, the mini-finetune, the reward, the controller and REINFORCE.

    Defaults are the original one-shot script's. ``temperature`` None divides advantages by the rolling std of
    the last ``reward_window_size`` rewards (the iterative search)."""

    episodes: int = setting(400, "maximum RL episodes", names=("--num_epochs",), parse=positive_int, resumable=True)
    finetune_epochs: int = setting(50, "mini-finetune epochs per episode (best epoch on val)", parse=positive_int)
    lr: float = adamw_lr()
    weight_decay: float = adamw_weight_decay()
    init_strategy: str = "zero"  # value of regrown entries (flag: --init_strategy, resolved with --selection)
    # the controller and REINFORCE
    learning_rate: float = setting(3e-4, "controller Adam lr", parse=float_up_to(1.0, positive_float))
    hidden_size: int = setting(64, "controller LSTM hidden units", parse=int_up_to(4096))
    action_space_size: int = setting(11, "A: options j/A of min(capacity, remaining) per layer",
                                     names=("--action_space_size", "--alloc_space_size"), parse=int_up_to(10_000))
    skip: bool = setting(True, "no j = 0 option (the original's 1..A)", names=("--no_skip",), negated=True)
    start_beta: float = setting(0.4, "entropy bonus at the start", parse=float_up_to(100.0))
    end_beta: float = setting(0.04, "entropy bonus after decay", parse=float_up_to(100.0))
    decay_fraction: float = setting(0.4, "share of episodes to decay over", parse=open_fraction)
    budget_bonus: float = setting(0.005, "reward per budget used", parse=float_up_to(100.0))
    early_stop_patience: int = setting(50, "stop after N episodes without a new best reward", parse=positive_int,
                                       resumable=True)
    min_epochs: int = setting(50, "episodes before the flat-reward stop", parse=positive_int, resumable=True)
    reward_std_threshold: float = setting(0.002, "after --min_epochs, stop when the std of the last "
                                                 "--reward_window_size rewards is below", parse=non_negative_float,
                                          resumable=True)
    reward_window_size: int = setting(20, "rewards in the flat-reward window (and in the reward temperature's "
                                          "rolling std)", parse=positive_int, resumable=True)
    episodes_per_update: int = setting(1, "M: episodes sampled from one policy per REINFORCE step (batch-mean "
                                          "baseline; 1: one step per episode with an EMA baseline); under torchrun "
                                          "they run in parallel", parse=int_up_to(10_000))
    episode_steps: int | None = setting(None, "cheap episodes: a mini-finetune of exactly S optimizer steps "
                                              "(batches), its reward the val accuracy after them, instead of "
                                              "--finetune_epochs epochs (default: epochs)", parse=positive_int,
                                        metavar="S")
    episode_val_subset: int | None = setting(None, "measure rewards (and the start they are compared with) on the "
                                                   "first N val images only, the same N in every episode, so paired "
                                                   "rewards stay paired (default: all val images)", parse=positive_int,
                                             metavar="N")
    paired: bool = setting(True, "give every episode its own data order and init draws (default: the same for all, "
                                 "so rewards differ by the allocation only)", names=("--unpaired_episodes",),
                           negated=True)
    learn: bool = setting(True, "baseline: allocations drawn uniformly from the controller's action space, no policy "
                                "updates, best episode by val (written to random_regrowth_* folders)",
                          names=("--random_search",), negated=True)
    temperature: float | None = setting(0.005, "advantage divisor τ (None: the rolling std of the reward window, "
                                               "the iterative search)", names=("--reward_temperature",),
                                        parse=positive_float)
    clip: float = 100.0  # advantage clip
    ema: float = 0.9  # EMA baseline factor (M = 1)
    grad_clip: float = 1.0  # controller gradient norm clip
