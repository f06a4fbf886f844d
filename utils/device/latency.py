"""What a model costs on a device: measured latency (parameters and MACs: ``utils.sparsity.macs``)."""
from __future__ import annotations

import statistics

import torch
import torch.nn as nn

from utils.core.timer import Timer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latencies_ms(models: dict[str, nn.Module], batch_size: int, input_size: int, device: torch.device,
                 repeats: int = 10, warmup: int = 2, channels_last: bool = True) -> dict[str, float]:
    """Median wall time (milliseconds) of one eval-mode forward pass of ``batch_size`` random images of
    ``input_size`` pixels, for each model, on ``device``.

    The models are timed side by side: each of the ``repeats`` rounds runs every model once (after
    ``warmup`` untimed rounds), so drifts of a shared or throttled machine hit all of them alike. Each
    model's train/eval mode is restored afterwards.
    """
    modes = {label: model.training for label, model in models.items()}
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {label: [] for label in models}
    for round_ in range(warmup + repeats):
        for label, model in models.items():
            model.eval()
            _sync(device)
            with Timer() as timer:
                model(x)
                _sync(device)
            if round_ >= warmup:
                times[label].append(timer.seconds)
    for label, model in models.items():
        model.train(modes[label])
    return {label: 1000 * statistics.median(t) for label, t in times.items()}
