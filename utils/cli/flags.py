"""Shared command-line pieces: flag groups, value types and the ``error: ...`` / exit-2 wrapper.

Every stage script builds its parser from these groups so a flag means the same thing everywhere.
"""
from __future__ import annotations

import argparse
import errno
import functools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from data import DataSettings
from utils.core.distributed import (
    close_world,
    is_main_process,
    launched_world,
    says_errors,
)
from utils.core.errors import ReportedError, UsageError
from utils.core.interrupt import interruptible_main
from utils.core.log import setup_logging
from utils.core.paths import (
    prune_dir,
)
from utils.core.provenance import running, script_command
from utils.device.profiles import LIMITS, MAX_LATENCY_BATCH, DeviceProfile, load_profile
from utils.device.storage import FORMATS
from utils.runtime.settings import (
    FinetuneSettings,
    RunSettings,
    ScheduleSettings,
    ScoringSettings,
    SearchSettings,
    SelectionSettings,
)
from utils.scoring.selection import SELECTORS
from utils.search.episodes import UNIT_SETS
from utils.sparsity.granularity import granularity_class
from utils.sparsity.swap import DROP_SCORES, GROW_SCORES, RECOMMENDED_EVERY_EPOCHS, SwapSettings

INIT_HELP = ("value of regrown entries: weights zero (default) | kaiming | xavier | magnitude | dense; channels "
             "dense (default) | preserve | kaiming | magnitude")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every flag's default after its help (flags without a default,
    and switches that are off by default, show none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is False or default is argparse.SUPPRESS
                or not action.option_strings):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})".lstrip()


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: <message>`` on stderr and exit code 2), defaults in --help and
    required flags listed first (in their own "required" section, after positional arguments)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.required_group = self.add_argument_group("required")
        self._action_groups.insert(1, self._action_groups.pop())  # after positionals, before the options

    def add_argument(self, *args, **kwargs) -> argparse.Action:  # type: ignore[override]
        if kwargs.get("required") and args and str(args[0]).startswith("-"):
            return self.required_group.add_argument(*args, **kwargs)
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        if is_main_process():
            sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _say_error(message: str) -> int:
    """Print a usage error's one line (under torchrun: rank 0's; another rank's only where it may be its own,
    ``says_errors``, with its number) and return exit status 2."""
    rank = launched_world().rank
    if says_errors():
        sys.stderr.write(f"error: {message}\n" if rank == 0 else f"error: [rank {rank}] {message}\n")
    return 2


def cli_main(func: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a script's ``main(argv)``: a ``UsageError`` becomes one ``error:`` line and return code 2."""

    @functools.wraps(func)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        interruptible_main()  # a stage script: the first Ctrl-C interrupts, a second one adds nothing
        setup_logging()  # console only until the stage knows its run folder (no writes into an earlier run's log)
        try:
            with running(script_command(func.__globals__, argv)):
                return func(argv) or 0
        except ReportedError:
            return 2
        except UsageError as exc:
            return _say_error(str(exc))
        except OSError as exc:  # a path no file can have, met past the output checks (an input's long name)
            if exc.errno not in (errno.ENAMETOOLONG, errno.ELOOP):
                raise
            return _say_error(f"{exc.filename}: {exc.strerror}; pick a shorter name or fix the symlinks")
        except SystemExit as exc:  # argparse: --help exits 0, bad flags exit 2
            return int(exc.code or 0)
        except KeyboardInterrupt:
            sys.stderr.write("\ninterrupted (Ctrl-C): the files written so far are kept (checkpoints and logs are "
                             "written whole or not at all); rerun the same command with --resume where the stage "
                             "has it (pretrain, the searches), or with --overwrite to start over\n")
            return 130
        finally:
            close_world()

    return wrapper


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1] (sparsities, splits); '99' is rejected, not read as 0.99."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1] (write 0.99, not 99)")
    return value


def open_fraction(text: str) -> float:
    """argparse type: a float strictly between 0 and 1."""
    value = _float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must lie strictly between 0 and 1")
    return value


