"""The RL regrowth search shared by the one-shot and iterative scripts, for weights and channels.

One episode: the policy samples an allocation over the searched units -> a copy of the sparse model
regrows it (top-scoring positions, chosen init) -> mini-finetune (AdamW, best epoch on **val**) ->
reward = (val acc - zero point)/100 + budget_bonus·usage, where the zero point is the starting sparse
model's val accuracy (one-shot) or the interpolated pruning baseline at the new sparsity (iterative).
M = ``--episodes_per_update`` episodes sampled from one policy make a batch, followed by one REINFORCE
step (M = 1: the original's one update per episode with an EMA baseline) and the early-stopping check
(no new best for ``--early_stop_patience`` episodes, or a flat reward window after ``--min_epochs``).

Episodes are paired by default (common random numbers: every episode's mini-finetune sees the same data
order, augmentation and init draws, so two allocations are compared on equal terms); ``--unpaired_episodes``
gives each episode its own draws. Under ``torchrun`` the episodes of a batch run in parallel, one process
each (round-robin), and every process takes the same policy step; rank 0 writes the files.
``--random_search`` draws allocations uniformly from the same action space and never updates the policy:
the baseline an RL search must beat at equal episodes.

Resumable: after every batch the search state (controller, its optimizer, EMA baseline, rewards, the
policy's RNG, the history and the best result so far) is written atomically to ``search_state.pt``; a
resumed search continues from the last finished batch and gives the same later episodes as an
uninterrupted one (CPU). The best models are written as soon as a batch finds them.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from data import DataSettings
from data.loader import DeviceLoader
from utils.core.distributed import all_gather, barrier, broadcast, current_world
from utils.core.errors import UsageError
from utils.core.fields import resumable_flags
from utils.core.files import atomic_save, check_same_run, check_seal, plain, seal, write_csv
from utils.core.log import LOG
from utils.core.paths import BEST_MODEL, BEST_PRE_FINETUNE, SEARCH_STATE, check_output_dir, clean_stale_temps
from utils.core.seeds import make_generator, role_seed
from utils.core.timer import Timer
from utils.device.fill import Cost, EntryCount
from utils.regrow.allocation import allocation_lines, runnable
from utils.regrow.apply import Finetuning, Regrowth, apply_allocation
from utils.results.plots import plot_reward_curve
from utils.runtime.settings import FinetuneSettings, LoopSettings, RunSettings, SearchSettings
from utils.runtime.stage import Stage
from utils.runtime.train import continue_precisions, precision_name
from utils.scoring.ssim import select_layers
from utils.search.controller import AllocationPolicy, Episode, Reinforce
from utils.sparsity.masks import clone_model

# flags a resumed search may change (how long it runs, where and how fast): the settings' resumable flags and the
# search scripts' own; every other flag defines the search
MAY_CHANGE_ON_RESUME = resumable_flags(RunSettings, DataSettings, SearchSettings) | {"num_iters", "target_sparsity"}
STATE_VERSION = 2  # 2: per-episode seeds and policy batches
ZeroPoint = Callable[[float], float]  # sparsity after regrowth -> reference val accuracy (%)


@dataclass
class SearchSpace:
    """The layers a search allocates over, in visiting order (ascending SSIM), with their features."""

    layers: list[str]
    capacities: list[int]
    ssim: list[float]


@dataclass
class SearchStart:
    """What a search regrows from: the sparse model and its file, the per-entry unit scores that pick what
    regrows inside a unit (the ``--selection`` scores), and the source of ``--init_strategy dense`` values
    (the dense model, or the reference of ``--selection reference``)."""

    sparse: nn.Module
    path: Path
    scores: dict[str, torch.Tensor]
    dense: nn.Module


@dataclass
class Budget:
    """What a search may regrow and what that counts. ``total``: one K (one-shot); ``options``: the B budgets the
    controller picks from (iterative); counted by ``cost``: entries of the granularity (weights, channels), or
    MACs of the export (``MacBudget``: a device limit on channels, each allocation trimmed to fit before it
    regrows). The search asks ``cost`` to price, fit and report, and never which one it has."""

    total: int | None = None
    options: list[int] | None = None
    cost: Cost = field(default_factory=EntryCount)


@dataclass
class SearchResult:
    """Best episode of a search (reward includes the bonus; acc_gain does not)."""

    reward: float = float("-inf")
    episode: int = -1
    val_acc: float = float("nan")
    acc_gain: float = float("nan")
    sparsity: float = float("nan")
    allocation: dict[str, int] = field(default_factory=dict)


def check_search_dir(out: Path, stage: Stage) -> None:
    """Before any work: ``out`` is a writable folder; an earlier search there needs --resume (continue) or
    --overwrite (restart), and --resume needs one (and the same defining flags). Temp files of a killed run are
    removed."""
    check_output_dir(out, what="search folder")
    ran, run = (out / SEARCH_STATE).exists(), stage.run
    if ran and not (run.resume or run.overwrite):
        raise UsageError(f"a search already ran in {out}: pass --resume to continue it or --overwrite to restart")
    if run.resume and not ran:
        raise UsageError(f"--resume: no {SEARCH_STATE} in {out}; run without --resume to start")
    if run.resume:
        state = torch.load(out / SEARCH_STATE, map_location="cpu", weights_only=True)
        if state.get("version") != STATE_VERSION:
            raise UsageError(f"--resume: {out / SEARCH_STATE} was written by an older version of the search (other "
                             "episode seeding); start over with --overwrite")
        check_same_run(state.get("settings", {}), stage.flags, MAY_CHANGE_ON_RESUME)
    clean_stale_temps(out)


def episode_val(stage: Stage, settings: SearchSettings) -> DeviceLoader:
    """The val images a search's rewards are measured on: all of them, or the first ``episode_val_subset``
    (the same ones in every episode and for the start's accuracy the rewards are compared with)."""
    val = stage.data.val
    return val if settings.episode_val_subset is None else val.first(settings.episode_val_subset)


UNIT_SETS = ("ssim", "all")  # --units: the units an allocator may regrow into
_STATE_TYPES = {"trainer": dict, "history": list, "best": dict, "rng": dict}  # what a resume reads of a state


def read_search_state(path: Path) -> dict:
    """``search_state.pt`` read and verified whole (its checksum when sealed, the types of what a resume reads);
    a damaged, truncated or hand-edited file is one ``UsageError``."""
    redo = "start over with --overwrite (or use an intact copy)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, a pickled call, ...
        raise UsageError(f"--resume: cannot read {path}: damaged or not a search state ({type(exc).__name__}); "
                         f"{redo}") from None
    check_seal(state, path)
    wrong = (["its content"] if not isinstance(state, dict) else
             [key for key, kind in _STATE_TYPES.items() if not isinstance(state.get(key), kind)])
    policy_rng = state.get("rng", {}).get("policy") if not wrong else None
    if not wrong and not (isinstance(policy_rng, torch.Tensor) and policy_rng.dtype == torch.uint8):
        wrong = ["rng"]
    if wrong:
        raise UsageError(f"--resume: {path} is damaged or hand-edited ({wrong[0]} is not what a search writes); "
                         f"{redo}")
    return state


def search_space(ssim: dict[str, float], capacities: dict[str, int], threshold: float,
                 units: str = "ssim") -> SearchSpace:
    """The units an allocation may regrow into, most damaged first: ``units="ssim"``, those with SSIM <=
    ``threshold`` and room to regrow (the lowest one if none); ``"all"``, every unit with room. Under both, a
    unit that never runs (NaN SSIM) is left out, as by every greedy rule (``runnable``: it gets no budget, and
    one log line names it); the controller reads the SSIM of the others."""
    if units not in UNIT_SETS:
        raise UsageError(f"--units {units}: choose one of {', '.join(UNIT_SETS)}")
    open_units = {name: capacities[name] for name in ssim if capacities.get(name, 0) > 0}
    if not open_units:
        raise UsageError("no unit (layer or channel group) has pruned entries to regrow")
    live = runnable(ssim, open_units)
    layers = select_layers({name: ssim[name] for name in live}, threshold if units == "ssim" else math.inf)
    return SearchSpace(layers, [capacities[n] for n in layers], [ssim[n] for n in layers])


def widen_space(space: SearchSpace, ssim: dict[str, float], capacities: dict[str, int],
                holds: Callable[[dict[str, int]], bool]) -> SearchSpace:
    """``space`` with the next most damaged open units added (ascending SSIM) until ``holds`` is true of
    the searched units' capacities, or every open unit is in: a device limit must be reachable by the
    units a search may regrow into, whatever the SSIM threshold selected. Units that never run (NaN SSIM) stay
    out."""
    layers = list(space.layers)
    rest = sorted((n for n, s in ssim.items() if capacities[n] > 0 and n not in layers and not math.isnan(s)),
                  key=ssim.get)
    while rest and not holds({n: capacities[n] for n in layers}):
        layers.append(rest.pop(0))
    return SearchSpace(layers, [capacities[n] for n in layers], [ssim[n] for n in layers])


@dataclass
class Outcome:
    """What evaluating one episode gives: its log row and (kept only while the batch is decided) its
    regrown model before and after the mini-finetune."""

    row: dict
    before: nn.Module
    after: nn.Module


class Search:
    """Runs and checkpoints one RL regrowth search into ``out``.

    Episodes come in policy batches of ``settings.episodes_per_update``: M allocations sampled from the same
    policy, evaluated (spread over the processes of a ``torchrun`` launch, round-robin), then one policy
    step. Each episode seeds its own randomness (init draws, data order and augmentation, dropout) from the
    run seed: the same seed for every episode when ``settings.paired`` (common random numbers, so rewards
    differ by the allocation only), or one per episode number. So an episode's reward depends on nothing
    but the run seed, its allocation and (unpaired) its number: not on the process that runs it nor on what
    ran before, which makes resume and episode-parallel runs equal a single uninterrupted run.
    """

    def __init__(self, stage: Stage, start: SearchStart, space: SearchSpace, trainer: Reinforce,
                 settings: SearchSettings, zero_point: ZeroPoint, out: Path, budget: Budget) -> None:
        """Units, masks and regrowth come from ``stage.granularity``; ``zero_point`` turns a regrown model's
        sparsity into the val accuracy its reward is measured against."""
        self.stage, self.sparse, self.scores, self.dense = stage, start.sparse, start.scores, start.dense
        self.parent = start.path
        self.space, self.trainer, self.settings, self.zero_point, self.out = space, trainer, settings, zero_point, out
        self.budget = budget
        self.val = episode_val(stage, settings)  # what every episode's reward is measured on
        self.unit_costs = budget.cost.unit_costs(space.layers)
        self.policy_rng = make_generator(stage.run.seed, "policy")
        self.world = current_world()
        self.history: list[dict] = []
        self.best = SearchResult()
        self.seconds = 0.0  # wall time of the finished batches (over all resumed segments)
        self.precisions: list[list] = []  # [precision, first episode] of each stretch (``continue_precisions``)

    @property
    def policy(self) -> AllocationPolicy:
        return self.trainer.policy

    # ---- state -------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        """What ``resume`` needs, sealed with a checksum of all of it (controller and Adam state, RNG, history,
        best), so a damaged file is refused rather than resumed into a different search."""
        return seal({"version": STATE_VERSION, "budget": self.budget.total, "budget_options": self.budget.options,
                "settings": plain(dict(self.stage.flags)), "trainer": self.trainer.state_dict(),
                "history": self.history, "best": vars(self.best), "rng": {"policy": self.policy_rng.get_state()},
                "seconds": self.seconds, "precisions": self.precisions})

    def resume(self) -> None:
        """Continue from ``search_state.pt`` in ``out`` (a usage error when there is none)."""
        path = self.out / SEARCH_STATE
        if not path.is_file():
            raise UsageError(f"--resume: no {SEARCH_STATE} in {self.out}; run without --resume to start")
        state = read_search_state(path)
        check_same_run(state.get("settings", {}), self.stage.flags, MAY_CHANGE_ON_RESUME)
        if (state.get("budget"), state.get("budget_options")) != (self.budget.total, self.budget.options):
            now, then = self.budget.total or self.budget.options, state.get("budget") or state.get("budget_options")
            raise UsageError(f"--resume: the budget is now {now} but the search ran with {then} (a changed device "
                             "profile or data?); resume with the same inputs or start over with --overwrite")
        try:
            self.trainer.load_state_dict(state["trainer"])
            self.history, self.best = state["history"], SearchResult(**state["best"])
            self.policy_rng.set_state(state["rng"]["policy"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise UsageError(f"--resume: {path} does not fit this search ({type(exc).__name__}: {first}); start "
                             "over with --overwrite") from None
        self.seconds = state.get("seconds", 0.0)
        self.precisions = state.get("precisions", [])
        LOG.info("resumed after episode %d (best reward %.4f)", len(self.history), self.best.reward)

    # ---- one episode -------------------------------------------------------------------------------------
    def _seed_episode(self, index: int) -> tuple[torch.Generator, torch.Generator]:
        """Seed the episode's randomness; returns its (init draws, data order) generators."""
        seed, device = self.stage.run.seed, self.stage.device
        role = "episode" if self.settings.paired else f"episode/{index}"
        torch.manual_seed(role_seed(seed, f"{role}/torch"))  # dropout and anything else on the global RNG
        return make_generator(seed, f"{role}/init", device), make_generator(seed, f"{role}/data", device)

    def sample(self) -> Episode:
        """One allocation from the policy (uniform over its action space for a random search)."""
        return self.policy.sample(self.space.capacities, self.space.ssim, self.policy_rng, budget=self.budget.total,
                                  budget_options=self.budget.options, uniform=not self.settings.learn,
                                  costs=self.unit_costs)

    def evaluate(self, index: int, ep: Episode) -> Outcome:
        """Regrow ``ep``'s allocation into a copy of the sparse model, mini-finetune it, and reward it."""
        init_rng, data_rng = self._seed_episode(index)
        allocation = {name: n for name, n in zip(self.space.layers, ep.counts, strict=True) if n > 0}
        sampled = sum(allocation.values())
        allocation = self.budget.cost.fit(allocation)
        gran, cfg = self.stage.granularity, self.settings
        train = self.stage.data.train.with_generator(data_rng)
        epochs = cfg.finetune_epochs
        if cfg.episode_steps is not None:  # one "epoch" of exactly episode_steps batches, then the val reward
            train, epochs = train.steps(cfg.episode_steps), 1
        mini = Finetuning(FinetuneSettings(epochs=epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, patience=0),
                          train, self.val, LoopSettings(progress=False, verbose=False, **self.stage.speed))
        applied = apply_allocation(gran, self.sparse, Regrowth(allocation, self.scores, cfg.init_strategy, self.dense,
                                                               init_rng), mini, keep_before=True)
        model, regrown, fit = applied.model, applied.regrown, applied.fit
        new_sparsity = gran.sparsity(model)
        gain = fit.best_val_acc - self.zero_point(new_sparsity)
        spent = self.budget.cost.spent(allocation, regrown)  # in the budget's unit
        bonus = self.settings.budget_bonus * (spent / ep.budget if ep.budget else 0.0)
        row = {"episode": index + 1, "reward": gain / 100 + bonus, "acc_gain": gain, "bonus": bonus,
               "val_acc": fit.best_val_acc, "sparsity": new_sparsity, "regrown": regrown, "budget": ep.budget,
               "entropy": float(ep.entropy.detach()), "beta": float("nan"), "update": 0,
               "allocation": json.dumps(allocation)}
        row.update(self.budget.cost.columns(allocation, sampled, spent))  # MACs: channels trimmed to stay within it
        return Outcome(row, applied.before, model)

    # ---- one policy batch --------------------------------------------------------------------------------
    def batch(self, first: int) -> list[dict]:
        """Sample, evaluate (this process's share) and learn from the batch of episodes starting at
        ``first`` (0-based); saves a new best model; returns the batch's rows in episode order."""
        size = min(self.settings.episodes_per_update, self.settings.episodes - first)
        episodes = [self.sample() for _ in range(size)]
        mine: dict[int, dict] = {}
        kept: tuple[int, Outcome] | None = None  # this process's best of the batch (first of equal rewards)
        for j in range(self.world.rank, size, self.world.size):
            outcome = self.evaluate(first + j, episodes[j])
            mine[j] = outcome.row
            if kept is None or outcome.row["reward"] > kept[1].row["reward"]:
                kept = (j, outcome)
        merged = {j: row for part in all_gather(mine) for j, row in part.items()}  # every process's rows
        rows = [merged[j] for j in range(size)]
        rewards = [row["reward"] for row in rows]
        beta = self.trainer.update_batch(episodes, rewards, first)["beta"] if self.settings.learn else float("nan")
        for row in rows:
            row.update(beta=beta, update=first // self.settings.episodes_per_update + 1)
        top = max(range(size), key=rewards.__getitem__)
        if rewards[top] > self.best.reward:
            owner = top % self.world.size
            mine_top = kept is not None and kept[0] == top
            self._keep_best(rows[top], broadcast(self._models(kept[1]) if mine_top else None, owner))
        return rows

    @staticmethod
    def _models(outcome: Outcome) -> tuple[dict, dict]:
        """The outcome's two models as CPU state dicts (what another process can receive)."""
        return tuple({k: v.detach().cpu() for k, v in m.state_dict().items()} for m in (outcome.before, outcome.after))

    def _keep_best(self, row: dict, states: tuple[dict, dict]) -> None:
        """Record episode ``row`` as the best so far and (rank 0) write its models before/after finetuning."""
        allocation = json.loads(row["allocation"])
        self.best = SearchResult(row["reward"], row["episode"], row["val_acc"], row["acc_gain"], row["sparsity"],
                                 allocation)
        meta = {"stage": "regrowth", "episode": row["episode"], "reward": row["reward"], "acc_gain": row["acc_gain"],
                "allocation": allocation, "sparsity": row["sparsity"], "parent": str(self.parent)}
        before, after = clone_model(self.sparse), clone_model(self.sparse)
        before.load_state_dict(states[0])
        after.load_state_dict(states[1])
        self.stage.save(self.out / BEST_PRE_FINETUNE, before, {**meta, "finetuned": False})
        self.stage.save(self.out / BEST_MODEL, after, {**meta, "finetuned": True, "val_acc": row["val_acc"]})

    def log_best(self) -> None:
        """The decision the search ends with: the best episode's allocation per searched unit, with each
        unit's SSIM and capacity."""
        if self.best.episode < 0:
            return
        LOG.info("best episode %d of %d (reward %+.2f pp, val %.2f%%): allocation", self.best.episode,
                 len(self.history), 100 * self.best.reward, self.best.val_acc)
        capacities = dict(zip(self.space.layers, self.space.capacities, strict=True))
        ssim = dict(zip(self.space.layers, self.space.ssim, strict=True))
        for line in allocation_lines(self.best.allocation, capacities, ssim, self.stage.granularity.name):
            LOG.info(line)

    def should_stop(self) -> bool:
        """The original's early stop: no new best for ``early_stop_patience`` episodes, or a flat reward window."""
        cfg, done = self.settings, len(self.history)
        if done - self.best.episode >= cfg.early_stop_patience:
            return True
        window = [r["reward"] for r in self.history[-cfg.reward_window_size:]]
        return (done >= cfg.min_epochs and len(window) == cfg.reward_window_size
                and torch.tensor(window).std(unbiased=False).item() < cfg.reward_std_threshold)

    def run(self) -> SearchResult:
        """Policy batches until ``episodes`` or early stop; state saved after each batch; returns the best."""
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.world.size > self.settings.episodes_per_update:
            LOG.warning("%d processes but --episodes_per_update %d: %d of them wait; use M >= the process count",
                        self.world.size, self.settings.episodes_per_update,
                        self.world.size - self.settings.episodes_per_update)
        if len(self.history) < self.settings.episodes and not (self.history and self.should_stop()):
            self.precisions = continue_precisions(self.precisions, precision_name(self.stage.device, self.stage.amp),
                                                  len(self.history) + 1, "episode")
        while len(self.history) < self.settings.episodes and not (self.history and self.should_stop()):
            with Timer() as timer:
                rows = self.batch(len(self.history))
            self.seconds += timer.seconds
            self.history.extend(rows)
            write_csv(self.out / "episodes.csv", self.history)
            atomic_save(self._state(), self.out / SEARCH_STATE)
            for row in rows:  # reward in pp, like the gain: reward = gain/100 + bonus (a fraction) in the CSV
                spent = (f"regrown {row['regrown']} (+{row['macs_added']:,} of {row['budget']:,} MACs, "
                         f"{row['trimmed']} trimmed to fit)" if "macs_added" in row
                         else f"regrown {row['regrown']} of {row['budget']}")
                LOG.info("episode %d: reward %+.2f pp = gain %+.2f pp + budget bonus %.2f pp  val %.2f%%  "
                         "sparsity %.4f  %s%s", row["episode"], 100 * row["reward"], row["acc_gain"],
                         100 * row["bonus"], row["val_acc"], row["sparsity"], spent,
                         "  * new best" if self.best.episode == row["episode"] else "")
        if self.history and all(row["acc_gain"] == 0 for row in self.history):
            LOG.warning("every episode's accuracy gain was 0 pp: the rewards were the budget bonus alone, so the "
                        "allocation was chosen by nothing but budget use (a start at chance, or too short a "
                        "mini-finetune to move the val accuracy)")
        self.log_best()
        kind = "RL search" if self.settings.learn else "random search"
        plot_reward_curve(self.history, self.out / "reward_curve.png",
                          f"{kind} from {Path(self.parent).name}: reward per episode ({self.out.name})")
        barrier()  # the other processes read what rank 0 wrote (the best model) only after this
        return self.best
