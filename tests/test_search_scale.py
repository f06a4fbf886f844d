"""The search earns its cost: paired episodes, batched REINFORCE, random search, episode-parallel and
data-parallel runs under torchrun (gloo, 2 CPU processes), within-unit selectors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate as evaluate_script
import finetune as finetune_script
import pretrain
import regrowth_greedy
import regrowth_oneshot
from tests.conftest import run_main, tree
from utils.core.distributed import gpu_placement
from utils.core.errors import UsageError
from utils.core.files import read_csv
from utils.core.paths import pretrained_path
from utils.prune.pruners import get_pruner
from utils.runtime.checkpoint import content_fingerprint, read_checkpoint, save_checkpoint
from utils.runtime.settings import SearchSettings
from utils.runtime.stage import Stage
from utils.search.controller import AllocationPolicy, Reinforce
from utils.search.episodes import Search
from utils.sparsity.masks import add_reparam, get_masks

ROOT = Path(__file__).resolve().parents[1]
DATA = ["--dataset", "synthetic", "--train_subset", "256", "--eval_subset", "500", "--batch_size", "64",
        "--eval_batch_size", "500", "--device", "cpu", "--no_progress"]
SEARCH = DATA + ["--ssim_num_batches", "1", "--saliency_batches", "2", "--finetune_epochs", "1",
                 "--ssim_threshold", "0.99"]


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> tuple[Path, Path]:
    """(save_dir, checkpoint) of a briefly trained resnet20 pruned to 90% and finetuned, so that its predictions
    are not degenerate on any CPU (checked): pruned straight to 90%, the 3-epoch model can fall to one class (17%
    val on one CPU), and a model at chance gives every allocation the same reward."""
    save = tmp_path_factory.mktemp("runs")
    assert pretrain.main(DATA[:3] + ["2000"] + DATA[4:] + ["--m_name", "resnet20", "--epochs", "3",
                                                           "--save_dir", str(save)]) == 0
    dense = read_checkpoint(save / "resnet20" / "checkpoint" / "ckpt.pth")
    from models import create_model

    model = create_model("resnet20")
    model.load_state_dict(dense.state_dict)
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.9)
    pruned = save / "pruned_0.9000.pth"
    save_checkpoint(pruned, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    tuned = save / "tuned_0.9000.pth"
    assert finetune_script.main(DATA[:3] + ["2000"] + DATA[4:] + ["--ckpt", str(pruned), "--save_path", str(tuned),
                                                                  "--epochs", "2", "--lr", "3e-3"]) == 0
    model.load_state_dict(read_checkpoint(tuned).state_dict)
    predicted = _predicted_classes(model)
    if len(predicted) < 3:  # not expected after the finetune, but a tiny model's training is the CPU's business
        pytest.skip(f"premise: the sparse start predicts only classes {sorted(predicted)} on this CPU (degenerate)")
    sparse = save / "resnet20" / "oneshot" / "resnet20_0.9000.pth"
    save_checkpoint(sparse, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    return save, sparse


def _predicted_classes(model) -> set[int]:
    """The classes ``model`` predicts on the synthetic val images of ``DATA``."""
    from data import DataSettings, get_data

    loader = get_data("synthetic", DataSettings(eval_subset=500), device=torch.device("cpu")).val
    model.eval()
    with torch.no_grad():
        return {int(c) for images, _ in loader for c in model(images).argmax(1).unique()}


def _search_args(start, label: str, *extra: str) -> list[str]:
    save, sparse = start
    return SEARCH + ["--save_dir", str(save), "--initial_ckpt", str(sparse), "--label", label, *extra]


def _out(start, label: str, kind: str = "regrowth_oneshot") -> Path:
    return start[0] / "resnet20" / kind / label


def _subprocess(args: list[str], procs: int = 1) -> subprocess.CompletedProcess:
    """Run a script alone (1) or under torchrun (N gloo processes), one thread each, in the repository."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
                if procs > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(launcher + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


# ---- paired episodes ----------------------------------------------------------------------------------

def _episode_draws(monkeypatch) -> list[tuple[bytes, bytes]]:
    """Record, for every episode a search evaluates, the states of its (init draws, data order) generators."""
    draws = []
    real = Search._seed_episode

    def recorded(self, index):
        init_rng, data_rng = real(self, index)
        draws.append((bytes(init_rng.get_state().numpy()), bytes(data_rng.get_state().numpy())))
        return init_rng, data_rng

    monkeypatch.setattr(Search, "_seed_episode", recorded)
    return draws


def test_paired_episodes_give_one_allocation_one_reward(start, monkeypatch):
    # one option per layer (A = 1, no skip): every episode regrows the same allocation
    same = ["--num_epochs", "3", "--action_space_size", "1", "--no_skip"]
    draws = _episode_draws(monkeypatch)
    assert regrowth_oneshot.main(_search_args(start, "paired", *same)) == 0
    rows = read_csv(_out(start, "paired") / "episodes.csv")
    assert len({r["allocation"] for r in rows}) == 1
    assert len({r["reward"] for r in rows}) == 1 and len({r["val_acc"] for r in rows}) == 1
    assert len(draws) == 3 and len(set(draws)) == 1  # the same init draws and data order in every episode
    draws.clear()
    assert regrowth_oneshot.main(_search_args(start, "unpaired", *same, "--unpaired_episodes")) == 0
    unpaired = read_csv(_out(start, "unpaired") / "episodes.csv")
    assert [r["allocation"] for r in unpaired] == [r["allocation"] for r in rows]
    # its own init draws and data order per episode, shown by the generators themselves (whether the accuracies
    # differ too depends on how far a tiny model learns on a given CPU's kernels)
    assert len(draws) == 3 and len({d[0] for d in draws}) == 3 and len({d[1] for d in draws}) == 3


# ---- cheap episodes: --episode_steps, --episode_val_subset -------------------------------------------------

def test_step_budgeted_episodes_take_exactly_s_steps_and_stay_paired(start, monkeypatch):
    steps = []
    real_step = torch.optim.AdamW.step

    def counted(self, *args, **kwargs):
        steps.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)  # the mini-finetunes' optimizer (the policy's is Adam)
    same = ["--num_epochs", "3", "--action_space_size", "1", "--no_skip", "--episode_steps", "3",
            "--episode_val_subset", "60"]
    assert regrowth_oneshot.main(_search_args(start, "steps", *same)) == 0
    assert len(steps) == 3 * 3  # 3 episodes of exactly 3 optimizer steps (fewer than one pass over the data)
    rows = read_csv(_out(start, "steps") / "episodes.csv")
    assert len({r["allocation"] for r in rows}) == 1 and len({r["reward"] for r in rows}) == 1  # still paired
    # the rewards are val accuracies on 60 images: multiples of 1/60, and the start is measured on the same ones
    assert all(abs(float(r["val_acc"]) * 60 / 100 - round(float(r["val_acc"]) * 60 / 100)) < 1e-6 for r in rows)
    summary = json.loads((_out(start, "steps") / "summary.json").read_text())
    assert abs(summary["start_val_acc"] * 60 / 100 - round(summary["start_val_acc"] * 60 / 100)) < 1e-6


