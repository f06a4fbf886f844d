"""Training images/s of resnet20 and vgg16 in fp32, bf16 autocast and torch.compile, side by side in one run.

Each configuration trains ``--steps`` SGD steps at batch ``--batch_size`` through the toolkit's own
``train_epoch`` and device-resident loader (random CIFAR-shaped data: the cost does not depend on pixel values),
channels_last (the toolkit's layout) unless ``--nchw``, after warm-up steps that also compile a compiled model.
The configurations alternate ``--rounds`` times so that a drift of the machine's speed hits all of them; the
table gives each one's best round, its ratio to fp32 and, for compiled models, the seconds compilation took
(against which its steady gain must pay: ``break-even`` is the number of training images after which the
compiled model is ahead). bf16 is forced here (``torch.autocast``) even where the toolkit would choose fp32 (a
CPU without native bf16), so that the table shows what it would cost.

    python -m benchmarks.bench_train                        # CPU figures (pin threads: OMP_NUM_THREADS=1)
    python -m benchmarks.bench_train --device cuda --steps 200
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from benchmarks.common import cifar_like, machine, save_results, sync, timed
from data.cifar10 import INFO
from data.loader import DeviceLoader
from models import create_model
from utils.core.timer import Timer
from utils.runtime import train as train_module
from utils.runtime.train import train_epoch, use_channels_last

CONFIGS = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]  # (precision, compiled)


def _loader(n: int, batch_size: int, device: torch.device, channels_last: bool) -> DeviceLoader:
    images, labels = cifar_like(n)
    return DeviceLoader(images, labels, batch_size=batch_size, mean=INFO.mean, std=INFO.std, device=device,
                        shuffle=True, augment=INFO.augment, generator=torch.Generator(device=device).manual_seed(0),
                        channels_last=channels_last)


@contextlib.contextmanager
def forced_precision(precision: str):
    """The toolkit's loop in ``precision`` on any device: bf16 autocast even on a CPU without native bf16."""
    real = train_module.autocast_dtype
    train_module.autocast_dtype = lambda device, amp: torch.bfloat16 if precision == "bf16" else None
    try:
        yield
    finally:
        train_module.autocast_dtype = real


class Config:
    """One model in one precision, compiled or not: its warm-up (compile) seconds and its steady images/s."""

    def __init__(self, name: str, precision: str, compiled: bool, device: torch.device, batch_size: int,
                 steps: int, channels_last: bool) -> None:
        self.precision, self.compiled, self.device = precision, compiled, device
        model = use_channels_last(create_model(name).to(device), channels_last)
        self.forward = torch.compile(model) if compiled else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.loader = _loader(steps * batch_size, batch_size, device, channels_last)
        self.images = steps * batch_size
        warm = _loader(3 * batch_size, batch_size, device, channels_last)
        with Timer() as timer, forced_precision(precision):
            train_epoch(self.forward, warm, self.optimizer, progress=False)  # compiles a compiled model
            sync(device)
        self.warmup_seconds = timer.seconds
        self.best = 0.0

    def round(self) -> float:
        """Train once over the loader; returns images/s and keeps the best."""
        with forced_precision(self.precision):
            seconds = timed(lambda: train_epoch(self.forward, self.loader, self.optimizer, progress=False),
                            self.device)
        self.best = max(self.best, self.images / seconds)
        return self.images / seconds


def images_per_second(name: str, device: torch.device, channels_last: bool, bf16: bool, steps: int,
                      batch_size: int) -> float:
    """Images/s of one eager configuration (one round after warm-up)."""
    return Config(name, "bf16" if bf16 else "fp32", False, device, batch_size, steps, channels_last).round()


def epoch_seconds(name: str, device: torch.device, images: int, batch_size: int, compile_model: bool) -> float:
    """Wall-clock seconds of one ``train_epoch`` over ``images`` with the toolkit's defaults (channels_last, bf16
    where native), best of two after a warm-up epoch (which compiles a compiled model)."""
    model = use_channels_last(create_model(name).to(device))
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    loader = _loader(images, batch_size, device, True)
    train_epoch(forward, loader, optimizer, progress=False)
    sync(device)
    return timed(lambda: train_epoch(forward, loader, optimizer, progress=False), device, repeats=2)


def compare(name: str, device: torch.device, batch_size: int, steps: int, rounds: int,
            channels_last: bool) -> list[dict]:
    """The rows of one model: every configuration of ``CONFIGS``, alternated ``rounds`` times."""
    torch.backends.cudnn.benchmark = device.type == "cuda"
    configs = [Config(name, p, c, device, batch_size, steps, channels_last) for p, c in CONFIGS]
    for _ in range(rounds):
        for config in configs:
            config.round()
    fp32 = configs[0].best
    rows = []
    for config in configs:
        plain = next(c for c in configs if c.precision == config.precision and not c.compiled)
        extra = config.warmup_seconds - plain.warmup_seconds  # what compiling cost beyond an eager warm-up
        gain = 1 / plain.best - 1 / config.best  # seconds saved per image once compiled
        break_even = extra / gain if config.compiled and gain > 0 else None
        rows.append({"model": name, "precision": config.precision, "compiled": config.compiled,
                     "images_per_s": config.best, "vs_fp32": config.best / fp32,
                     "compile_seconds": extra if config.compiled else 0.0, "break_even_images": break_even})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the configurations")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--nchw", action="store_true", help="NCHW instead of the toolkit's channels_last")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"{machine()}: training images/s, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"{'NCHW' if args.nchw else 'channels_last'}")
    print(f"  {'model':<9} {'precision':<9} {'compiled':<8} {'images/s':>9} {'vs fp32':>8} {'compile s':>9} "
          f"{'break-even images':>17}")
    rows = []
    for name in args.models:
        for row in compare(name, device, args.batch_size, args.steps, args.rounds, not args.nchw):
            rows.append(row)
            even = "-" if row["break_even_images"] is None else f"{row['break_even_images']:,.0f}"
            even = "never" if row["compiled"] and row["break_even_images"] is None else even
            print(f"  {row['model']:<9} {row['precision']:<9} {row['compiled']!s:<8} {row['images_per_s']:9,.0f} "
                  f"{row['vs_fp32']:7.2f}x {row['compile_seconds']:9.1f} {even:>17}")
    results = {"device": str(device), "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
               "channels_last": not args.nchw, "threads": torch.get_num_threads(), "throughput": rows}
    print(f"results: {save_results('bench_train', results)}")
    return results


if __name__ == "__main__":
    main()