def fraction_below_one(text: str) -> float:
    """argparse type: a float in [0, 1) (label smoothing: 1 would leave no target)."""
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must lie in [0, 1)")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not an integer") from None


BATCH_LIMIT = 1 << 20  # images in one batch (a batch is allocated at once)
INT_LIMIT = 10**9  # the largest count any int flag takes (epochs, batches, steps, subsets); tighter where allocated
FLOAT_LIMIT = 1e30  # the largest magnitude any float flag takes: far inside fp32 (3.4e38); tighter where it matters


def _at_most(text: str, value: int, limit: int = INT_LIMIT) -> int:
    """``value`` (parsed from ``text``) when it is at most ``limit``; an argparse error otherwise."""
    if value > limit:
        raise argparse.ArgumentTypeError(f"{text} is more than {limit:,}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer from 1 to ``INT_LIMIT``."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return _at_most(text, value)


def int_up_to(limit: int) -> Callable[[str], int]:
    """argparse type factory: an integer from 1 to ``limit`` (sizes that are allocated: never unbounded)."""

    def bounded(text: str) -> int:
        value = _int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text} must be at least 1")
        if value > limit:
            raise argparse.ArgumentTypeError(f"{text} is more than {limit:,}")
        return value

    bounded.__name__ = f"int_up_to_{limit}"
    return bounded


def float_up_to(limit: float, base: Callable[[str], float] | None = None) -> Callable[[str], float]:
    """argparse type factory: a number ``base`` accepts (default: finite and >= 0) up to ``limit`` (rates and
    weights: never unbounded)."""

    def bounded(text: str) -> float:
        if _finite(text) > limit:  # its own bound first: the more useful line
            raise argparse.ArgumentTypeError(f"{text} is more than {limit:g}")
        return (base or non_negative_float)(text)

    bounded.__name__ = f"float_up_to_{limit:g}"
    return bounded


