"""The RL controller that splits a regrowth budget across layers, model-agnostic.

``AllocationPolicy`` is an LSTMCell that visits the searched layers one step each. At step i its input is
the previous step's raw logits (zero-padded) and a context ``[position, capacity share, remaining-budget
share, SSIM]``. The options for a layer are ``round(j/A · min(capacity, remaining))`` for j = 0..A (j = 0
skips the layer; ``skip=False`` gives the original 1..A); options whose count repeats an earlier one are
masked, so every distinct count has one action. An optional first "budget" step picks the episode's total
budget among given options. Sampling uses the policy's own ``torch.Generator``.

``Reinforce`` trains it one episode per update (``update``), or one batch of M episodes sampled from the
same policy per update (``update_batch``: the batch's mean reward is the baseline). One episode: EMA
baseline (initialised to the first reward), advantage ``clip((r - b)/τ, ±c)`` with τ fixed or the
rolling std of recent rewards, loss ``-A·Σ log π - β·H`` with β decaying linearly from ``start_beta`` to
``end_beta`` over the first ``decay_fraction`` of the episodes, Adam and gradient-norm clipping at 1.0.
Its state (policy, optimizer, baseline, rewards) is a plain dict for resumable searches.

The loss *sums* the log-probabilities over the T steps of an episode (one per searched unit, plus the budget
step when there is one) but *averages* their entropies (``H = (1/T)·Σ_t H_t``), as the original does. Per step,
the entropy bonus therefore weighs ``β/T`` against a policy-gradient term of weight ``|A|``: the effective
entropy weight shrinks as the number of searched units grows (a search over 80 units gets 1/20 of the
exploration pressure per step that one over 4 units gets at the same ``--start_beta``/``--end_beta``).
Kept for fidelity; compare β values only between searches over the same number of units.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.runtime.settings import SearchSettings

CONTEXT = 4  # position, capacity share, remaining-budget share, SSIM


@dataclass
class Episode:
    """One sampled allocation and what the update needs from it."""

    counts: list[int]  # weights per searched layer, in visiting order
    budget: int  # the episode's total budget K (entries, or cost units when the layers have costs)
    actions: list[int]  # chosen option index per step (budget step first when present)
    log_prob: torch.Tensor  # sum of log π over steps (scalar, differentiable)
    entropy: torch.Tensor  # mean entropy over steps (scalar, differentiable): per step β/T, see the module doc


class AllocationPolicy(nn.Module):
    """LSTM policy over per-layer allocation options (and optionally a first budget choice)."""

    def __init__(self, action_space_size: int = 11, hidden_size: int = 64, budget_space_size: int = 0,
                 skip: bool = True) -> None:
        super().__init__()
        self.fractions = [j / action_space_size for j in range(0 if skip else 1, action_space_size + 1)]
        self.width = max(len(self.fractions), budget_space_size)  # size of the fed-back logits
        self.cell = nn.LSTMCell(self.width + CONTEXT, hidden_size)
        self.alloc_head = nn.Linear(hidden_size, len(self.fractions))
        self.budget_head = nn.Linear(hidden_size, budget_space_size) if budget_space_size else None
        self.hidden_size = hidden_size

    def _step(self, prev: torch.Tensor, context: list[float], state):
        x = torch.cat([F.pad(prev, (0, self.width - prev.shape[1])), torch.tensor([context])], dim=1)
        return self.cell(x, state)

    def options(self, capacity: int, remaining: int) -> tuple[list[int], torch.Tensor]:
        """Counts per option and the bool mask of the first option of each distinct count."""
        limit = min(capacity, remaining)
        counts = [round(f * limit) for f in self.fractions]
        seen: set[int] = set()
        feasible = []
        for c in counts:
            feasible.append(c not in seen)
            seen.add(c)
        return counts, torch.tensor(feasible)

    def sample(self, capacities: list[int], ssim: list[float], generator: torch.Generator,
               budget: int | None = None, budget_options: list[int] | None = None, uniform: bool = False,
               costs: list[int] | None = None) -> Episode:
        """Sample an allocation over layers with ``capacities`` (and SSIM scores), visited in the given order.

        Either ``budget`` is fixed or the budget head picks one of ``budget_options`` first. ``uniform``:
        every feasible option of each step equally likely (random search over the same action space); the
        policy's logits are still computed, so the generator advances exactly as in a policy draw.
        ``costs``: what one entry of each layer spends of the budget, each >= 1 (e.g. MACs per channel; default 1,
        the budget then counts entries): a layer's options are fractions of ``min(capacity, remaining //
        cost)`` and the remaining budget shrinks by count x cost.
        """
        state = (torch.zeros(1, self.hidden_size), torch.zeros(1, self.hidden_size))
        prev = torch.zeros(1, self.width)
        log_probs, entropies, actions = [], [], []
        if budget is None:
            if self.budget_head is None or not budget_options:
                raise ValueError("give a budget, or build the policy with a budget head and pass budget_options")
            state = self._step(prev, [0.0, 0.0, 1.0, 0.0], state)
            prev = self.budget_head(state[0])
            choice = self._choose(prev, torch.ones(prev.shape[1], dtype=torch.bool), generator, log_probs, entropies,
                                  uniform)
            actions.append(choice)
            budget = budget_options[choice]
        total_cap, remaining, counts = max(sum(capacities), 1), budget, []
        for i, (cap, score) in enumerate(zip(capacities, ssim, strict=True)):
            cost = costs[i] if costs is not None else 1
            context = [(i + 1) / (len(capacities) + 1), cap / total_cap, remaining / max(budget, 1), score]
            state = self._step(prev, context, state)
            prev = self.alloc_head(state[0])
            affordable = remaining // cost
            options, feasible = self.options(cap, affordable)
            choice = self._choose(prev, feasible, generator, log_probs, entropies, uniform)
            actions.append(choice)
            counts.append(min(options[choice], cap, affordable))
            remaining -= counts[-1] * cost
        return Episode(counts, budget, actions, torch.stack(log_probs).sum(), torch.stack(entropies).mean())

    @staticmethod
    def _choose(logits: torch.Tensor, feasible: torch.Tensor, generator: torch.Generator,
                log_probs: list, entropies: list, uniform: bool = False) -> int:
        masked = (torch.zeros_like(logits[0]) if uniform else logits[0]).masked_fill(~feasible, -1e9)
        dist = torch.distributions.Categorical(logits=masked)
        choice = int(torch.multinomial(dist.probs.detach(), 1, generator=generator))
        log_probs.append(dist.log_prob(torch.tensor(choice)))
        entropies.append(dist.entropy())
        return choice


@dataclass
class Reinforce:
    """One REINFORCE update per episode for an ``AllocationPolicy``."""

    policy: AllocationPolicy
    config: SearchSettings = field(default_factory=SearchSettings)
    baseline: float | None = None
    rewards: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.config.learning_rate)

    def beta(self, episode: int) -> float:
        """Entropy coefficient at ``episode`` (0-based): linear decay, then constant."""
        cfg = self.config
        span = cfg.decay_fraction * cfg.episodes
        if episode >= span:
            return cfg.end_beta
        return cfg.start_beta - (cfg.start_beta - cfg.end_beta) * episode / span

    def _tau(self) -> float:
        if self.config.temperature is not None:
            return self.config.temperature
        recent = self.rewards[-self.config.reward_window_size:]
        return statistics.pstdev(recent) if len(recent) >= 2 and statistics.pstdev(recent) > 0 else 1.0

    def update(self, episode: Episode, reward: float, index: int) -> dict[str, float]:
        """Policy-gradient step for ``episode`` with ``reward``; returns advantage, beta, loss, baseline. The loss
        ``-A·Σ_t log π_t - β·mean_t H_t`` sums log-probabilities but averages entropies over the T steps, so
        the entropy weight per step is β/T: it changes with the number of searched units (module doc)."""
        baseline = reward if self.baseline is None else self.baseline
        advantage = max(-self.config.clip, min(self.config.clip, (reward - baseline) / self._tau()))
        self.baseline = self.config.ema * baseline + (1 - self.config.ema) * reward
        self.rewards.append(reward)
        beta = self.beta(index)
        loss = -advantage * episode.log_prob - beta * episode.entropy
        self._step(loss)
        return {"advantage": advantage, "beta": beta, "loss": float(loss.detach()), "baseline": self.baseline}

    def update_batch(self, episodes: list[Episode], rewards: list[float], index: int) -> dict[str, float]:
        """One policy step for a batch of episodes sampled from the same policy (``index``: 0-based number of
        the batch's first episode, for the entropy schedule). One episode: ``update`` (EMA baseline). More:
        the batch's mean reward is the baseline, advantages ``clip((r_i - mean)/τ, ±c)``, loss
        ``-mean_i(A_i · log π_i) - β · mean_i(H_i)`` (each ``log π_i`` a sum and each ``H_i`` a mean over the
        episode's T steps: entropy weight β/T per step, see the module doc); the EMA baseline follows the batch
        means."""
        if len(episodes) == 1:
            return self.update(episodes[0], rewards[0], index)
        cfg, mean = self.config, statistics.fmean(rewards)
        tau = self._tau() if cfg.temperature is not None or len(self.rewards) >= 2 else (
            statistics.pstdev(rewards) or 1.0)  # no history yet: the batch's own spread
        advantages = [max(-cfg.clip, min(cfg.clip, (r - mean) / tau)) for r in rewards]
        self.baseline = mean if self.baseline is None else cfg.ema * self.baseline + (1 - cfg.ema) * mean
        self.rewards.extend(rewards)
        beta = self.beta(index)
        log_probs = torch.stack([ep.log_prob for ep in episodes])
        entropy = torch.stack([ep.entropy for ep in episodes]).mean()
        loss = -(torch.tensor(advantages) * log_probs).mean() - beta * entropy
        self._step(loss)
        return {"advantage": statistics.fmean(advantages), "beta": beta, "loss": float(loss.detach()),
                "baseline": mean}

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
        self.optimizer.step()

    def state_dict(self) -> dict:
        """Everything needed to continue the search exactly."""
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline, "rewards": list(self.rewards)}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline, self.rewards = state["baseline"], list(state["rewards"])
