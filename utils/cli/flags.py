"""Shared command-line pieces: flag groups, value types and the ``error: ...`` / exit-2 wrapper.

Every stage script builds its parser from these groups so a flag means the same thing everywhere.
"""
from __future__ import annotations

import argparse
import errno
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from data import DataSettings
from utils.cli.commands import commands
from utils.cli.settings_flags import add_settings_args, settings_from_args
from utils.cli.types import (
    fraction,
    int_up_to,
    open_fraction,
    positive_int,
)
from utils.core.distributed import (
    close_world,
    is_main_process,
    launched_world,
    says_errors,
)
from utils.core.errors import ForeignMasks, ReportedError, UsageError
from utils.core.interrupt import interruptible_main
from utils.core.log import setup_logging
from utils.core.paths import (
    prune_dir,
)
from utils.core.provenance import running, script_command
from utils.device.profiles import BudgetSettings, DeviceProfile
from utils.runtime.settings import (
    MODE_ALIASES,
    FinetuneSettings,
    RunSettings,
    ScheduleSettings,
    ScoringSettings,
    SearchSettings,
)
from utils.scoring.selection import SelectionSettings
from utils.search.episodes import UNIT_SETS
from utils.sparsity.granularity import granularity_class
from utils.sparsity.swap import SwapSettings

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


def _with_hint(exc: UsageError) -> str:
    """The error's sentence, and for a checkpoint of another granularity, which scripts take it."""
    if isinstance(exc, ForeignMasks):
        return f"{exc} ({commands(granularity_class(exc.found)).foreign_hint})"
    return str(exc)


def cli_main(func: Callable[[Sequence[str] | None], int | None],
             script_globals: dict | None = None) -> Callable[[Sequence[str] | None], int]:
    """Wrap a script's ``main(argv)``: a ``UsageError`` becomes one ``error:`` line and return code 2; the command
    recorded as run names the script whose globals are ``script_globals`` (default: ``func``'s module)."""

    @functools.wraps(func)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        interruptible_main()  # a stage script: the first Ctrl-C interrupts, a second one adds nothing
        setup_logging()  # console only until the stage knows its run folder (no writes into an earlier run's log)
        try:
            with running(script_command(script_globals or func.__globals__, argv)):
                return func(argv) or 0
        except ReportedError:
            return 2
        except UsageError as exc:
            return _say_error(_with_hint(exc))
        except OSError as exc:  # a path no file can have, met past the output checks (an input's long name)
            if exc.errno not in (errno.ENAMETOOLONG, errno.ELOOP):
                raise
            return _say_error(f"{exc.filename}: {exc.strerror}; pick a shorter name or fix the symlinks")
        except SystemExit as exc:  # argparse: --help exits 0, bad flags exit 2
            return int(exc.code or 0)
        except KeyboardInterrupt:
            sys.stderr.write("\ninterrupted (Ctrl-C): the files written so far are kept (checkpoints and logs are "
                             "written whole or not at all); rerun the same command with --resume where the stage "
                             "has it (pretrain, the pruning stages, finetune.py, the searches), or with --overwrite "
                             "to start over\n")
            return 130
        finally:
            close_world()

    if script_globals is not None:  # a main made for a script (search_entry): errors name the script
        wrapper.__module__ = script_globals.get("__name__", wrapper.__module__)
    return wrapper


def new_parser(doc: str | None, script: str | None = None) -> ArgumentParser:
    """A parser whose description is the script's module docstring, named after ``script`` (default: the calling
    script's file), so a stage run inside pipeline.py still says which script's --help to read."""
    caller = script or sys._getframe(1).f_globals.get("__file__") or sys.argv[0]  # noqa: SLF001
    return ArgumentParser(prog=Path(caller).name, description=doc, formatter_class=HelpFormatter)