def non_negative_int(text: str) -> int:
    """argparse type: an integer from 0 to ``INT_LIMIT`` (e.g. a patience, where 0 switches early stopping off)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return _at_most(text, value)


def seed_int(text: str) -> int:
    """argparse type: a seed in [0, 2^63) (what every generator accepts)."""
    value = _int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is not a seed in [0, 2^63)")
    return value


def finite_float(text: str) -> float:
    """argparse type: any finite float (nan and inf are refused)."""
    return _float(text)


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a float >= 0."""
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _finite(text: str) -> float:
    """A finite float; nan and inf are refused by every float type (they would silently poison training)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _float(text: str) -> float:
    """A finite float of magnitude at most ``FLOAT_LIMIT``."""
    value = _finite(text)
    if abs(value) > FLOAT_LIMIT:
        raise argparse.ArgumentTypeError(f"{text} is beyond ±{FLOAT_LIMIT:g}: no flag here means anything that large")
    return value


def new_parser(doc: str | None) -> ArgumentParser:
    """A parser whose description is the script's module docstring, named after the calling script's file
    (so a stage run inside pipeline.py still says which script's --help to read)."""
    caller = sys._getframe(1).f_globals.get("__file__") or sys.argv[0]  # noqa: SLF001
    return ArgumentParser(prog=Path(caller).name, description=doc, formatter_class=HelpFormatter)


def add_common_args(parser: argparse.ArgumentParser, *, m_name_default: str | None = "resnet20",
                    training: bool = True) -> None:
    """Flags every stage shares: model, data, output folder, seed, device. ``training=False`` (a stage that
    only evaluates and writes nothing) still accepts the flags only training and writing use, so shared
    command lines keep working, but leaves them out of --help."""
    group = parser.add_argument_group("common")
    unlisted = {} if training else {"help": argparse.SUPPRESS}
    group.add_argument("--m_name", default=m_name_default, help="model name (see models/)")
    group.add_argument("--dataset", default=None,
                       help="cifar10 | tiny_imagenet | synthetic (default: the model's own data set)")
    group.add_argument("--data_dir", default="./data", help="folder holding the data sets")
    group.add_argument("--save_dir", default="./runs", **({"help": "root of all run folders"} | unlisted))
    group.add_argument("--seed", type=seed_int, default=42, help="run seed (data order, val split, init)")
    group.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    group.add_argument("--batch_size", type=int_up_to(BATCH_LIMIT), default=128,
                       **({"help": "training batch size"} | unlisted))
    group.add_argument("--eval_batch_size", type=int_up_to(BATCH_LIMIT), default=500, help="evaluation batch size")
    group.add_argument("--val_split", type=open_fraction, default=0.1,
                       help="fraction of the training set held out for validation")
    group.add_argument("--train_subset", type=positive_int, default=None,
                       **({"help": "use only the first N training images (quick runs)"} | unlisted))
    group.add_argument("--eval_subset", type=positive_int, default=None,
                       help="evaluate on only the first N val and N test images (quick runs; default: all)")
    group.add_argument("--no_download", action="store_true", help="never try to download a missing data set")
    group.add_argument("--no_augment", action="store_true",
                       **({"help": "train without crop/flip/jitter augmentation"} | unlisted))
    group.add_argument("--no_progress", action="store_true", help="no progress bars")
    group.add_argument("--no_amp", action="store_true",
                       help="fp32 everywhere, evaluation included: no bf16 autocast (the default on CUDA and on CPUs "
                            "with AMX or AVX512-BF16)")


def run_settings(args: argparse.Namespace) -> RunSettings:
    """The shared settings of a stage from its flags (``add_common_args``, ``add_speed_args``,
    ``add_checkpoint_args``, --overwrite / --resume); a flag the script does not define keeps its default."""
    given = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    if given("resume", False) and given("overwrite", False):
        raise UsageError("--resume continues an earlier run and --overwrite starts it over: pass one of them")
    return RunSettings(save_dir=given("save_dir", "./runs"), seed=given("seed", 42), val_split=given("val_split", 0.1),
                       batch_size=given("batch_size", 128), train_subset=given("train_subset"),
                       eval_subset=given("eval_subset"), augment=not given("no_augment", False),
                       progress=not given("no_progress", False), amp=not given("no_amp", False),
                       channels_last=not given("no_channels_last", False), compile=bool(given("compile", False)),
                       overwrite=bool(given("overwrite", False)), resume=bool(given("resume", False)),
                       pretrained=given("pretrained"), trust_pickle=bool(given("trust_pickle", False)),
                       allow_other_dense=bool(given("allow_other_dense", False)))


def data_settings(args: argparse.Namespace) -> DataSettings:
    """Where the data set lives and how its splits are cut and batched, from the flags of ``add_common_args``
    (and ``--no_augment`` / ``--no_channels_last`` where a script defines them)."""
    return DataSettings(data_dir=args.data_dir, seed=args.seed, val_split=args.val_split, batch_size=args.batch_size,
                        eval_batch_size=args.eval_batch_size, train_subset=args.train_subset,
                        eval_subset=args.eval_subset, download=not args.no_download,
                        channels_last=not getattr(args, "no_channels_last", False),
                        augment=not getattr(args, "no_augment", False))


def add_speed_args(parser: argparse.ArgumentParser) -> None:
    """Flags that trade speed for nothing but memory layout and precision."""
    group = parser.add_argument_group("speed")
    group.add_argument("--no_channels_last", action="store_true", help="keep NCHW memory layout")
    group.add_argument("--compile", action="store_true", help="torch.compile the model")


def add_scoring_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the layer scores: SSIM on val images, saliency on train batches."""
    group = parser.add_argument_group("layer scores")
    group.add_argument("--ssim_num_batches", type=positive_int, default=64,
                       help="val batches (of --eval_batch_size) used for SSIM attention maps (at most all of val)")
    group.add_argument("--ssim_threshold", type=finite_float, default=0.3,
                       help="layers with SSIM <= this are searched (lowest first); none -> the lowest one")
    group.add_argument("--saliency_batches", "--taylor_batches", dest="saliency_batches", type=positive_int,
                       default=None, help="train batches for the regrowth scores (default: all; channels: 10)")
    group.add_argument("--regrowth_score", choices=["fisher", "taylor"], default="fisher",
                       help="fisher: F · θ^2, F the diagonal Fisher estimate of --fisher (the saliency); taylor: "
                            "mean |dL/dθ| · |θ|")
    group.add_argument("--fisher", choices=["batch", "per_sample"], default="batch",
                       help="how the scores average gradients: batch (original): the square of each batch's mean "
                            "gradient, averaged over batches (a batch-level Fisher: its values change with "
                            "--batch_size); per_sample: the square of each image's gradient, averaged over images "
                            "(the empirical Fisher; slower)")
    group.add_argument("--saliency_model", choices=["dense", "sparse"], default="dense",
                       help="score on the dense pretrained model (original) or the sparse one")


def scoring_settings(args: argparse.Namespace) -> ScoringSettings:
    """The layer scores of ``add_scoring_args``."""
    return ScoringSettings(ssim_num_batches=args.ssim_num_batches, ssim_threshold=args.ssim_threshold,
                           saliency_batches=args.saliency_batches, regrowth_score=args.regrowth_score,
                           saliency_model=args.saliency_model, fisher=args.fisher)


def add_checkpoint_args(parser: argparse.ArgumentParser, pairs: bool = True) -> None:
    """--pretrained (the dense model), --trust_pickle and (``pairs``: the stage pairs a sparse checkpoint with
    the dense model) --allow_other_dense."""
    parser.add_argument("--pretrained", default=None,
                        help="dense pretrained checkpoint (default {save_dir}/{m_name}/checkpoint/ckpt.pth)")
    parser.add_argument("--trust_pickle", action="store_true",
                        help="allow checkpoints that are pickled nn.Modules (runs code from the file)")
    if pairs:
        parser.add_argument("--allow_other_dense", action="store_true",
                            help="pair a sparse checkpoint with a dense model it was not pruned from (its meta "
                                 "records its dense parent's fingerprint; a mismatch is refused by default); what "
                                 "this stage writes then records --pretrained as its parent")


def add_finetune_args(parser: argparse.ArgumentParser, epochs: int | None, what: str = "finetune epochs") -> None:
    """--finetune_epochs, --lr and --weight_decay of the AdamW finetunes (the original's 3e-4 and 0.01)."""
    parser.add_argument("--finetune_epochs", type=positive_int, default=epochs, help=what)
    parser.add_argument("--lr", type=positive_float, default=3e-4, help="AdamW learning rate of the finetunes")
    parser.add_argument("--weight_decay", type=float_up_to(1.0), default=0.01, help="AdamW weight decay")


def finetune_settings(args: argparse.Namespace) -> FinetuneSettings:
    """The finetune of ``add_finetune_args`` (and ``add_prune_finetune_args``' patience and split)."""
    return FinetuneSettings(epochs=args.finetune_epochs, lr=args.lr, weight_decay=args.weight_decay,
                            patience=getattr(args, "patience", 50), select_on=getattr(args, "select_on", "val"),
                            swap=swap_settings(args) if hasattr(args, "swap_every") else None)


def add_swap_args(parser: argparse.ArgumentParser) -> None:
    """Swap cycles at constant density during the finetune (RigL / GraNet style, ``utils.sparsity.swap``)."""
    group = parser.add_argument_group("swap cycles (weights; off by default)")
    group.add_argument("--swap_every", type=non_negative_int, default=0, metavar="N",
                       help="every N optimizer steps, each layer drops its weakest kept weights and grows as many "
                            "pruned ones back at zero (its kept count never changes); 0: no swaps (the original's "
                            "default). Steps depend on the data set's size: --swap_every_epochs gives the interval in "
                            f"epochs ({RECOMMENDED_EVERY_EPOCHS} with gradual pruning: the measured recommendation)")
    group.add_argument("--swap_every_epochs", type=positive_float, default=None, metavar="E",
                       help="instead of --swap_every: a swap every E epochs (a fraction allowed: 0.25 is four an "
                            "epoch), turned into optimizer steps on the run's data, so it means the same on any "
                            "data set size")
    group.add_argument("--swap_fraction", type=open_fraction, default=0.3,
                       help="share of each layer's kept weights swapped at the first swap, decayed by a cosine")
    group.add_argument("--swap_until", type=open_fraction, default=0.75,
                       help="no swaps after this share of the finetune's steps (the cosine reaches 0 there)")
    group.add_argument("--grow_score", choices=list(GROW_SCORES), default="gradient",
                       help="gradient: |dL/dθ| on the step's batch (RigL); saliency: (dL/dθ)^2 θ_dense^2 (needs the "
                            "dense model, --pretrained)")
    group.add_argument("--drop_score", choices=list(DROP_SCORES), default="magnitude",
                       help="magnitude: the smallest |θ| among kept weights are dropped")


def swap_settings(args: argparse.Namespace) -> SwapSettings | None:
    """The swap cycles of ``add_swap_args`` (None when --swap_every is 0); --compile is refused with them (the
    dense gradient is kept by a hook that a compiled graph would not run)."""
    every_epochs = getattr(args, "swap_every_epochs", None)
    if args.swap_every and every_epochs:
        raise UsageError("--swap_every (steps) and --swap_every_epochs (epochs) give the same interval; pass one")
    if not args.swap_every and not every_epochs:
        return None
    if getattr(args, "compile", False):
        raise UsageError("swap cycles (--swap_every, --swap_every_epochs) do not work with --compile (the swap reads "
                         "each layer's dense gradient "
                         "through a hook that a compiled graph skips); drop one of them")
    return SwapSettings(every=args.swap_every, every_epochs=every_epochs, fraction=args.swap_fraction,
                        until=args.swap_until, grow_score=args.grow_score, drop_score=args.drop_score)


def add_prune_finetune_args(parser: argparse.ArgumentParser) -> None:
    """--patience and --select_on of the finetune after each prune step."""
    parser.add_argument("--patience", type=non_negative_int, default=50,
                        help="stop a finetune after N epochs without val gain (0: never)")
    parser.add_argument("--select_on", choices=["val", "test"], default="val",
                        help="split that picks the best finetune epoch ('test' only to reproduce the original)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace checkpoints and log rows an earlier run wrote (default: refuse)")


def add_controller_args(parser: argparse.ArgumentParser, *, episodes: int, action_space_size: int,
                        finetune_epochs: int, patience: int, default_init: str = "zero") -> None:
    """Flags of an RL regrowth search (controller, reward, mini-finetune, early stop, resume)."""
    add_checkpoint_args(parser)
    add_finetune_args(parser, finetune_epochs, "mini-finetune epochs per episode (best epoch on val)")
    group = parser.add_argument_group("regrowth search")
    parser.add_argument("--initial_ckpt", "--pruned_ckpt", dest="initial_ckpt", required=True,
                        help="sparse starting checkpoint (with masks)")
    group.add_argument("--num_epochs", type=positive_int, default=episodes, help="maximum RL episodes")
    group.add_argument("--init_strategy", default=None,
                       help=f"{INIT_HELP}; default {default_init}, or dense with --selection reference")
    group.add_argument("--learning_rate", type=float_up_to(1.0, positive_float), default=3e-4,
                       help="controller Adam lr")
    group.add_argument("--hidden_size", type=int_up_to(4096), default=64, help="controller LSTM hidden units")
    group.add_argument("--action_space_size", "--alloc_space_size", dest="action_space_size", type=int_up_to(10_000),
                       default=action_space_size,
                       help="A: options j/A of min(capacity, remaining) per layer")
    group.add_argument("--no_skip", action="store_true", help="no j = 0 option (the original's 1..A)")
    group.add_argument("--start_beta", type=float_up_to(100.0), default=0.4, help="entropy bonus at the start")
    group.add_argument("--end_beta", type=float_up_to(100.0), default=0.04, help="entropy bonus after decay")
    group.add_argument("--decay_fraction", type=open_fraction, default=0.4, help="share of episodes to decay over")
    group.add_argument("--budget_bonus", type=float_up_to(100.0), default=0.005, help="reward per budget used")
    group.add_argument("--early_stop_patience", type=positive_int, default=patience,
                       help="stop after N episodes without a new best reward")
    group.add_argument("--min_epochs", type=positive_int, default=50, help="episodes before the flat-reward stop")
    group.add_argument("--reward_std_threshold", type=non_negative_float, default=0.002,
                       help="after --min_epochs, stop when the std of the last --reward_window_size rewards is below")
    group.add_argument("--reward_window_size", type=positive_int, default=20,
                       help="rewards in the flat-reward window (and in the reward temperature's rolling std)")
    group.add_argument("--episodes_per_update", type=int_up_to(10_000), default=1,
                       help="M: episodes sampled from one policy per REINFORCE step (batch-mean baseline; 1: "
                            "one step per episode with an EMA baseline); under torchrun they run in parallel")
    group.add_argument("--episode_steps", type=positive_int, default=None, metavar="S",
                       help="cheap episodes: a mini-finetune of exactly S optimizer steps (batches), its reward the "
                            "val accuracy after them, instead of --finetune_epochs epochs (default: epochs)")
    group.add_argument("--episode_val_subset", type=positive_int, default=None, metavar="N",
                       help="measure rewards (and the start they are compared with) on the first N val images only, "
                            "the same N in every episode, so paired rewards stay paired (default: all val images)")
    group.add_argument("--share_gpus", action="store_true",
                       help="under torchrun, allow more processes than GPUs: local rank r runs its episodes on GPU "
                            "r mod G (collectives over gloo); one small model's episode leaves a GPU mostly idle")
    group.add_argument("--unpaired_episodes", action="store_true",
                       help="give every episode its own data order and init draws (default: the same for all, "
                            "so rewards differ by the allocation only)")
    group.add_argument("--random_search", action="store_true",
                       help="baseline: allocations drawn uniformly from the controller's action space, no policy "
                            "updates, best episode by val (written to random_regrowth_* folders)")
    group.add_argument("--resume", action="store_true", help="continue the search from its search_state.pt")
    group.add_argument("--overwrite", action="store_true", help="start over where a search already ran")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device_profile and the flags that set or override its entries."""
    group = parser.add_argument_group("device budget")
    group.add_argument("--device_profile", default=None, help="JSON file of a device's limits (see profiles/)")
    group.add_argument("--max_bytes", type=positive_float, default=None, help="model storage limit, bytes")
    group.add_argument("--max_macs", type=positive_float, default=None, help="MACs per image limit")
    group.add_argument("--max_latency_ms", type=positive_float, default=None,
                       help="latency limit of one forward pass, ms (measured here)")
    group.add_argument("--storage", choices=FORMATS, default=None,
                       help="how the device stores sparse weights (default: the profile's, else bitmap_fp32)")
    group.add_argument("--latency_batch", type=int_up_to(MAX_LATENCY_BATCH), default=None,
                       help="images per timed forward pass")


def profile_from_args(args: argparse.Namespace) -> DeviceProfile | None:
    """The profile the flags describe (file entries overridden by flags), or None when none is given."""
    entries = load_profile(args.device_profile) if args.device_profile else {}
    for key in (*LIMITS, "storage", "latency_batch"):
        if getattr(args, key, None) is not None:
            entries[key] = getattr(args, key)
    if not entries and not args.device_profile:
        return None  # (an empty profile file is refused below: it sets no limit)
    entries.setdefault("name", Path(args.device_profile).stem if args.device_profile else "given by flags")
    return DeviceProfile(**entries)


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """--selection and --reference_ckpt."""
    group = parser.add_argument_group("within-unit selection")
    group.add_argument("--selection", choices=list(SELECTORS), default="saliency",
                       help="which masked entries of a unit regrow first: saliency, reference (those a "
                            "less sparse --reference_ckpt keeps, values copied from it), magnitude, random")
    group.add_argument("--reference_ckpt", default=None,
                       help="--selection reference: a less sparse checkpoint of the same model")


def default_init(args: argparse.Namespace, gran_default: str) -> str:
    """--init_strategy when not given: ``dense`` (copy the reference's values) for --selection reference, else
    the granularity's default."""
    return args.init_strategy or ("dense" if args.selection == "reference" else gran_default)


def selection_settings(args: argparse.Namespace, init_default: str) -> SelectionSettings:
    """--selection, --reference_ckpt and the resolved --init_strategy (``default_init``)."""
    return SelectionSettings(selection=args.selection, reference_ckpt=args.reference_ckpt,
                             init_strategy=default_init(args, init_default))


DEFAULT_FINETUNE_EPOCHS = {"iterative": 40, "oneshot": 400, "gradual": 400}  # the original's budgets, in epochs
MODE_ALIASES = {"iterate": "iterative", "iterative": "iterative", "oneshot": "oneshot", "gradual": "gradual"}
GRADUAL = "gradual"  # the mode that prunes during its one finetune (weights only: prune_unstructure.py)


def add_schedule_args(group: argparse._ArgumentGroup, *, amount_flags: tuple[str, ...], end_flags: tuple[str, ...],
                      unit: str, gradual: bool = False) -> None:
    """--mode, the per-step amount (``amount_flags``, dest ``amount``), --iter_start, the last step
    (``end_flags``, dest ``iter_end``) and --target_sparsity: the schedule flags of both prune scripts;
    ``gradual``: also --mode gradual and its --gradual_steps / --gradual_until."""
    modes = sorted(m for m in MODE_ALIASES if gradual or m != GRADUAL)
    group.add_argument("--mode", "--m_prune", dest="mode", default="iterative", choices=modes,
                       help="iterative (alias iterate), oneshot" + (", or gradual: from the dense model to "
                                                                     "--target_sparsity during one finetune, along a "
                                                                     "cubic schedule; the default is the original's, "
                                                                     "the measurements favour gradual with swap cycles "
                                                                     "(docs/results)" if gradual else ""))
    group.add_argument(*amount_flags, dest="amount", type=open_fraction, default=0.3, metavar="FRACTION",
                       help=f"iterative: fraction of the surviving {unit} removed per step")
    group.add_argument("--iter_start", type=positive_int, default=1, help="first step (resume point)")
    group.add_argument(*end_flags, dest="iter_end", type=positive_int, default=15, metavar="STEP",
                       help="last step (inclusive)")
    group.add_argument("--target_sparsity", "--oneshot", dest="target_sparsity", type=fraction, nargs="+",
                       default=None, help="oneshot: target sparsity (one or more, each from the pretrained model); "
                                          "gradual: the one target")
    if gradual:
        group.add_argument("--gradual_steps", type=positive_int, default=10,
                           help="gradual: pruning steps of the cubic schedule (Zhu & Gupta)")
        group.add_argument("--gradual_until", type=open_fraction, default=0.5,
                           help="gradual: share of the finetune's steps by which the target is reached (the best "
                                "epoch is chosen after it)")


def finish_schedule_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Canonical --mode, the default finetune length of the mode, and the schedule's consistency checks."""
    args.mode = MODE_ALIASES[args.mode]
    if args.finetune_epochs is None:
        args.finetune_epochs = DEFAULT_FINETUNE_EPOCHS[args.mode]
    if args.mode in ("oneshot", GRADUAL) and not args.target_sparsity:
        parser.error(f"--mode {args.mode} needs --target_sparsity (e.g. 0.9)")
    if args.mode == GRADUAL and len(args.target_sparsity) > 1:
        parser.error("--mode gradual takes one --target_sparsity (run it once per target)")
    if args.iter_start > args.iter_end:
        parser.error(f"--iter_start {args.iter_start} is after the last step {args.iter_end}")
    return args


def schedule_settings(args: argparse.Namespace) -> ScheduleSettings:
    """The pruning schedule of ``add_schedule_args`` (after ``finish_schedule_args``)."""
    return ScheduleSettings(mode=args.mode, amount=args.amount, iter_start=args.iter_start, iter_end=args.iter_end,
                            target_sparsity=tuple(args.target_sparsity or ()),
                            gradual_steps=getattr(args, "gradual_steps", 10),
                            gradual_until=getattr(args, "gradual_until", 0.5))


def add_units_arg(parser: argparse.ArgumentParser, default: str) -> None:
    """--units, the one choice of which units any allocator (RL, random search, greedy) may regrow into."""
    parser.add_argument("--units", choices=UNIT_SETS, default=default,
                        help="units the budget may go to: ssim (those with SSIM <= --ssim_threshold, the lowest one "
                             "if none; the search's default) or all (every unit with pruned entries; greedy's "
                             "default). Give both allocators the same choice to compare allocators, not unit sets")


def add_search_args(parser: argparse.ArgumentParser, granularity: str, schedule: str) -> None:
    """Every flag of a regrowth search script at ``granularity`` (weight|channel) and ``schedule``
    (oneshot|iterative), with the original scripts' names as aliases."""
    kind = granularity_class(granularity)
    episodes, actions, epochs, patience = kind.search_defaults[schedule]
    add_common_args(parser, m_name_default=None)
    add_speed_args(parser)
    add_scoring_args(parser)
    add_controller_args(parser, episodes=episodes, action_space_size=actions, finetune_epochs=epochs,
                        patience=patience, default_init=kind.default_init)
    add_selection_args(parser)
    add_units_arg(parser, "ssim")
    parser.set_defaults(saliency_batches=kind.score_batches)
    default_baseline = {"iterative": f"{{save_dir}}/{{m_name}}/{prune_dir('', '', kind, 'iterative').name}",
                        "oneshot": "none: the sparse start's own val accuracy"}[schedule]
    parser.add_argument("--baseline_dir", default=None, help="pruning checkpoints whose val accuracy, interpolated "
                        f"at the regrown sparsity, is the reward's zero point (default {default_baseline})")
    if schedule == "oneshot":
        parser.add_argument("--regrow_step", "--sparsity_delta", dest="regrow_step", type=open_fraction, default=0.01,
                            help="budget K as a fraction of N_tot (all weights, or all groupable channels); with a "
                                 "device profile, K is what fills it (weights: its bytes; channels: its MACs)")
        add_device_args(parser)
        parser.add_argument("--reward_temperature", type=positive_float, default=0.005, help="advantage divisor τ")
        parser.add_argument("--label", default=None, help="output sub-folder (default: start sparsity, e.g. 0.9900)")
    else:
        parser.add_argument("--target_sparsity", type=fraction, required=True, help="stop at or below this sparsity")
        parser.add_argument("--num_iters", type=positive_int, default=10, help="maximum regrowth iterations")
        parser.add_argument("--budget_space_size", type=int_up_to(10_000), default=kind.budget_space_size,
                            help="B budget options")
        low, high = kind.budget_fracs
        parser.add_argument("--min_budget_frac", "--min_restore_frac", dest="min_budget_frac", type=open_fraction,
                            default=low, help="smallest budget / N_tot")
        parser.add_argument("--max_budget_frac", "--max_restore_frac", dest="max_budget_frac", type=open_fraction,
                            default=high, help="largest budget / N_tot")


def search_settings(args: argparse.Namespace, schedule: str, init_strategy: str) -> SearchSettings:
    """The search of ``add_controller_args`` (one-shot: the advantage divisor --reward_temperature and clip 100;
    iterative: the rolling reward std and clip 10, the original's)."""
    oneshot = schedule == "oneshot"
    return SearchSettings(episodes=args.num_epochs, finetune_epochs=args.finetune_epochs,
                          episode_steps=args.episode_steps, episode_val_subset=args.episode_val_subset, lr=args.lr,
                          weight_decay=args.weight_decay, init_strategy=init_strategy, budget_bonus=args.budget_bonus,
                          early_stop_patience=args.early_stop_patience, min_epochs=args.min_epochs,
                          reward_std_threshold=args.reward_std_threshold, reward_window_size=args.reward_window_size,
                          episodes_per_update=args.episodes_per_update, paired=not args.unpaired_episodes,
                          learn=not args.random_search, action_space_size=args.action_space_size,
                          hidden_size=args.hidden_size, skip=not args.no_skip, learning_rate=args.learning_rate,
                          temperature=args.reward_temperature if oneshot else None, clip=100.0 if oneshot else 10.0,
                          start_beta=args.start_beta, end_beta=args.end_beta, decay_fraction=args.decay_fraction)
