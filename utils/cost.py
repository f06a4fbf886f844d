"""What a model costs on a device: parameters and MACs (``utils.export.params_and_macs``) and measured latency."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency_ms(model: nn.Module, batch_size: int, input_size: int, device: torch.device, repeats: int = 10,
               warmup: int = 2, channels_last: bool = True) -> float:
    """Median wall time (milliseconds) of one eval-mode forward pass of ``batch_size`` random images of
    ``input_size`` pixels on ``device``, over ``repeats`` timed runs after ``warmup`` untimed ones.
    The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        model(x)
        _sync(device)
        times.append(time.perf_counter() - start)
    model.train(was_training)
    return 1000 * statistics.median(times)