def add_common_args(parser: argparse.ArgumentParser, *, m_name_default: str | None = "resnet20",
                    training: bool = True, defaults: dict | None = None, helps: dict | None = None,
                    parses: dict | None = None) -> None:
    """Flags every stage shares: model, data, output folder, seed, device (``RunSettings``, ``DataSettings``).
    ``training=False`` (a stage that only evaluates and writes nothing) still accepts the flags only training and
    writing use, so shared command lines keep working, but leaves them out of --help. ``defaults`` / ``helps`` /
    ``parses``: the stage's own, for ``RunSettings`` fields."""
    group = parser.add_argument_group("common")
    hidden = () if training else ("save_dir", "batch_size", "train_subset", "augment")
    run = {"defaults": {"m_name": m_name_default, **(defaults or {})}, "helps": helps, "hidden": hidden,
           "parses": parses}
    add_settings_args(group, RunSettings, only=("m_name", "dataset"), **run)
    add_settings_args(group, DataSettings, only=("data_dir",))
    add_settings_args(group, RunSettings, only=("save_dir", "seed", "device"), **run)
    add_settings_args(group, RunSettings, only=("batch_size",), **run)
    add_settings_args(group, DataSettings, only=("eval_batch_size",))
    add_settings_args(group, RunSettings, only=("val_split", "train_subset", "eval_subset"), **run)
    add_settings_args(group, DataSettings, only=("download",))
    add_settings_args(group, RunSettings, only=("augment", "progress", "amp"), **run)


def add_run_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, helps: dict[str, str],
                  names: dict[str, tuple[str, ...]] | None = None, defaults: dict | None = None) -> None:
    """The ``RunSettings`` flags a script adds itself (e.g. --overwrite, --resume, --trust_pickle), each with this
    script's help sentence (``helps``: field name -> help; ``names``: its spellings here; ``defaults``: its own)."""
    add_settings_args(parser, RunSettings, only=tuple(helps), helps=helps, names=names, defaults=defaults)


# the DataSettings fields that are the run's (RunSettings carries their flags)
RUN_DATA_FIELDS = ("seed", "val_split", "batch_size", "train_subset", "eval_subset", "channels_last", "augment")


def run_settings(args: argparse.Namespace) -> RunSettings:
    """The shared settings of a stage from its flags (``add_common_args``, ``add_speed_args``,
    ``add_checkpoint_args``, --overwrite / --resume); a flag the script does not add keeps its field's default."""
    run = settings_from_args(RunSettings, args)
    if run.resume and run.overwrite:
        raise UsageError("--resume continues an earlier run and --overwrite starts it over: pass one of them")
    return run


def data_settings(args: argparse.Namespace) -> DataSettings:
    """Where the data set lives and how its splits are cut and batched: the flags of ``add_common_args`` (and
    ``--no_augment`` / ``--no_channels_last`` where a script adds them)."""
    run = settings_from_args(RunSettings, args)
    return settings_from_args(DataSettings, args, **{name: getattr(run, name) for name in RUN_DATA_FIELDS})


def add_speed_args(parser: argparse.ArgumentParser) -> None:
    """Flags that trade speed for nothing but memory layout and precision."""
    add_settings_args(parser.add_argument_group("speed"), RunSettings, only=("channels_last", "compile"))