def _killed_at(start, monkeypatch, label: str, args: list[str], episode: int) -> None:
    """Run the search ``label`` until it is interrupted (Ctrl-C) while evaluating ``episode`` (0-based)."""
    real = Search.evaluate

    def killed(self, index, ep):
        if index == episode:
            raise KeyboardInterrupt
        return real(self, index, ep)

    monkeypatch.setattr(Search, "evaluate", killed)
    assert regrowth_oneshot.main(_search_args(start, label, *args)) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(Search, "evaluate", real)


def test_step_budgeted_search_resumes_exactly(start, monkeypatch, capsys):
    cheap = ["--num_epochs", "3", "--episode_steps", "4", "--episode_val_subset", "100"]
    assert regrowth_oneshot.main(_search_args(start, "cheap", *cheap)) == 0
    rows = read_csv(_out(start, "cheap") / "episodes.csv")
    _killed_at(start, monkeypatch, "cheap_cut", cheap, 2)
    assert regrowth_oneshot.main(_search_args(start, "cheap_cut", *cheap, "--resume")) == 0
    assert read_csv(_out(start, "cheap_cut") / "episodes.csv") == rows
    # a changed fidelity is another search: resuming it is refused
    code, _, err = run_main(regrowth_oneshot.main, _search_args(
        start, "cheap_cut", "--num_epochs", "4", "--episode_steps", "5", "--episode_val_subset", "100", "--resume"),
        capsys)
    assert code == 2 and "--episode_steps is 5 but the run being resumed used 4" in err


def test_search_space_of_each_unit_set():
    from utils.search.episodes import search_space

    ssim = {"a": 0.1, "b": 0.5, "c": 0.9, "d": float("nan")}
    caps = {"a": 5, "b": 0, "c": 7, "d": 3}  # b has nothing pruned
    assert search_space(ssim, caps, 0.6).layers == ["a"]
    assert search_space(ssim, caps, 0.6, "all").layers == ["a", "c"]  # every open unit with a numeric SSIM
    assert search_space(ssim, {"a": 5, "c": 7}, 0.6, "all").layers == ["a", "c"]  # a unit without capacity: none
    with pytest.raises(UsageError, match="--units most"):
        search_space(ssim, caps, 0.6, "most")


