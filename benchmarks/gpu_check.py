"""The prepared GPU check: one command that measures what the README's performance figures need on a CUDA machine
and checks the CUDA-only paths, in under 8 minutes on one H100/H200 (no network: CIFAR-sized random tensors and
the synthetic data set). ``--toy`` runs every section at tiny sizes on the CPU (the test suite does), so the
script cannot rot while no GPU is lent.

Sections (each timed; one that fails records its error and the others still run):

* ``throughput``: training images/s of resnet20 and vgg16, fp32 / bf16 autocast x NCHW / channels_last, and
  compiled;
* ``epoch``: seconds of one VGG-16 epoch of 45,000 images (channels_last, bf16);
* ``episode``: seconds of one ResNet-20 search episode (regrow 1% into a 99% model) with a 5-epoch mini-finetune
  of 45,000 images, and at the cheap fidelity (30 steps, 1,000 val images);
* ``search``: a 20-episode cheap search (regrowth_oneshot.py, synthetic data) in 1 process and in 4 processes on
  the one GPU (``--share_gpus``): episodes per minute;
* ``latency``: masked vs exported (50% and 90% channel-pruned resnet20 and vgg16) at batch 1 / 128 / 1024;
* ``swap``: what one swap cycle adds to a training step (VGG-16 at 99%, ``bench_swap``);
* ``correctness``: a bf16 finetune leaves the masks as they were, swap cycles keep every layer's kept count on
  the device, a resumed search against an uninterrupted one (the largest reward difference); and (``search``)
  whether 1 and 4 processes ran the same episodes.

    python -m benchmarks.gpu_check                     # on the GPU machine: gpu_check.json and gpu_check.md
    python -m benchmarks.gpu_check --toy --out /tmp/g  # CPU, seconds

Writes ``{--out}/gpu_check.json`` (every section's figures, its seconds, the machine) and ``gpu_check.md`` (the
tables for docs/results/performance.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import bench_swap
from benchmarks.bench_train import epoch_seconds, images_per_second
from benchmarks.common import ROOT, cifar_like, machine, sync, timed
from data.cifar10 import INFO
from data.loader import DeviceLoader
from models import create_model
from utils.core.files import read_csv
from utils.core.timer import Timer
from utils.device.latency import latencies_ms
from utils.prune.pruners import get_pruner
from utils.regrow.allocation import allocate_uniform
from utils.regrow.apply import Finetuning, Regrowth, apply_allocation
from utils.runtime.checkpoint import save_checkpoint
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.runtime.train import finetune_model, use_channels_last
from utils.sparsity.budget import regrowth_budget
from utils.sparsity.granularity import get_granularity
from utils.sparsity.grow import random_scores_like
from utils.sparsity.masks import add_reparam, keep_mask, prunable_modules
from utils.sparsity.physical import export_model
from utils.sparsity.swap import SwapSettings


@dataclass(frozen=True)
class Sizes:
    """How big each section runs: the real check, or the toy one of the tests."""

    models: tuple[str, ...] = ("resnet20", "vgg16")
    steps: int = 20  # timed training steps per throughput configuration
    batch_size: int = 128
    compile: bool = True
    epoch_images: int = 45_000
    episode_images: int = 45_000
    episode_epochs: int = 5
    cheap_steps: int = 30
    cheap_val: int = 1_000
    search_episodes: int = 20
    search_processes: tuple[int, ...] = (1, 4)
    train_subset: int | None = None  # synthetic: all 9,000 training images
    latency_batches: tuple[int, ...] = (1, 128, 1024)
    channel_sparsities: tuple[float, ...] = (0.5, 0.9)
    repeats: int = 10


TOY = Sizes(models=("resnet20",), steps=1, batch_size=8, compile=False, epoch_images=32, episode_images=32,
            episode_epochs=1, cheap_steps=1, cheap_val=50, search_episodes=2, search_processes=(1, 2),
            train_subset=64, latency_batches=(1, 4), channel_sparsities=(0.5,), repeats=1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", action="store_true", help="tiny sizes on the CPU (the test suite's run)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --toy)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the two result files")
    parser.add_argument("--sections", nargs="+", default=None, choices=list(SECTIONS), help="run only these sections")
    return parser.parse_args(argv)


# ---- sections ----------------------------------------------------------------------------------------------

def throughput(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """Training images/s per model x precision x layout (and compiled, channels_last + bf16)."""
    rows = []
    for name in sizes.models:
        for channels_last in (False, True):
            for bf16 in (False, True):
                rows.append({"model": name, "channels_last": channels_last, "bf16": bf16, "compile": False,
                             "images_per_s": images_per_second(name, device, channels_last, bf16, sizes.steps,
                                                               sizes.batch_size)})
        if sizes.compile:
            seconds = epoch_seconds(name, device, sizes.steps * sizes.batch_size, sizes.batch_size, True)
            rows.append({"model": name, "channels_last": True, "bf16": device.type == "cuda", "compile": True,
                         "images_per_s": sizes.steps * sizes.batch_size / seconds})
    return {"batch_size": sizes.batch_size, "rows": rows}


def epoch(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """Seconds of one VGG-16 training epoch (the toolkit's defaults: channels_last, bf16 on CUDA)."""
    model = "vgg16" if "vgg16" in sizes.models else sizes.models[0]
    return {"model": model, "images": sizes.epoch_images,
            "seconds": epoch_seconds(model, device, sizes.epoch_images, sizes.batch_size, False)}


def episode(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """Seconds of one ResNet-20 episode: regrow 1% into a 99% model, mini-finetune, val accuracy."""
    gran = get_granularity("weight", "resnet20")
    sparse = create_model("resnet20").to(device)
    add_reparam(sparse)
    get_pruner("lamp").prune(sparse, 0.99)
    caps = gran.capacity(sparse)
    allocation = allocate_uniform({}, caps, regrowth_budget(gran.total(sparse), 0.01, sum(caps.values())))
    scores = random_scores_like(gran.masks(sparse), torch.Generator(device=device).manual_seed(0))
    images, labels = cifar_like(sizes.episode_images)
    val_images, val_labels = cifar_like(max(sizes.cheap_val, 5_000 if device.type == "cuda" else 64), seed=1)

    def loader(x, y, shuffle: bool) -> DeviceLoader:
        return DeviceLoader(x, y, batch_size=sizes.batch_size, mean=INFO.mean, std=INFO.std, device=device,
                            shuffle=shuffle, augment=INFO.augment if shuffle else None,
                            generator=torch.Generator(device=device).manual_seed(0))

    train, val = loader(images, labels, True), loader(val_images, val_labels, False)
    quiet = LoopSettings(progress=False, verbose=False)

    def run(train_view, val_view, epochs: int) -> None:
        apply_allocation(gran, sparse, Regrowth(allocation, scores, "zero"),
                         Finetuning(FinetuneSettings(epochs=epochs), train_view, val_view, quiet))

    run(train.steps(2), val.first(sizes.cheap_val), 1)  # warm-up (cuDNN autotuning)
    full = timed(lambda: run(train, val, sizes.episode_epochs), device)
    cheap = timed(lambda: run(train.steps(sizes.cheap_steps), val.first(sizes.cheap_val), 1), device, 3)
    return {"train_images": sizes.episode_images, "epochs": sizes.episode_epochs, "full_episode_s": full,
            "cheap_steps": sizes.cheap_steps, "cheap_val": sizes.cheap_val, "cheap_episode_s": cheap,
            "speedup": full / cheap}


def _start(work: Path) -> tuple[Path, Path]:
    """A dense resnet20 and its 99% LAMP copy on disk (made once): the search's inputs."""
    dense = work / "runs" / "resnet20" / "checkpoint" / "ckpt.pth"
    sparse = work / "runs" / "resnet20" / "oneshot" / "resnet20_0.9900.pth"
    if not sparse.is_file():
        torch.manual_seed(0)
        model = create_model("resnet20")
        save_checkpoint(dense, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
        add_reparam(model)
        get_pruner("lamp").prune(model, 0.99)
        save_checkpoint(sparse, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    return dense, sparse


def _search(work: Path, device: torch.device, sizes: Sizes, label: str, procs: int, extra: Sequence[str] = ()
            ) -> tuple[Path, float]:
    """regrowth_oneshot.py as a user runs it (under torchrun for ``procs`` > 1); its folder and wall seconds."""
    dense, sparse = _start(work)
    args = ["regrowth_oneshot.py", "--dataset", "synthetic", "--device", device.type, "--save_dir", str(work / "runs"),
            "--initial_ckpt", str(sparse), "--episode_steps", str(sizes.cheap_steps), "--episode_val_subset",
            str(sizes.cheap_val), "--episodes_per_update", str(max(sizes.search_processes)), "--label", label,
            "--no_progress", "--ssim_num_batches", "2", "--saliency_batches", "2", *extra]
    if sizes.train_subset:
        args += ["--train_subset", str(sizes.train_subset), "--eval_subset", str(4 * sizes.train_subset)]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
                if procs > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with Timer() as timer:
        done = subprocess.run(launcher + args + (["--share_gpus"] if procs > 1 else []), cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: exit {done.returncode}: {done.stderr[-1500:]}")
    return work / "runs" / "resnet20" / "regrowth_oneshot" / label, timer.seconds


def search(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """A cheap search of ``search_episodes`` episodes in 1 and in N processes on the one device."""
    rows, episodes = [], []
    for procs in sizes.search_processes:
        out, wall = _search(work, device, sizes, f"procs{procs}", procs, ["--num_epochs", str(sizes.search_episodes)])
        seconds = json.loads((out / "summary.json").read_text())["search_seconds"]
        episodes.append([(r["allocation"], r["reward"]) for r in read_csv(out / "episodes.csv")])
        rows.append({"processes": procs, "episodes": sizes.search_episodes, "search_seconds": seconds,
                     "wall_seconds": wall, "episodes_per_min": 60 * sizes.search_episodes / seconds})
    # several processes on one device must run the same episodes as one (--share_gpus over gloo)
    return {"rows": rows, "same_episodes": all(e == episodes[0] for e in episodes)}


def latency(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """Masked vs exported latency (ms, median) of channel-pruned models at each batch size."""
    rows = []
    for name in sizes.models:
        for sparsity in sizes.channel_sparsities:
            gran = get_granularity("channel", name)
            torch.manual_seed(0)
            masked = create_model(name)
            get_pruner("l1", gran, "global").prune(masked, sparsity)
            exported = export_model(gran, masked)[0]
            models = {k: use_channels_last(m.to(device)).eval() for k, m in (("masked", masked),
                                                                              ("exported", exported))}
            for batch in sizes.latency_batches:
                ms = latencies_ms(models, batch, gran.input_size, device, sizes.repeats)
                rows.append({"model": name, "channel_sparsity": sparsity, "batch": batch, **{f"{k}_ms": v for k, v
                                                                                              in ms.items()},
                             "speedup": ms["masked"] / ms["exported"]})
    return {"rows": rows}


def correctness(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """CUDA-only paths: a bf16 finetune leaves the masks as they were, and one with swap cycles keeps every
    layer's kept count (``topk`` and the kept gradient under autocast, on the device); a resumed search against
    an uninterrupted one."""
    torch.manual_seed(0)
    model = create_model("resnet20").to(device)
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.9)
    masks = {n: keep_mask(m).clone() for n, m in prunable_modules(model).items()}
    images, labels = cifar_like(4 * sizes.batch_size)
    train = DeviceLoader(images, labels, batch_size=sizes.batch_size, mean=INFO.mean, std=INFO.std, device=device,
                         shuffle=True, generator=torch.Generator(device=device).manual_seed(0))
    quiet = LoopSettings(amp=True, progress=False, verbose=False)
    finetune_model(model, train, train, FinetuneSettings(epochs=1, lr=1e-2), quiet)
    masks_kept = all(torch.equal(keep_mask(m), masks[n]) for n, m in prunable_modules(model).items())
    swaps = finetune_model(model, train, train, FinetuneSettings(epochs=2, lr=1e-2, swap=SwapSettings(every=1)),
                           quiet).swaps
    counts_kept = all(int(keep_mask(m).sum()) == int(masks[n].sum()) for n, m in prunable_modules(model).items())
    half = max(1, sizes.search_episodes // 4)  # one policy step per episode: the cut falls between two steps
    each = ["--episodes_per_update", "1"]
    whole, _ = _search(work, device, sizes, "whole", 1, each + ["--num_epochs", str(2 * half)])
    _search(work, device, sizes, "resumed", 1, each + ["--num_epochs", str(half)])
    resumed, _ = _search(work, device, sizes, "resumed", 1, each + ["--num_epochs", str(2 * half), "--resume"])
    rewards = [[float(r["reward"]) for r in read_csv(d / "episodes.csv")] for d in (whole, resumed)]
    diff = max((abs(a - b) for a, b in zip(*rewards, strict=True)), default=0.0)
    return {"bf16_masks_unchanged": masks_kept, "swap_counts_exact": counts_kept,
            "swap_weights_moved": swaps["weights_moved"], "resume_episodes": len(rewards[0]),
            "resume_max_reward_diff": diff, "resume_equal": diff == 0.0}


def swap(device: torch.device, sizes: Sizes, work: Path) -> dict:
    """What one swap cycle adds to a training step (``benchmarks/bench_swap.py``: VGG-16 at 99%)."""
    model = "vgg16" if "vgg16" in sizes.models else sizes.models[0]
    return bench_swap.main(["--model", model, "--batch_size", str(sizes.batch_size), "--device", device.type,
                            "--repeats", str(min(sizes.repeats, 5))])


SECTIONS: dict[str, Callable[[torch.device, Sizes, Path], dict]] = {
    "throughput": throughput, "epoch": epoch, "episode": episode, "search": search, "latency": latency,
    "swap": swap, "correctness": correctness}


# ---- report ------------------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    """The tables of docs/results/performance.md from ``results``."""
    out = [f"Machine: {results['machine']}{' (toy sizes)' if results['toy'] else ''}", ""]
    get = results["sections"].get
    if "rows" in get("throughput", {}):
        out += ["| model | layout | precision | compiled | images/s |", "|---|---|---|---|---:|"]
        out += [f"| {r['model']} | {'channels_last' if r['channels_last'] else 'NCHW'} | "
                f"{'bf16' if r['bf16'] else 'fp32'} | {'yes' if r['compile'] else 'no'} | {r['images_per_s']:,.0f} |"
                for r in get("throughput")["rows"]]
        out.append("")
    if "seconds" in get("epoch", {}):
        e = get("epoch")
        out += [f"One {e['model']} epoch of {e['images']:,} images: {e['seconds']:.2f} s", ""]
    if "full_episode_s" in get("episode", {}):
        e = get("episode")
        out += [f"ResNet-20 episode: {e['full_episode_s']:.2f} s with a {e['epochs']}-epoch mini-finetune of "
                f"{e['train_images']:,} images; {e['cheap_episode_s']:.2f} s at {e['cheap_steps']} steps / "
                f"{e['cheap_val']:,} val images ({e['speedup']:.1f}x)", ""]
    if "rows" in get("search", {}):
        out += ["| processes on the device | episodes | seconds | episodes/min |", "|---:|---:|---:|---:|"]
        out += [f"| {r['processes']} | {r['episodes']} | {r['search_seconds']:.1f} | {r['episodes_per_min']:.1f} |"
                for r in get("search")["rows"]]
        out += ["", f"The same episodes in every process count: {get('search')['same_episodes']}", ""]
    if "rows" in get("latency", {}):
        out += ["| model | channel sparsity | batch | masked ms | exported ms | speed-up |",
                "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {r['model']} | {r['channel_sparsity']:.0%} | {r['batch']} | {r['masked_ms']:.2f} | "
                f"{r['exported_ms']:.2f} | {r['speedup']:.2f}x |" for r in get("latency")["rows"]]
        out.append("")
    if "swap_ms" in get("swap", {}):
        w = get("swap")
        out += [f"Swap cycle ({w['model']}, {w['sparsity']:.0%}, batch {w['batch_size']}): {w['swap_ms']:.1f} ms on a "
                f"{w['step_ms']:.1f} ms step ({w['swap_per_step']:.2f} of a step)", ""]
    if "resume_equal" in get("correctness", {}):
        c = get("correctness")
        out += [f"bf16 finetune leaves the masks unchanged: {c['bf16_masks_unchanged']}; swap cycles keep every "
                f"layer's count: {c['swap_counts_exact']} ({c['swap_weights_moved']:,} weights moved); resumed search "
                f"equals uninterrupted: {c['resume_equal']} (largest reward difference "
                f"{c['resume_max_reward_diff']:.2e} over {c['resume_episodes']} episodes)", ""]
    failed = {k: v["error"] for k, v in results["sections"].items() if "error" in v}
    out += [f"Failed: {k}: {v.splitlines()[-1]}" for k, v in failed.items()]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.toy else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("error: no CUDA device here; run with --toy for the CPU check\n")
        raise SystemExit(2)
    sizes = TOY if args.toy else Sizes()
    out = Path(args.out)
    work = out / "gpu_check_work"
    results = {"machine": machine(), "device": str(device), "toy": args.toy, "sections": {}}
    out.mkdir(parents=True, exist_ok=True)
    for name in args.sections or SECTIONS:
        shutil.rmtree(work / name, ignore_errors=True)  # a rerun on a warm machine starts the section afresh
        with Timer() as timer:
            try:
                results["sections"][name] = SECTIONS[name](device, sizes, work / name)
            except Exception:  # one broken section must not cost the others' figures on a lent machine
                results["sections"][name] = {"error": traceback.format_exc()}
        results["sections"][name]["seconds"] = timer.seconds
        sync(device)
        print(f"{name}: {timer.seconds:.1f} s{' (FAILED)' if 'error' in results['sections'][name] else ''}",
              flush=True)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")  # after each section: a run cut
        (out / "gpu_check.md").write_text(markdown(results))  # short by its time limit keeps what it measured
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
