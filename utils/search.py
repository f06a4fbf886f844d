"""The RL regrowth search shared by the one-shot and iterative scripts (spec §6-§8).

One episode: the policy samples an allocation over the searched layers -> a copy of the sparse model
regrows it (top saliency positions, chosen init) -> mini-finetune (AdamW, best epoch on **val**) ->
reward = (val acc - zero point)/100 + budget_bonus·usage, where the zero point is the starting sparse
model's val accuracy (one-shot) or the interpolated pruning baseline at the new sparsity (iterative) ->
REINFORCE update -> early-stopping check (spec §6.8).

Resumable: after every episode the whole search state (controller, its optimizer, EMA baseline,
rewards, every RNG that the next episode draws from, the history and the best result so far) is written
atomically to ``search_state.pt``; a resumed search continues from the last finished episode and gives
the same later episodes as an uninterrupted one (CPU). The best models are written as soon as found.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from utils.checkpoint import atomic_save, plain
from utils.controller import AllocationPolicy, Reinforce, ReinforceConfig
from utils.errors import UsageError
from utils.masks import clone_model
from utils.paths import BEST_MODEL, BEST_PRE_FINETUNE, SEARCH_STATE, check_output_dir, clean_stale_temps
from utils.plots import plot_reward_curve
from utils.run import LOG, check_same_run, make_generator, write_csv
from utils.ssim import select_layers
from utils.stage import Stage
from utils.train import finetune

# flags a resumed search may change (how long it runs, where and how fast); every other flag defines the search
MAY_CHANGE_ON_RESUME = {"num_epochs", "early_stop_patience", "min_epochs", "reward_std_threshold",
                        "reward_window_size", "num_iters", "target_sparsity", "resume", "overwrite", "device",
                        "no_progress", "compile", "no_amp", "no_channels_last", "data_dir", "save_dir",
                        "eval_batch_size", "no_download", "trust_pickle"}
ZeroPoint = Callable[[float], float]  # sparsity after regrowth -> reference val accuracy (%)


@dataclass
class SearchSpace:
    """The layers a search allocates over, in visiting order (ascending SSIM), with their features."""

    layers: list[str]
    capacities: list[int]
    ssim: list[float]


@dataclass
class SearchConfig:
    """Search-level settings (the controller's own live in ``ReinforceConfig``)."""

    episodes: int
    finetune_epochs: int
    init_strategy: str = "zero"
    budget_bonus: float = 0.005
    early_stop_patience: int = 50
    min_epochs: int = 50
    reward_std_threshold: float = 0.002
    reward_window_size: int = 20
    lr: float = 3e-4
    weight_decay: float = 0.01


@dataclass
class SearchResult:
    """Best episode of a search (reward includes the bonus; acc_gain does not)."""

    reward: float = float("-inf")
    episode: int = -1
    val_acc: float = float("nan")
    acc_gain: float = float("nan")
    sparsity: float = float("nan")
    allocation: dict[str, int] = field(default_factory=dict)


def check_search_dir(out: Path, args) -> None:
    """Before any work: ``out`` is a writable folder; an earlier search there needs --resume (continue) or
    --overwrite (restart), and --resume needs one. Temp files of a killed run are removed."""
    check_output_dir(out, what="search folder")
    ran = (out / SEARCH_STATE).exists()
    if ran and not (args.resume or args.overwrite):
        raise UsageError(f"a search already ran in {out}: pass --resume to continue it or --overwrite to restart")
    if args.resume and not ran:
        raise UsageError(f"--resume: no {SEARCH_STATE} in {out}; run without --resume to start")
    if args.resume:
        saved = torch.load(out / SEARCH_STATE, map_location="cpu", weights_only=True).get("settings", {})
        check_same_run(saved, args, MAY_CHANGE_ON_RESUME)
    clean_stale_temps(out)


def search_space(ssim: dict[str, float], capacities: dict[str, int], threshold: float) -> SearchSpace:
    """Layers with SSIM <= ``threshold`` and room to regrow, most damaged first (the lowest one if none)."""
    open_layers = {name: s for name, s in ssim.items() if capacities[name] > 0}
    if not open_layers:
        raise UsageError("no unit (layer or channel group) has pruned entries to regrow")
    layers = select_layers(open_layers, threshold)
    return SearchSpace(layers, [capacities[n] for n in layers], [ssim[n] for n in layers])


def trainer_from_args(args, budget_space_size: int = 0, temperature: float | None = None,
                      clip: float = 100.0) -> Reinforce:
    """Policy + REINFORCE trainer from the controller flags (``add_controller_args``)."""
    torch.manual_seed(args.seed)  # policy weights
    policy = AllocationPolicy(args.action_space_size, args.hidden_size, budget_space_size, skip=not args.no_skip)
    config = ReinforceConfig(episodes=args.num_epochs, learning_rate=args.learning_rate, temperature=temperature,
                             clip=clip, start_beta=args.start_beta, end_beta=args.end_beta,
                             decay_fraction=args.decay_fraction, std_window=args.reward_window_size)
    return Reinforce(policy, config)


def config_from_args(args) -> SearchConfig:
    """Search settings from the controller flags."""
    return SearchConfig(episodes=args.num_epochs, finetune_epochs=args.finetune_epochs,
                        init_strategy=args.init_strategy, budget_bonus=args.budget_bonus,
                        early_stop_patience=args.early_stop_patience, min_epochs=args.min_epochs,
                        reward_std_threshold=args.reward_std_threshold, reward_window_size=args.reward_window_size,
                        lr=args.lr, weight_decay=args.weight_decay)


class Search:
    """Runs and checkpoints one RL regrowth search into ``out``."""

    def __init__(self, stage: Stage, sparse: nn.Module, scores: dict[str, torch.Tensor], dense: nn.Module,
                 space: SearchSpace, trainer: Reinforce, config: SearchConfig, zero_point: ZeroPoint, out: Path,
                 parent: Path, budget: int | None = None, budget_options: list[int] | None = None) -> None:
        """``scores``: per-entry unit scores that pick what regrows inside a unit (saliency); ``dense``: the
        dense model (for ``--init_strategy dense``). Units, masks and regrowth come from ``stage.granularity``."""
        self.stage, self.sparse, self.scores, self.dense = stage, sparse, scores, dense
        self.parent = parent
        self.space, self.trainer, self.config, self.zero_point, self.out = space, trainer, config, zero_point, out
        self.budget, self.budget_options = budget, budget_options
        self.policy_rng = make_generator(stage.args.seed, "policy")
        self.init_rng = make_generator(stage.args.seed, "regrowth_init", stage.device)
        self.history: list[dict] = []
        self.best = SearchResult()

    @property
    def policy(self) -> AllocationPolicy:
        return self.trainer.policy

    # ---- state -------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"settings": plain(vars(self.stage.args)), "trainer": self.trainer.state_dict(),
                "history": self.history, "best": vars(self.best),
                "rng": {"policy": self.policy_rng.get_state(), "init": self.init_rng.get_state(),
                        "data": self.stage.data.train.generator.get_state(), "torch": torch.get_rng_state()}}

    def resume(self) -> None:
        """Continue from ``search_state.pt`` in ``out`` (a usage error when there is none)."""
        path = self.out / SEARCH_STATE
        if not path.is_file():
            raise UsageError(f"--resume: no {SEARCH_STATE} in {self.out}; run without --resume to start")
        state = torch.load(path, map_location="cpu", weights_only=True)
        check_same_run(state.get("settings", {}), self.stage.args, MAY_CHANGE_ON_RESUME)
        self.trainer.load_state_dict(state["trainer"])
        self.history, self.best = state["history"], SearchResult(**state["best"])
        self.policy_rng.set_state(state["rng"]["policy"])
        self.init_rng.set_state(state["rng"]["init"])
        self.stage.data.train.generator.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        LOG.info("resumed after episode %d (best reward %.4f)", len(self.history), self.best.reward)

    # ---- one episode -------------------------------------------------------------------------------------
    def episode(self, index: int) -> dict:
        """Sample, regrow, finetune, reward, update; returns the logged row."""
        ep = self.policy.sample(self.space.capacities, self.space.ssim, self.policy_rng, budget=self.budget,
                                budget_options=self.budget_options)
        allocation = {name: n for name, n in zip(self.space.layers, ep.counts, strict=True) if n > 0}
        gran = self.stage.granularity
        model = clone_model(self.sparse)
        regrown = sum(gran.regrow(model, allocation, self.scores, self.config.init_strategy, self.dense,
                                  generator=self.init_rng).values())
        before = clone_model(model)
        fit = finetune(model, self.stage.data.train, self.stage.data.val, epochs=self.config.finetune_epochs,
                       lr=self.config.lr, weight_decay=self.config.weight_decay, progress=False, verbose=False,
                       **self.stage.speed)
        new_sparsity = gran.sparsity(model)
        gain = fit.best_val_acc - self.zero_point(new_sparsity)
        bonus = self.config.budget_bonus * (regrown / ep.budget if ep.budget else 0.0)
        reward = gain / 100 + bonus
        update = self.trainer.update(ep, reward, index)
        row = {"episode": index + 1, "reward": reward, "acc_gain": gain, "bonus": bonus, "val_acc": fit.best_val_acc,
               "sparsity": new_sparsity, "regrown": regrown, "budget": ep.budget, "entropy": float(ep.entropy.detach()),
               "beta": update["beta"], "allocation": json.dumps(allocation)}
        if reward > self.best.reward:
            self.best = SearchResult(reward, index + 1, fit.best_val_acc, gain, new_sparsity, allocation)
            meta = {"stage": "regrowth", "episode": index + 1, "reward": reward, "acc_gain": gain,
                    "allocation": allocation, "sparsity": new_sparsity, "parent": str(self.parent)}
            self.stage.save(self.out / BEST_PRE_FINETUNE, before, {**meta, "finetuned": False})
            self.stage.save(self.out / BEST_MODEL, model, {**meta, "finetuned": True, "val_acc": fit.best_val_acc})
        return row

    def should_stop(self) -> bool:
        """Spec §6.8: no new best for ``early_stop_patience`` episodes, or a flat reward window."""
        cfg, done = self.config, len(self.history)
        if done - self.best.episode >= cfg.early_stop_patience:
            return True
        window = [r["reward"] for r in self.history[-cfg.reward_window_size:]]
        return (done >= cfg.min_epochs and len(window) == cfg.reward_window_size
                and torch.tensor(window).std(unbiased=False).item() < cfg.reward_std_threshold)

    def run(self) -> SearchResult:
        """Episodes until ``episodes`` or early stop; state saved after each; returns the best result."""
        self.out.mkdir(parents=True, exist_ok=True)
        while len(self.history) < self.config.episodes and not (self.history and self.should_stop()):
            index = len(self.history)
            row = self.episode(index)
            self.history.append(row)
            write_csv(self.out / "episodes.csv", self.history)
            atomic_save(self._state(), self.out / SEARCH_STATE)
            LOG.info("episode %d: reward %+.4f  val %.2f%% (gain %+.2f pp)  sparsity %.4f  regrown %d%s",
                     row["episode"], row["reward"], row["val_acc"], row["acc_gain"], row["sparsity"], row["regrown"],
                     "  *" if self.best.episode == row["episode"] else "")
        plot_reward_curve(self.history, self.out / "reward_curve.png")
        return self.best
