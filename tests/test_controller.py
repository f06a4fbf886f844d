"""The allocation policy and its REINFORCE trainer."""
from __future__ import annotations

import pytest
import torch

from utils.runtime.settings import SearchSettings
from utils.search.controller import AllocationPolicy, Reinforce


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_allocations_respect_capacity_and_budget():
    torch.manual_seed(0)
    policy = AllocationPolicy(action_space_size=11)
    gen, rng = _gen(), _gen(1)
    for _ in range(200):
        caps = torch.randint(0, 500, (6,), generator=rng).tolist()
        budget = int(torch.randint(1, 1500, (1,), generator=rng))
        ep = policy.sample(caps, [0.1] * 6, gen, budget=budget)
        assert all(0 <= n <= c for n, c in zip(ep.counts, caps, strict=True))
        assert sum(ep.counts) <= budget and ep.budget == budget


def test_options_skip_and_duplicate_masking():
    policy = AllocationPolicy(action_space_size=10)
    counts, feasible = policy.options(capacity=3, remaining=100)
    assert counts[0] == 0 and counts[-1] == 3  # j = 0 skips, j = A takes everything allowed
    kept = [c for c, f in zip(counts, feasible.tolist(), strict=True) if f]
    assert kept == sorted(set(counts))  # each distinct count once, first index kept
    no_skip = AllocationPolicy(action_space_size=10, skip=False)
    assert no_skip.options(100, 100)[0] == [10 * j for j in range(1, 11)]


def test_masked_options_are_never_sampled():
    torch.manual_seed(0)
    policy = AllocationPolicy(action_space_size=11)
    gen = _gen()
    for _ in range(100):
        ep = policy.sample([2], [0.0], gen, budget=50)
        _, feasible = policy.options(2, 50)
        assert feasible[ep.actions[0]]


def test_sampling_is_seeded():
    torch.manual_seed(0)
    policy = AllocationPolicy()
    a = [policy.sample([100, 50, 20], [0.1, 0.2, 0.3], _gen(7), budget=120).counts for _ in range(1)]
    b = [policy.sample([100, 50, 20], [0.1, 0.2, 0.3], _gen(7), budget=120).counts for _ in range(1)]
    assert a == b


def test_budget_head_picks_from_options():
    torch.manual_seed(0)
    policy = AllocationPolicy(budget_space_size=5)
    options = [10, 20, 30, 40, 50]
    ep = policy.sample([100, 100], [0.0, 0.0], _gen(), budget_options=options)
    assert ep.budget in options and ep.actions[0] < 5 and sum(ep.counts) <= ep.budget
    with pytest.raises(ValueError):
        AllocationPolicy().sample([1], [0.0], _gen())


def _probability_of_full_first_layer(policy: AllocationPolicy) -> float:
    with torch.no_grad():
        hits = sum(policy.sample([100, 100], [0.0, 0.5], _gen(s), budget=100).counts[0] == 100 for s in range(200))
    return hits / 200


def test_rewarded_action_becomes_more_likely():
    """Toy problem: the reward is the share of the budget given to the first layer."""
    torch.manual_seed(0)
    policy = AllocationPolicy(action_space_size=4)
    trainer = Reinforce(policy, SearchSettings(episodes=60, learning_rate=0.02, temperature=0.1, clip=10,
                                                start_beta=0.01, end_beta=0.0))
    before = _probability_of_full_first_layer(policy)
    gen = _gen(3)
    for i in range(60):
        ep = policy.sample([100, 100], [0.0, 0.5], gen, budget=100)
        trainer.update(ep, ep.counts[0] / 100, i)
    after = _probability_of_full_first_layer(policy)
    # each estimate has a sampling error of about 0.035 (200 draws); a rise of 0.2 is far beyond noise
    assert after > before + 0.2, (before, after)


def test_baseline_advantage_and_entropy_schedule():
    policy = AllocationPolicy()
    trainer = Reinforce(policy, SearchSettings(episodes=100, temperature=0.005, clip=100))
    ep = policy.sample([10], [0.0], _gen(), budget=10)
    first = trainer.update(ep, 0.2, 0)
    assert first["advantage"] == 0.0 and trainer.baseline == pytest.approx(0.2)  # b starts at the first reward
    ep = policy.sample([10], [0.0], _gen(), budget=10)
    second = trainer.update(ep, 0.21, 1)
    assert second["advantage"] == pytest.approx(2.0) and trainer.baseline == pytest.approx(0.9 * 0.2 + 0.1 * 0.21)
    assert trainer.beta(0) == pytest.approx(0.4) and trainer.beta(20) == pytest.approx(0.22)
    assert trainer.beta(40) == pytest.approx(0.04) and trainer.beta(99) == pytest.approx(0.04)
    assert trainer.update(policy.sample([10], [0.0], _gen(), budget=10), 9.0, 2)["advantage"] == 100.0  # clipped


def test_rolling_std_temperature_and_state_round_trip():
    policy = AllocationPolicy()
    trainer = Reinforce(policy, SearchSettings(temperature=None, clip=10))
    for i, r in enumerate([0.1, 0.3, 0.2]):
        trainer.update(policy.sample([5], [0.0], _gen(i), budget=5), r, i)
    state = trainer.state_dict()
    clone = Reinforce(AllocationPolicy(), SearchSettings(temperature=None, clip=10))
    clone.load_state_dict(state)
    assert clone.baseline == trainer.baseline and clone.rewards == trainer.rewards
    ep_a = trainer.policy.sample([5, 5], [0.0, 0.1], _gen(9), budget=7)
    ep_b = clone.policy.sample([5, 5], [0.0, 0.1], _gen(9), budget=7)
    assert ep_a.counts == ep_b.counts
    assert trainer.update(ep_a, 0.5, 3) == pytest.approx(clone.update(ep_b, 0.5, 3))