def test_loader_steps_and_first():
    from data.loader import DeviceLoader
    images, labels = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8), torch.arange(10)
    loader = DeviceLoader(images, labels, batch_size=4, shuffle=True, mean=(0.5,) * 3, std=(0.5,) * 3,
                          device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert len(loader) == 3 and [len(y) for _, y in loader] == [4, 4, 2]  # one pass, unchanged
    long = loader.steps(5)
    seen = [y for _, y in long]
    assert len(long) == 5 and len(seen) == 5  # past one pass: a second, reshuffled pass
    assert sorted(torch.cat(seen[:3]).tolist()) == list(range(10))
    assert [len(y) for _, y in loader.steps(2)] == [4, 4]  # fewer than one pass
    first = loader.first(7)
    assert first.num_samples == 7 and torch.equal(first.labels, labels[:7]) and loader.num_samples == 10


# ---- batched REINFORCE --------------------------------------------------------------------------------

def _trainer(seed: int = 0, **config) -> Reinforce:
    torch.manual_seed(seed)
    return Reinforce(AllocationPolicy(4, 16), SearchSettings(episodes=10, temperature=0.01, **config))


def test_batch_of_one_is_the_single_episode_update():
    a, b = _trainer(), _trainer()
    for step in range(3):
        ea = a.policy.sample([50, 80, 30], [0.1, 0.5, 0.9], torch.Generator().manual_seed(step), budget=60)
        eb = b.policy.sample([50, 80, 30], [0.1, 0.5, 0.9], torch.Generator().manual_seed(step), budget=60)
        assert ea.counts == eb.counts
        out_a = a.update(ea, 0.1 * step, step)
        out_b = b.update_batch([eb], [0.1 * step], step)
        assert out_a == out_b
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_batch_update_moves_towards_the_better_episode():
    trainer = _trainer(learning_rate=0.01, start_beta=0.0, end_beta=0.0)  # no entropy pull
    gen = torch.Generator().manual_seed(3)
    batch = [trainer.policy.sample([40, 40], [0.2, 0.4], gen, budget=40) for _ in range(6)]
    while len({tuple(e.counts) for e in batch}) < 2:  # need two different allocations
        batch.append(trainer.policy.sample([40, 40], [0.2, 0.4], gen, budget=40))
    good = batch[0].counts
    rewards = [1.0 if e.counts == good else 0.0 for e in batch]
    before = [float(e.log_prob.detach()) for e in batch]
    out = trainer.update_batch(batch, rewards, 0)
    assert out["baseline"] == pytest.approx(sum(rewards) / len(rewards))
    # re-score the same actions under the updated policy: the rewarded allocation became more likely
    after = _log_prob(trainer.policy, batch[0], [40, 40], [0.2, 0.4], 40)
    assert after > before[0]


def _log_prob(policy: AllocationPolicy, episode, capacities, ssim, budget) -> float:
    """log π of ``episode``'s actions under ``policy`` (the sampling steps replayed without drawing)."""
    total, remaining, state = 0.0, budget, (torch.zeros(1, policy.hidden_size), torch.zeros(1, policy.hidden_size))
    prev = torch.zeros(1, policy.width)
    with torch.no_grad():
        for i, (cap, score, action) in enumerate(zip(capacities, ssim, episode.actions, strict=True)):
            context = [(i + 1) / (len(capacities) + 1), cap / sum(capacities), remaining / budget, score]
            state = policy._step(prev, context, state)
            prev = policy.alloc_head(state[0])
            options, feasible = policy.options(cap, remaining)
            logits = prev[0].masked_fill(~feasible, -1e9)
            total += float(torch.log_softmax(logits, 0)[action])
            remaining -= min(options[action], cap, remaining)
    return total


def test_batched_search_resume_equals_uninterrupted(start, monkeypatch):
    batched = ["--num_epochs", "4", "--episodes_per_update", "2"]
    assert regrowth_oneshot.main(_search_args(start, "batched", *batched)) == 0
    rows = read_csv(_out(start, "batched") / "episodes.csv")
    assert [r["update"] for r in rows] == ["1", "1", "2", "2"]
    assert len({r["beta"] for r in rows[:2]}) == 1
    _killed_at(start, monkeypatch, "batched_cut", batched, 3)  # in the second batch
    assert len(read_csv(_out(start, "batched_cut") / "episodes.csv")) == 2  # the finished batch only
    assert regrowth_oneshot.main(_search_args(start, "batched_cut", *batched, "--resume")) == 0
    assert read_csv(_out(start, "batched_cut") / "episodes.csv") == rows
    a, b = (torch.load(_out(start, d) / "search_state.pt", weights_only=True)["trainer"]["policy"]
            for d in ("batched", "batched_cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_batch_size_is_refused(start, capsys):
    assert regrowth_oneshot.main(_search_args(start, "m", "--num_epochs", "1")) == 0
    code, _, err = run_main(regrowth_oneshot.main, _search_args(start, "m", "--num_epochs", "2", "--resume",
                                                                "--episodes_per_update", "2"), capsys)
    assert code == 2 and "--episodes_per_update" in err and err.count("error:") == 1


# ---- random search ------------------------------------------------------------------------------------

def test_random_search_draws_from_the_action_space_and_never_learns(start):
    assert regrowth_oneshot.main(_search_args(start, "rs", "--num_epochs", "3", "--random_search")) == 0
    out = _out(start, "rs", "random_regrowth_oneshot")
    rows = read_csv(out / "episodes.csv")
    assert len(rows) == 3 and len({r["allocation"] for r in rows}) == 3
    policy = torch.load(out / "search_state.pt", weights_only=True)["trainer"]["policy"]
    torch.manual_seed(42)  # the seed make_trainer gives the policy's initial weights
    fresh = AllocationPolicy(11, 64).state_dict()
    assert all(torch.equal(policy[k], fresh[k]) for k in fresh)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["reward"] == pytest.approx(max(float(r["reward"]) for r in rows))


# ---- torchrun: episode-parallel search and data-parallel training ------------------------------------------

@pytest.mark.slow
def test_two_and_four_process_searches_equal_one_process(start):
    # all 1,000 val images: on the first 500 the four mini-finetuned models can tie (the last flag wins); four
    # processes with --share_gpus: what several episode processes per GPU run (on a CPU, the same one device)
    args = ["regrowth_oneshot.py", *SEARCH, "--save_dir", str(start[0]), "--initial_ckpt", str(start[1]),
            "--num_epochs", "4", "--episodes_per_update", "4", "--eval_subset", "1000"]
    one = _subprocess(args + ["--label", "procs1"])
    two = _subprocess(args + ["--label", "procs2"], procs=2)
    four = _subprocess(args + ["--label", "procs4", "--share_gpus"], procs=4)
    for done in (one, two, four):
        assert done.returncode == 0, done.stderr[-2000:]
    a = _out(start, "procs1")
    for b, log in ((_out(start, "procs2"), two.stderr), (_out(start, "procs4"), four.stderr)):
        assert read_csv(a / "episodes.csv") == read_csv(b / "episodes.csv")
        pa, pb = (torch.load(d / "search_state.pt", weights_only=True)["trainer"]["policy"] for d in (a, b))
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
        assert tree(a) == tree(b)  # the other ranks wrote nothing of their own
        assert len(re.findall(r"^\S+ episode 1: ", log, re.M)) == 1  # and logged nothing but warnings
        ma, mb = (read_checkpoint(d / "best_grown_model.pth").state_dict for d in (a, b))
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
    rows = read_csv(a / "episodes.csv")
    assert len({r["allocation"] for r in rows}) > 1  # the processes evaluated different allocations
    if len({r["reward"] for r in rows}) == 1:  # equal rewards would hide rewards gathered in the wrong order
        pytest.skip(f"premise: every allocation got the same reward ({rows[0]['reward']}) from this start")


@pytest.mark.parametrize("local_rank, per_node, gpus, share, placed", [
    (1, 2, 2, False, (1, "nccl")),  # one process per GPU: NCCL
    (1, 2, 2, True, (1, "nccl")),  # --share_gpus changes nothing when every process has its own GPU
    (5, 8, 2, True, (1, "gloo")),  # 8 processes on 2 GPUs: rank r on GPU r mod 2, gloo
    (2, 4, 1, True, (0, "gloo")),
])
def test_gpu_placement_shares_gpus_only_when_asked(local_rank, per_node, gpus, share, placed):
    assert gpu_placement(local_rank, per_node, gpus, share) == placed


def test_more_processes_than_gpus_needs_share_gpus():
    with pytest.raises(UsageError, match="--share_gpus"):
        gpu_placement(0, 4, 1, False)
    with pytest.raises(UsageError, match="no GPU"):
        gpu_placement(0, 2, 0, True)


@pytest.mark.slow
def test_two_process_pretrain_is_data_parallel(tmp_path, capsys):
    args = ["pretrain.py", *DATA, "--m_name", "resnet20", "--epochs", "2", "--save_dir", str(tmp_path)]
    done = _subprocess(args, procs=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "x 2 processes (data-parallel)" in done.stderr
    rows = read_csv(tmp_path / "resnet20" / "checkpoint" / "pretrain_log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0 < float(r["train_loss"]) < 10 for r in rows)
    code, out, _ = run_main(evaluate_script.main, ["--ckpt", str(tmp_path / "resnet20" / "checkpoint" / "ckpt.pth"),
                                                   *DATA, "--json"], capsys)
    assert code == 0 and json.loads(out)["val_acc"] >= 0
    resumed = _subprocess(args[:-4] + ["--epochs", "3", "--save_dir", str(tmp_path), "--resume"])
    assert resumed.returncode == 2 and "--nproc_per_node" in resumed.stderr


def _baseline_folder(start, folder: Path) -> Path:
    """Plain-pruning checkpoints at 80% and 90% of the start's dense model: an iterative search's zero point."""
    from models import create_model

    dense = read_checkpoint(start[0] / "resnet20" / "checkpoint" / "ckpt.pth")
    for amount in (0.8, 0.9):
        model = create_model("resnet20")
        model.load_state_dict(dense.state_dict)
        add_reparam(model)
        get_pruner("lamp").prune(model, amount)
        save_checkpoint(folder / f"resnet20_{amount:.4f}.pth", model, model_name="resnet20", dataset="synthetic",
                        num_classes=10, meta={})
    return folder


@pytest.mark.slow
def test_two_process_iterative_search_equals_one_process(start, tmp_path):
    save, sparse = start
    baseline = _baseline_folder(start, tmp_path / "baseline")
    args = ["regrowth_iterative.py", *SEARCH, "--initial_ckpt", str(sparse), "--pretrained",
            str(save / "resnet20" / "checkpoint" / "ckpt.pth"), "--baseline_dir", str(baseline), "--target_sparsity",
            "0.8", "--num_iters", "2", "--num_epochs", "2", "--episodes_per_update", "2", "--budget_space_size", "2",
            "--min_budget_frac", "0.01", "--max_budget_frac", "0.02"]
    one = _subprocess(args + ["--save_dir", str(tmp_path / "one")])
    two = _subprocess(args + ["--save_dir", str(tmp_path / "two")], procs=2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (tmp_path / run / "resnet20" / "regrowth_iterative" for run in ("one", "two"))
    assert tree(a) == tree(b) and (a / "iter_1" / "episodes.csv").is_file()  # two iterations, the same files
    for it in ("iter_0", "iter_1"):
        assert read_csv(a / it / "episodes.csv") == read_csv(b / it / "episodes.csv")
        pa, pb = (torch.load(d / it / "search_state.pt", weights_only=True)["trainer"]["policy"] for d in (a, b))
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    final = [json.loads((d / "summary.json").read_text()) for d in (a, b)]
    assert final[0]["final_sparsity"] == final[1]["final_sparsity"] < 0.9
    assert final[0]["final_val_acc"] == final[1]["final_val_acc"]


@pytest.mark.slow
def test_two_process_finetune_is_data_parallel_and_keeps_the_masks(start, tmp_path, capsys):
    _, sparse = start
    out = tmp_path / "tuned.pth"
    done = _subprocess(["finetune.py", *DATA, "--ckpt", str(sparse), "--save_path", str(out), "--epochs", "2"],
                       procs=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(2 processes, data-parallel)" in done.stderr
    assert [r["epoch"] for r in read_csv(tmp_path / "tuned_log.csv")] == ["1", "2"]
    before, after = read_checkpoint(sparse).state_dict, read_checkpoint(out).state_dict
    masks = [k for k in before if k.endswith("_mask")]
    assert masks and all(torch.equal(before[k], after[k]) for k in masks)  # pruned weights stayed pruned
    code, report, _ = run_main(evaluate_script.main, ["--ckpt", str(out), *DATA, "--json"], capsys)
    assert code == 0 and json.loads(report)["sparsity"] == pytest.approx(0.9, abs=1e-3)


# ---- within-unit selection ----------------------------------------------------------------------------

def _stage_for(start) -> tuple[Stage, object]:
    from utils.cli.prepare import prepare_dense_sparse

    args = regrowth_oneshot.parse_args(_search_args(start, "sel"))
    return prepare_dense_sparse(args, args.initial_ckpt, reparam=True)


def test_reference_selection_prefers_what_the_reference_keeps(start, tmp_path):
    from utils.runtime.settings import ScoringSettings
    from utils.scoring.selection import SELECTORS

    stage, pair = _stage_for(start)
    model = stage.build_model()
    dense = read_checkpoint(start[0] / "resnet20" / "checkpoint" / "ckpt.pth")
    model.load_state_dict(dense.state_dict)
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.7)
    scores = SELECTORS.get("reference")(stage, pair, model, ScoringSettings())
    ref_keep, own = get_masks(model), get_masks(pair.sparse)
    for layer, score in scores.items():
        candidates = ~own[layer]
        if (candidates & ref_keep[layer]).any() and (candidates & ~ref_keep[layer]).any():
            assert score[candidates & ref_keep[layer]].min() > score[candidates & ~ref_keep[layer]].max()
    magnitude = SELECTORS.get("magnitude")(stage, pair, None, ScoringSettings())
    assert torch.equal(magnitude["layer1.0.conv1"], pair.sparse.layer1[0].conv1.weight_orig.detach().abs())
    r1, r2 = (SELECTORS.get("random")(stage, pair, None, ScoringSettings()) for _ in range(2))
    assert all(torch.equal(r1[k], r2[k]) for k in r1)  # seeded by the run seed


def test_greedy_with_reference_selection_copies_the_reference(start, tmp_path):
    save, sparse = start
    dense = read_checkpoint(save / "resnet20" / "checkpoint" / "ckpt.pth")
    from models import create_model

    model = create_model("resnet20")
    model.load_state_dict(dense.state_dict)
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.7)
    ref_path = tmp_path / "reference.pth"
    save_checkpoint(ref_path, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    args = DATA + ["--save_dir", str(tmp_path / "runs"), "--pretrained", str(save / "resnet20/checkpoint/ckpt.pth"),
                   "--initial_ckpt", str(sparse), "--greedy_mode", "prop", "--finetune_epochs", "1",
                   "--ssim_num_batches", "1", "--selection", "reference", "--reference_ckpt", str(ref_path)]
    assert regrowth_greedy.main(args) == 0
    grown = read_checkpoint(tmp_path / "runs" / "resnet20" / "greedy_prop" / "iter_0" / "best_grown_model.pth")
    assert grown.meta["args"]["init_strategy"] == "dense" and grown.meta["regrown"] > 0


@pytest.mark.parametrize("extra,message", [
    (["--selection", "reference"], "needs --reference_ckpt"),
    (["--reference_ckpt", "x.pth"], "only read by --selection reference"),
    (["--selection", "reference", "--reference_ckpt", "SPARSE"], "not below the start"),
    (["--selection", "nearest"], "invalid choice"),
])
def test_bad_selection_inputs(start, capsys, extra, message):
    extra = [str(start[1]) if e == "SPARSE" else e for e in extra]
    before = tree(start[0])
    code, _, err = run_main(regrowth_oneshot.main, _search_args(start, "bad", "--num_epochs", "1", *extra), capsys)
    assert code == 2 and message in err and err.count("error:") == 1 and "Traceback" not in err
    assert tree(start[0]) == before


# ---- the accuracy experiments run end to end (tiny settings; the figures come from real runs) --------------

TINY = ["--dataset", "synthetic", "--train_subset", "256", "--eval_subset", "250", "--batch_size", "64", "--device",
        "cpu", "--pretrain_epochs", "1", "--prune_epochs", "1"]


def test_reward_noise_benchmark_reports_paired_and_unpaired_noise(tmp_path, monkeypatch):
    from benchmarks import bench_reward_noise, common

    monkeypatch.setattr(common, "ROOT", tmp_path)  # results beside the test, not in the checkout
    assert bench_reward_noise.main(TINY + ["--save_dir", str(tmp_path), "--allocations", "2", "--streams", "2",
                                           "--sparsity", "0.95"]) == 0
    result = json.loads((tmp_path / "benchmarks" / "results" / "reward_noise_synthetic.json").read_text())
    assert len(result["rewards"]) == 2 and all(len(row) == 2 for row in result["rewards"])
    assert result["within_allocation_std"] >= 0 and result["comparison_std_unpaired"] >= 0


def test_episode_cost_benchmark_times_both_fidelities(tmp_path, monkeypatch):
    from benchmarks import bench_episode_cost, common

    monkeypatch.setattr(common, "ROOT", tmp_path)
    result = bench_episode_cost.main(["--train_subset", "128", "--steps", "1", "--val_subset", "50", "--repeats", "1"])
    assert result["epoch_steps"] == 1 and result["val_subset"] == 50 and result["train_images"] == 128
    assert result["epoch_episode_s"] > 0 and result["cheap_episode_s"] > 0
    assert json.loads((tmp_path / "benchmarks" / "results" / "bench_episode_cost.json").read_text())["steps"] == 1


def test_reward_fidelity_benchmark_scores_every_reward_against_the_truth(tmp_path):
    from benchmarks import bench_reward_fidelity

    result = bench_reward_fidelity.main(TINY + ["--save_dir", str(tmp_path), "--sparsity", "0.95", "--allocations",
                                                "5", "--steps", "0", "2", "--val_subset", "100", "--bn_batches", "2",
                                                "--truth_epochs", "1", "--bootstrap", "20"])
    rows, table = result["rows"], {r["reward"]: r for r in result["table"]}
    assert [r["name"] for r in rows[:3]] == ["greedy prop", "greedy fill", "greedy uniform"] and len(rows) == 5
    assert {"saliency", "bn_recal", "val@0", "val@2", "loss@2", "val@epoch"} <= set(table)
    # every allocation spends the budget K (a policy draw topped up to it); val@0 (zero init, no step) is the
    # start's accuracy for every one of them
    assert len({sum(r["allocation"].values()) for r in rows}) == 1 and len({r["val@0"] for r in rows}) == 1
    assert table["val@0"]["tau"] is None and "loss@0" in result["dropped"]  # constant, NaN: said, not ranked
    folder = tmp_path / "fidelity_synthetic_resnet20" / "seed1"
    assert (folder / "fidelity.png").is_file() and (folder / "fidelity.csv").is_file()
    again = bench_reward_fidelity.main(TINY + ["--save_dir", str(tmp_path), "--sparsity", "0.95", "--allocations",
                                               "5", "--steps", "0", "2", "--val_subset", "100", "--bn_batches", "2",
                                               "--truth_epochs", "1", "--bootstrap", "20"])
    assert json.dumps(again["rows"], sort_keys=True) == json.dumps(rows, sort_keys=True)  # read back, not rerun


def test_experiment_settings_accept_older_folders_and_name_what_differs(tmp_path):
    from benchmarks.experiment import check_settings

    # written before --eval_subset existed, when the arm lists were still stored
    (tmp_path / "settings.json").write_text(json.dumps({"episodes": "8", "inits": "['zero']"}))
    check_settings(tmp_path, {"episodes": 8, "eval_subset": None, "inits": ["dense"]}, ignore=("inits",))
    assert json.loads((tmp_path / "settings.json").read_text()) == {"episodes": "8", "eval_subset": "None"}
    with pytest.raises(UsageError, match=r"episodes, eval_subset differ"):
        check_settings(tmp_path, {"episodes": 12, "eval_subset": 500})
    # a setting the folder was made with and this run leaves out (bench_matched drops flags at their old default)
    (tmp_path / "settings.json").write_text(json.dumps({"episodes": "8", "dense": "ref_seed{seed}.pth"}))
    with pytest.raises(UsageError, match=r"dense differ"):
        check_settings(tmp_path, {"episodes": 8})


def _counted(function, calls: list[str]):
    """``function``, appending its name to ``calls`` on every call."""
    def wrapper(*args, **kwargs):
        calls.append(function.__name__)
        return function(*args, **kwargs)
    return wrapper


@pytest.mark.slow
def test_matched_benchmark_compares_every_arm_with_straight_pruning(tmp_path, monkeypatch):
    from benchmarks import bench_matched, common

    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setattr(bench_matched, "ROOT", tmp_path)
    assert bench_matched.main(TINY + ["--save_dir", str(tmp_path), "--seeds", "1", "--start_sparsity", "0.96",
                                      "--final_sparsity", "0.95", "--regrow_epochs", "1", "--episodes", "2",
                                      "--inits", "zero", "dense", "--allocations", "rl", "greedy"]) == 0
    rows = read_csv(tmp_path / "benchmarks" / "results" / "matched_synthetic.csv")
    assert [r["arm"] for r in rows] == ["straight", "rl/zero", "rl/dense", "greedy/zero", "greedy/dense"]
    assert all(float(r["sparsity"]) == pytest.approx(0.95, abs=1e-3) for r in rows if r["allocation"] == "greedy")
    # asking for more arms runs only those: the no-regrowth control (the start finetuned as long) and the
    # positions the straight model keeps (an arm asked twice runs once); the finished arms and the straight row
    # are read, not made again
    kept = {r["arm"]: r for r in rows}
    made: list[str] = []
    for name in ("regrow_and_finetune", "straight_row"):
        monkeypatch.setattr(bench_matched, name, _counted(getattr(bench_matched, name), made))
    assert bench_matched.main(TINY + ["--save_dir", str(tmp_path), "--seeds", "1", "--start_sparsity", "0.96",
                                      "--final_sparsity", "0.95", "--regrow_epochs", "1", "--episodes", "2",
                                      "--inits", "zero", "--allocations", "greedy", "none", "greedy",
                                      "--selections", "saliency", "reference"]) == 0
    again = {r["arm"]: r for r in read_csv(tmp_path / "benchmarks" / "results" / "matched_synthetic.csv")}
    assert list(again) == ["straight", "greedy/zero", "greedy/zero/reference", "none"]
    assert [again["straight"], again["greedy/zero"]] == [kept["straight"], kept["greedy/zero"]]
    assert int(again["none"]["regrown"]) == 0 and float(again["none"]["sparsity"]) == pytest.approx(0.96, abs=1e-3)
    assert again["greedy/zero/reference"]["regrown"] == again["greedy/zero"]["regrown"]  # the same allocation
    reference = tmp_path / "matched_synthetic_resnet20/seed1/reference"  # pruned to 95% with --prune_epochs
    assert read_csv(next(reference.rglob("finetune_*.csv")))[-1]["epoch"] == "1"
    assert made == ["regrow_and_finetune"] * 2
    stored = json.loads((tmp_path / "matched_synthetic_resnet20/seed1/rows.json").read_text())
    assert sorted(r["arm"] for r in stored) == sorted([*kept, "none", "greedy/zero/reference"])
    # the swap arms: straight, regrown and gradual pruning with swap cycles, at the final sparsity
    swap_argv = ["--seeds", "1", "--start_sparsity", "0.96", "--final_sparsity", "0.95", "--regrow_epochs", "1",
                 "--episodes", "2", "--inits", "zero", "--allocations", "greedy", "--swap_every", "1",
                 "--swap_arms", *bench_matched.SWAP_ARMS, "--results", str(tmp_path / "kept")]
    assert bench_matched.main(TINY + ["--save_dir", str(tmp_path)] + swap_argv) == 0
    swapped = {r["arm"]: r for r in read_csv(tmp_path / "benchmarks" / "results" / "matched_synthetic.csv")}
    assert list(swapped) == ["straight", "greedy/zero", "straight+rigl1", "greedy/zero+rigl1", "gradual+rigl1"]
    assert swapped["greedy/zero"] == kept["greedy/zero"]
    assert all(float(swapped[a]["sparsity"]) == pytest.approx(0.95, abs=1e-3) for a in list(swapped)[2:])
    gradual = read_checkpoint(next((tmp_path / "matched_synthetic_resnet20/seed1/gradual_rigl1").rglob("*.pth")))
    assert gradual.meta["swap"]["swaps"] >= 1 and gradual.meta["gradual"]["done"] == 10
    # --results keeps the rows of each seed: without the run folders they give the same table, nothing trained
    made.clear()
    fresh = tmp_path / "fresh"
    assert bench_matched.main(TINY + ["--save_dir", str(fresh)] + swap_argv) == 0
    assert {r["arm"]: r for r in read_csv(tmp_path / "benchmarks" / "results" / "matched_synthetic.csv")} == swapped
    assert made == [] and not (fresh / "matched_synthetic_resnet20" / "seed1" / "resnet20").exists()
    assert len(list((tmp_path / "kept").glob("synthetic_resnet20_regrow1_*_seed1.json"))) == 1
    # --swap_every 0: the swap arms without swaps; straight and greedy/zero are the plain arms (kept, not made
    # again), gradual is the one new arm: gradual pruning with no swap
    no_swaps = swap_argv[:swap_argv.index("--swap_every")] + ["--swap_every", "0"] + swap_argv[
        swap_argv.index("--swap_every") + 2:]
    assert bench_matched.main(TINY + ["--save_dir", str(tmp_path)] + no_swaps) == 0
    plain = {r["arm"]: r for r in read_csv(tmp_path / "benchmarks" / "results" / "matched_synthetic.csv")}
    assert list(plain) == ["straight", "greedy/zero", "gradual"]
    assert [plain["straight"], plain["greedy/zero"]] == [swapped["straight"], swapped["greedy/zero"]]
    assert made == ["straight_row"] and float(plain["gradual"]["sparsity"]) == pytest.approx(0.95, abs=1e-3)
    gradual = read_checkpoint(next((tmp_path / "matched_synthetic_resnet20/seed1/gradual").rglob("*.pth")))
    assert gradual.meta["gradual"]["done"] == 10 and not gradual.meta.get("swap")
    assert len(list((tmp_path / "kept").glob("synthetic_resnet20_regrow1_*_seed1.json"))) == 1  # one digest
    kept_rows = json.loads(next((tmp_path / "kept").glob("synthetic_resnet20_regrow1_*_seed1.json")).read_text())
    assert {*swapped, "gradual"} <= {r["arm"] for r in kept_rows["rows"]}
    # each arm is kept as soon as it finished: an interrupted run loses only the arm it was in
    real = bench_matched.regrow_and_finetune

    def second_interrupted(*args, **kwargs):
        if made.count("second_interrupted") > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    made.clear()
    more = swap_argv[:swap_argv.index("--inits")] + ["--inits", "zero", "dense", "--allocations", "greedy_uniform"]
    monkeypatch.setattr(bench_matched, "regrow_and_finetune", _counted(second_interrupted, made))
    with pytest.raises(KeyboardInterrupt):
        bench_matched.main(TINY + ["--save_dir", str(tmp_path)] + more)
    assert made.count("second_interrupted") == 2  # greedy_uniform/zero finished, greedy_uniform/dense did not
    stored = {r["arm"] for r in json.loads((tmp_path / "matched_synthetic_resnet20/seed1/rows.json").read_text())}
    assert "greedy_uniform/zero" in stored and "greedy_uniform/dense" not in stored
    # the kept rows name their dense model's weights: rows of another dense model are never paired with them
    dense = read_checkpoint(pretrained_path(tmp_path / "matched_synthetic_resnet20" / "seed1", "resnet20"))
    assert kept_rows["dense"] == content_fingerprint(dense.state_dict)
    kept_file = next((tmp_path / "kept").glob("synthetic_resnet20_regrow1_*_seed1.json"))
    kept_file.write_text(json.dumps({**kept_rows, "dense": "0" * 16}))
    with pytest.raises(UsageError, match="another dense model"):
        bench_matched.main(TINY + ["--save_dir", str(tmp_path)] + no_swaps)


def test_reference_values_are_the_references_effective_weights(start, tmp_path):
    """A checkpoint loaded with masks keeps a stale ``weight`` attribute until its first forward pass: the
    values copied from a reference must be ``weight_orig * weight_mask``."""
    from utils.scoring.selection import reference_scores

    stage, pair = _stage_for(start)
    model = stage.build_model()
    model.load_state_dict(read_checkpoint(start[0] / "resnet20" / "checkpoint" / "ckpt.pth").state_dict)
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.7)
    path = tmp_path / "reference.pth"
    save_checkpoint(path, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    reference = stage.load_model(path, reparam=True)  # as load_reference does
    gran = stage.granularity
    grown = stage.load_model(start[1], reparam=True)
    before = get_masks(grown)
    gran.regrow(grown, {"layer3.0.conv1": 500}, reference_scores(gran, grown, reference), "dense", reference)
    new = get_masks(grown)["layer3.0.conv1"] & ~before["layer3.0.conv1"]
    want = (reference.layer3[0].conv1.weight_orig * reference.layer3[0].conv1.weight_mask).detach()
    assert int(new.sum()) == 500
    assert torch.equal(grown.layer3[0].conv1.weight_orig.detach()[new], want[new])
    assert (want[new] != 0).all()  # the reference keeps them: real trained values, not zeros


def test_matched_benchmark_from_given_dense_models_with_the_paper_regime_arms(start, tmp_path, monkeypatch):
    """--dense (a file per seed) instead of pretraining; greedy uniform; searches with cheap episodes over every
    unit; a swap interval in epochs names its arms."""
    from benchmarks import bench_matched, common

    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setattr(bench_matched, "ROOT", tmp_path)
    dense = tmp_path / "dense" / "resnet20_seed7.pth"
    dense.parent.mkdir()
    dense.write_bytes((start[0] / "resnet20" / "checkpoint" / "ckpt.pth").read_bytes())
    searched = []
    real = bench_matched.run

    def spy(main, argv):
        searched.append(argv)
        return real(main, argv)

    monkeypatch.setattr(bench_matched, "run", spy)
    argv = TINY + ["--save_dir", str(tmp_path / "runs"), "--seeds", "7", "--dense", str(tmp_path / "dense" /
                   "resnet20_seed{seed}.pth"), "--start_sparsity", "0.96", "--final_sparsity", "0.95",
                   "--regrow_epochs", "1", "--episodes", "2", "--episode_steps", "1", "--episode_val_subset", "50",
                   "--units", "all", "--inits", "zero", "--allocations", "greedy_uniform", "rl", "--swap_arms",
                   "straight", "--swap_every_epochs", "1", "--results", str(tmp_path / "kept")]
    assert bench_matched.main(argv) == 0
    rows = {r["arm"]: r for r in read_csv(tmp_path / "benchmarks" / "results" / "matched_synthetic.csv")}
    assert list(rows) == ["straight", "greedy_uniform/zero", "rl/zero", "straight+rigl1ep"]
    assert not (tmp_path / "runs" / "matched_synthetic_resnet20" / "seed7" / "resnet20").exists()  # no pretrain
    search = next(a for a in searched if "--label" in a)
    assert search[search.index("--units") + 1] == "all" and search[search.index("--episode_steps") + 1] == "1"
    kept = json.loads(next((tmp_path / "kept").glob("*_seed7.json")).read_text())
    assert kept["dense"] == read_checkpoint(dense).lineage  # the rows name the given dense model
    # greedy uniform: shares proportional to each layer's pruned count
    assert int(rows["greedy_uniform/zero"]["regrown"]) > 0
    swapped = read_checkpoint(next((tmp_path / "runs" / "matched_synthetic_resnet20" / "seed7" /
                                    "straight_rigl1ep").rglob("*.pth")))
    assert swapped.meta["swap"]["every_epochs"] == 1 and swapped.meta["swap"]["swaps"] >= 1


def test_the_benchmark_and_greedy_script_give_one_allocation_the_same_accuracy(start, tmp_path):
    """One data-order rule for "regrow, finetune, evaluate": the matched benchmark's arm and regrowth_greedy.py
    finetune the same allocation on the same batches, so they report the same accuracies (each arm of a benchmark
    starts the run seed's data-order stream afresh, as a stage script does)."""
    import regrowth_greedy
    from utils.cli.flags import scoring_settings, selection_settings
    from utils.cli.prepare import prepare_dense_sparse
    from utils.regrow.apply import regrow_and_finetune
    from utils.scoring.selection import selection_scores

    save, sparse = start
    argv = DATA + ["--save_dir", str(tmp_path), "--pretrained", str(save / "resnet20" / "checkpoint" / "ckpt.pth"),
                   "--initial_ckpt", str(sparse), "--greedy_mode", "uniform", "--finetune_epochs", "1",
                   "--patience", "0", "--saliency_batches", "2", "--regrow_step", "0.01"]
    assert regrowth_greedy.main(argv) == 0
    made = read_checkpoint(next((tmp_path / "resnet20").rglob("iter_0/*.pth"))).meta
    args = regrowth_greedy.parse_args(argv)
    stage, pair = prepare_dense_sparse(args, args.initial_ckpt, reparam=True)
    scores = selection_scores(stage, pair, None, selection_settings(args, "zero"), scoring_settings(args))
    for _ in range(2):  # a second arm from the same stage: the same batches again
        result = regrow_and_finetune(stage, pair, made["allocation"], scores, "zero", 1)
        assert (result["val_acc"], result["test_acc"]) == (made["val_acc"], made["test_acc"])
        assert result["regrown"] == made["regrown"] > 0