def add_scoring_args(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """Flags of the layer scores (``ScoringSettings``): SSIM on val images, saliency on train batches;
    ``defaults``: the stage's own."""
    add_settings_args(parser.add_argument_group("layer scores"), ScoringSettings, defaults=defaults)


def scoring_settings(args: argparse.Namespace) -> ScoringSettings:
    """The layer scores of ``add_scoring_args``."""
    return settings_from_args(ScoringSettings, args)


def add_checkpoint_args(parser: argparse.ArgumentParser, pairs: bool = True) -> None:
    """--pretrained (the dense model), --trust_pickle and (``pairs``: the stage pairs a sparse checkpoint with
    the dense model) --allow_other_dense."""
    add_settings_args(parser, RunSettings, only=("pretrained", "trust_pickle") + (("allow_other_dense",) if pairs
                                                                                  else ()))


def add_finetune_args(parser: argparse.ArgumentParser, epochs: int | None, what: str = "finetune epochs") -> None:
    """--finetune_epochs (``epochs``: the stage's default; None: the prune mode's), --lr and --weight_decay of the
    AdamW finetunes (the original's 3e-4 and 0.01)."""
    add_settings_args(parser, FinetuneSettings, only=("epochs", "lr", "weight_decay"), defaults={"epochs": epochs},
                      helps={"epochs": what})


def finetune_settings(args: argparse.Namespace) -> FinetuneSettings:
    """The finetune of ``add_finetune_args`` (and ``add_prune_finetune_args``' patience and split, ``add_swap_args``'
    swap cycles); a flag the script does not add keeps its field's default: a script without --patience gets no
    early stop (``FinetuneSettings.patience`` 0), so a stage that wants one adds the flag with its own default."""
    return settings_from_args(FinetuneSettings, args, swap=swap_settings(args))


def add_swap_args(parser: argparse.ArgumentParser) -> None:
    """Swap cycles at constant density during the finetune (RigL / GraNet style, ``SwapSettings``)."""
    add_settings_args(parser.add_argument_group("swap cycles (weights; off by default)"), SwapSettings)


def swap_settings(args: argparse.Namespace) -> SwapSettings | None:
    """The swap cycles of ``add_swap_args`` (None when neither interval is given); --compile is refused with them
    (the dense gradient is kept by a hook that a compiled graph would not run)."""
    swap = settings_from_args(SwapSettings, args)
    if swap.every and swap.every_epochs:
        raise UsageError("--swap_every (steps) and --swap_every_epochs (epochs) give the same interval; pass one")
    if not swap.enabled:
        return None
    if settings_from_args(RunSettings, args).compile:
        raise UsageError("swap cycles (--swap_every, --swap_every_epochs) do not work with --compile (the swap reads "
                         "each layer's dense gradient through a hook that a compiled graph skips); drop one of them")
    return swap


def add_prune_finetune_args(parser: argparse.ArgumentParser) -> None:
    """--patience (50, the original's) and --select_on of the finetune after each prune step, --overwrite and
    --resume."""
    add_settings_args(parser, FinetuneSettings, only=("patience", "select_on"), defaults={"patience": 50})
    add_run_flags(parser, {"overwrite": "replace checkpoints and log rows an earlier run wrote (default: refuse)",
                           "resume": "continue a killed run: skip the steps it logged, continue the finetune it was "
                                     "in from that step's resume point (written after its first epoch, then at most "
                                     "once a minute)"})


def add_controller_args(parser: argparse.ArgumentParser, *, episodes: int, action_space_size: int,
                        finetune_epochs: int, patience: int, default_init: str = "zero") -> None:
    """Flags of an RL regrowth search (``SearchSettings``: controller, reward, mini-finetune, early stop) and its
    checkpoints, init strategy and resume; the arguments are the stage's defaults."""
    add_checkpoint_args(parser)
    add_settings_args(parser, SearchSettings, only=("finetune_epochs", "lr", "weight_decay"),
                      defaults={"finetune_epochs": finetune_epochs})
    group = parser.add_argument_group("regrowth search")
    parser.add_argument("--initial_ckpt", "--pruned_ckpt", dest="initial_ckpt", required=True,
                        help="sparse starting checkpoint (with masks)")
    add_settings_args(group, SearchSettings, only=("episodes",), defaults={"episodes": episodes})
    group.add_argument("--init_strategy", default=None,
                       help=f"{INIT_HELP}; default {default_init}, or dense with --selection reference")
    add_settings_args(group, SearchSettings, skip=("episodes", "finetune_epochs", "lr", "weight_decay", "temperature",
                                                   "paired", "learn"),
                      defaults={"action_space_size": action_space_size, "early_stop_patience": patience})
    add_settings_args(group, RunSettings, only=("share_gpus",))
    add_settings_args(group, SearchSettings, only=("paired", "learn"))
    add_run_flags(group, {"resume": "continue the search from its search_state.pt"})
    add_run_flags(group, {"overwrite": "start over where a search already ran"})


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device_profile and the flags that set or override its entries (``BudgetSettings``)."""
    add_settings_args(parser.add_argument_group("device budget"), BudgetSettings)


def profile_from_args(args: argparse.Namespace) -> DeviceProfile | None:
    """The profile of ``add_device_args``' flags (file entries overridden by flags), or None when none is given."""
    return settings_from_args(BudgetSettings, args).profile()


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """--selection and --reference_ckpt (``SelectionSettings``)."""
    add_settings_args(parser.add_argument_group("within-unit selection"), SelectionSettings)


def default_init(args: argparse.Namespace, gran_default: str) -> str:
    """--init_strategy when not given: ``dense`` (copy the reference's values) for --selection reference, else
    the granularity's default."""
    return args.init_strategy or ("dense" if args.selection == "reference" else gran_default)


def selection_settings(args: argparse.Namespace, init_default: str) -> SelectionSettings:
    """--selection, --reference_ckpt and the resolved --init_strategy (``default_init``)."""
    return settings_from_args(SelectionSettings, args, init_strategy=default_init(args, init_default))


DEFAULT_FINETUNE_EPOCHS = {"iterative": 40, "oneshot": 400, "gradual": 400}  # the original's budgets, in epochs
GRADUAL = "gradual"  # the mode that prunes during its one finetune (weights only: prune_unstructure.py)


def add_schedule_args(group: argparse._ArgumentGroup, *, amount_flags: tuple[str, ...], end_flags: tuple[str, ...],
                      unit: str, gradual: bool = False) -> None:
    """The schedule flags of both prune scripts (``ScheduleSettings``): --mode, the per-step amount spelled
    ``amount_flags``, --iter_start, the last step spelled ``end_flags`` and --target_sparsity; ``gradual``: also
    --mode gradual and its --gradual_steps / --gradual_until."""
    mode_help = "iterative (alias iterate), oneshot" + (
        ", or gradual: from the dense model to --target_sparsity during one finetune, along a cubic schedule; the "
        "default is the original's, the measurements favour gradual with swap cycles (docs/results)" if gradual else "")
    add_settings_args(group, ScheduleSettings, skip=() if gradual else ("gradual_steps", "gradual_until"),
                      names={"amount": amount_flags, "iter_end": end_flags},
                      choices={} if gradual else {"mode": sorted(m for m in MODE_ALIASES if m != GRADUAL)},
                      helps={"mode": mode_help,
                             "amount": f"iterative: fraction of the surviving {unit} removed per step"})


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
    return settings_from_args(ScheduleSettings, args)


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
    table = commands(kind)
    episodes, actions, epochs, patience = table.search_defaults[schedule]
    add_common_args(parser, m_name_default=None)
    add_speed_args(parser)
    add_scoring_args(parser, defaults={"saliency_batches": table.score_batches})
    add_controller_args(parser, episodes=episodes, action_space_size=actions, finetune_epochs=epochs,
                        patience=patience, default_init=kind.default_init)
    add_selection_args(parser)
    add_units_arg(parser, "ssim")
    default_baseline = {"iterative": f"{{save_dir}}/{{m_name}}/{prune_dir('', '', kind, 'iterative').name}",
                        "oneshot": "none: the sparse start's own val accuracy"}[schedule]
    parser.add_argument("--baseline_dir", default=None, help="pruning checkpoints whose val accuracy, interpolated "
                        f"at the regrown sparsity, is the reward's zero point (default {default_baseline})")
    if schedule == "oneshot":
        parser.add_argument("--regrow_step", "--sparsity_delta", dest="regrow_step", type=open_fraction, default=0.01,
                            help="budget K as a fraction of N_tot (all weights, or all groupable channels); with a "
                                 "device profile, K is what fills it (weights: its bytes; channels: its MACs)")
        add_device_args(parser)
        add_settings_args(parser, SearchSettings, only=("temperature",), helps={"temperature": "advantage divisor τ"})
        parser.add_argument("--label", default=None, help="output sub-folder (default: start sparsity, e.g. 0.9900)")
    else:
        parser.add_argument("--target_sparsity", type=fraction, required=True, help="stop at or below this sparsity")
        parser.add_argument("--num_iters", type=positive_int, default=10, help="maximum regrowth iterations")
        parser.add_argument("--budget_space_size", type=int_up_to(10_000), default=table.budget_space_size,
                            help="B budget options")
        low, high = table.budget_fracs
        parser.add_argument("--min_budget_frac", "--min_restore_frac", dest="min_budget_frac", type=open_fraction,
                            default=low, help="smallest budget / N_tot")
        parser.add_argument("--max_budget_frac", "--max_restore_frac", dest="max_budget_frac", type=open_fraction,
                            default=high, help="largest budget / N_tot")


def search_settings(args: argparse.Namespace, schedule: str, init_strategy: str) -> SearchSettings:
    """The search of ``add_controller_args`` (one-shot: the advantage divisor --reward_temperature and clip 100;
    iterative: the rolling reward std and clip 10, the original's)."""
    oneshot = schedule == "oneshot"
    return settings_from_args(SearchSettings, args, init_strategy=init_strategy, clip=100.0 if oneshot else 10.0,
                              **({} if oneshot else {"temperature": None}))
