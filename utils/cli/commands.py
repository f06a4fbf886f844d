"""What the command line knows about each granularity: its scripts, the searches' defaults, the pipeline's demo
preset and a device curve's targets. A granularity itself (``utils.sparsity.granularity``) is units, masks and
costs; this table sits at the edge, keyed by the granularity class.

    commands(stage.granularity).search_script     # "regrowth_oneshot.py" for weights
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.sparsity.channels import ChannelGranularity
from utils.sparsity.granularity import Granularity
from utils.sparsity.weights import WeightGranularity


@dataclass(frozen=True)
class GranularityCommands:
    """The scripts and defaults of one granularity's command lines."""

    prune_script: str  # the pruning stage
    search_script: str  # the one-shot RL regrowth search
    # schedule (oneshot | iterative) -> the search's (episodes, action space A, mini-finetune epochs, early-stop
    # patience in episodes): the original scripts' defaults
    search_defaults: dict[str, tuple[int, int, int, int]]
    score_batches: int | None  # train batches of the regrowth scores (None: all)
    budget_fracs: tuple[float, float]  # the iterative search's smallest and largest budget / N_tot
    budget_space_size: int  # the iterative search's budget options B
    demo_sparsity: float  # the pipeline demo's start sparsity
    demo_regrow_step: float  # the pipeline demo's regrowth budget / N_tot
    demo_pruner: str  # the pruner of the pipeline demo's start (benchmark_regrowth.py prunes the same way)
    boundary_grid: tuple[float, ...]  # one-shot targets of a device curve (pipeline.py, find_drop_point.py)
    foreign_hint: str  # after a stage's refusal of a checkpoint of this granularity: the scripts that take it
    export_refusal: str = "holds masks that export cannot shrink"  # export.py's error for a checkpoint of it


COMMANDS: dict[type[Granularity], GranularityCommands] = {
    WeightGranularity: GranularityCommands(
        prune_script="prune_unstructure.py", search_script="regrowth_oneshot.py",
        search_defaults={"oneshot": (400, 11, 50, 50), "iterative": (300, 10, 40, 40)}, score_batches=None,
        budget_fracs=(0.001, 0.005), budget_space_size=5, demo_sparsity=0.99, demo_regrow_step=0.01,
        demo_pruner="lamp", boundary_grid=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995),
        foreign_hint="prune_unstructure.py and the weight regrowth scripts take it, evaluate.py / finetune.py any",
        export_refusal="holds unstructured weight masks, which export cannot shrink: export takes channel-pruned "
                       "checkpoints (prune_structure.py)"),
    ChannelGranularity: GranularityCommands(
        prune_script="prune_structure.py", search_script="regrowth_structure_oneshot.py",
        search_defaults={"oneshot": (300, 10, 50, 40), "iterative": (300, 10, 40, 40)}, score_batches=10,
        budget_fracs=(0.005, 0.01), budget_space_size=6, demo_sparsity=0.9, demo_regrow_step=0.05,
        demo_pruner="l1", boundary_grid=(0.2, 0.4, 0.6, 0.7, 0.8, 0.9),
        foreign_hint="prune_structure.py, export.py and the structure regrowth scripts take it, evaluate.py / "
                     "finetune.py any"),
}


def granularity_flags(granularity: Granularity | type[Granularity]) -> list[str]:
    """The ``--granularity`` flag that selects ``granularity`` in a script that serves both (none for the default
    one, so its command lines read as the original repository's)."""
    kind = granularity if isinstance(granularity, type) else type(granularity)
    return [] if kind.is_default else ["--granularity", kind.name]


def commands(granularity: Granularity | type[Granularity]) -> GranularityCommands:
    """The command-line table of ``granularity`` (an instance or its class)."""
    kind = granularity if isinstance(granularity, type) else type(granularity)
    for cls in kind.__mro__:  # a subclass uses its parent's table
        if cls in COMMANDS:
            return COMMANDS[cls]
    raise KeyError(f"granularity {kind.__name__} has no command table: add it to COMMANDS in utils/cli/commands.py")
