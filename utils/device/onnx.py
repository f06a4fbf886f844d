"""ONNX files of sparse models, checked by ONNX Runtime: what a device runtime loads instead of a PyTorch checkpoint.

The file holds the model a device would run: a dense model as it is, a weight-pruned one with its masks folded
into the weights (the pruned weights are stored as zeros: ONNX has no sparse layout, so the file is about as
large as the dense model in fp32, a little smaller as BatchNorm is folded into the convolutions; the packed
formats of ``utils.device.storage`` say what a sparse layout would save), and a
channel-pruned one as its physical export (smaller shapes). The batch axis is dynamic. The export uses
PyTorch's TorchScript-based ONNX exporter (opset ``OPSET``), which needs no extra package and exports every zoo
model (EfficientNet's SE blocks and SiLU included).

A file is only kept when ONNX Runtime (CPU) gives the PyTorch model's logits, max absolute difference at most
``TOLERANCE``, on the same images.
"""
from __future__ import annotations

import io
import statistics
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from utils.core.errors import UsageError
from utils.core.timer import Timer
from utils.sparsity.masks import clone_model, has_reparam, prunable_modules

OPSET = 17
TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| logit difference a kept file may have
INPUT, OUTPUT = "images", "logits"


def folded(model: nn.Module) -> nn.Module:
    """A CPU, fp32, NCHW, eval-mode copy of ``model`` whose weight masks are folded into the weights (plain
    ``weight`` parameters, pruned entries exactly zero); ``model`` is untouched."""
    plain = clone_model(model).cpu().float().eval()
    for module in prunable_modules(plain).values():
        if has_reparam(module):
            prune.remove(module, "weight")
    for param in plain.parameters():  # channels_last weights export as they are, but NCHW is the portable layout
        param.data = param.data.contiguous()
    return plain


def onnx_bytes(model: nn.Module, input_size: int) -> bytes:
    """The ONNX file (bytes) of ``model`` (see ``folded``) taking [batch, 3, input_size, input_size] images."""
    plain = folded(model)
    example = torch.zeros(2, 3, input_size, input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's deprecation notes are not the user's business
        warnings.simplefilter("ignore")
        torch.onnx.export(plain, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return buffer.getvalue()


def session(data: bytes):
    """An ONNX Runtime CPU session (``onnxruntime.InferenceSession``) of the file ``data``."""
    import onnxruntime  # here, not at the top: every search and evaluation imports this module, few run ONNX

    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


@torch.no_grad()
def max_abs_diff(data: bytes, model: nn.Module, images: torch.Tensor) -> float:
    """Max |logit difference| between ONNX Runtime on the file ``data`` and ``model`` (folded, CPU fp32) on
    ``images`` [N, 3, H, W]."""
    reference = folded(model)(images.cpu().float()).numpy()
    logits = session(data).run([OUTPUT], {INPUT: images.cpu().float().numpy()})[0]
    return float(np.abs(logits - reference).max())


def checked_onnx(model: nn.Module, input_size: int, images: torch.Tensor) -> tuple[bytes, float]:
    """The ONNX file of ``model`` and its max |logit difference| on ``images``; a ``UsageError`` (no file is
    written) when the difference is above ``TOLERANCE``."""
    data = onnx_bytes(model, input_size)
    diff = max_abs_diff(data, model, images)
    if not diff <= TOLERANCE:  # NaN included
        raise UsageError(f"the ONNX file's outputs differ from PyTorch's by {diff:.2e} (max |logit difference|, "
                         f"more than {TOLERANCE:g}): not written")
    return data, diff


def ort_latency_ms(data: bytes, batch_size: int, input_size: int, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time (ms) of one ONNX Runtime CPU run of ``batch_size`` random images."""
    run = session(data)
    x = np.random.default_rng(0).standard_normal((batch_size, 3, input_size, input_size), dtype=np.float32)
    times = []
    for round_ in range(warmup + repeats):
        with Timer() as timer:
            run.run([OUTPUT], {INPUT: x})
        if round_ >= warmup:
            times.append(timer.seconds)
    return 1000 * statistics.median(times)
