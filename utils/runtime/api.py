"""The notebook API: one call from any checkpoint file to a ready model with its masks and meta (the top-level
``bridge`` module re-exports it)::

    import bridge
    net = bridge.load("runs/resnet20/oneshot/resnet20_0.9900.pth")
    print(net.meta["stage"], net.sparsity, net.meta["test_acc"])
    logits = net.model(images)        # images: normalised float [N, 3, H, W] on net.device
    bridge.evaluate(net, data_dir="./data")   # test accuracy (%), as evaluate.py measures it

``load`` reads every layout ``read_checkpoint`` reads: ours (dense, weight-pruned, regrown, channel-pruned,
physically exported) and the original repository's (``{'net', 'acc', 'epoch'}``, ``{'model_state_dict', ...}``,
raw state dicts with or without masks; pickled modules and structured checkpoints only with
``trust_pickle=True``), and builds the model with the code every stage loads through (``model_from_checkpoint``,
what ``Stage.load_model`` runs). A file that records no model name (the original's) is matched to the one
registered architecture with its keys and shapes, or named with ``model_name=``. Every bad input is a
``UsageError`` with one sentence.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from data import DataSettings, canonical_dataset, get_data
from models import create_model, list_models, model_spec
from utils.core.errors import UsageError
from utils.core.seeds import resolve_device
from utils.runtime.checkpoint import DENSE_SOURCES, Checkpoint, plain_shapes, read_checkpoint
from utils.runtime.stage import eval_flags_in, model_from_checkpoint, resolve_names
from utils.runtime.train import evaluate_model
from utils.sparsity.granularity import default_granularity, get_granularity
from utils.sparsity.masks import add_reparam, sparsity

SPLITS = ("val", "test")


@dataclass
class Loaded:
    """A checkpoint loaded for use in Python.

    ``model``: in eval mode on the device; every forward pass uses the masked weights, so pruned ones are exactly
    zero. Masks stay as ``torch.nn.utils.prune`` reparametrisation (``X.weight_orig`` parameter, ``X.weight_mask``
    buffer, ``weight = weight_orig * weight_mask``; channel masks as element masks on every slice of their
    groups), so a finetune of ``model.parameters()`` keeps pruned weights at zero: the mask multiplies them out.
    ``masks``: {unit: bool keep-mask, True = kept}: prunable layer -> mask shaped like its weight (weight-pruned,
    regrown, the original's masked files), or channel group root -> bool [C] (channel-pruned); None when the
    model has no masks (dense, or a physical export, whose pruned channels are gone).
    ``meta``: what the checkpoint recorded (ours: stage, sparsity, val_acc, test_acc, parent, args, ...; the
    original's ``{'net', 'acc', 'epoch'}``: val_acc, epoch) plus ``model``, ``dataset``, ``num_classes`` and
    ``format`` (its layout: ``bridge-ckpt``, ``original-pretrain``, ``raw-state-dict``, ...).
    ``sparsity``: pruned / all prunable (Conv2d and Linear) weights of ``model``, in [0, 1], evaluate.py's
    ``sparsity``; ``unit_sparsity``: the same counted in units of ``granularity`` (masked channels / all
    groupable channels for a channel-pruned checkpoint). ``granularity``: whose masks ``model`` carries
    (``weight`` or ``channel``), None without masks. ``exported``: a physical export (smaller shapes).
    """

    model: nn.Module
    masks: dict[str, torch.Tensor] | None
    meta: dict[str, Any]
    sparsity: float
    unit_sparsity: float
    granularity: str | None
    exported: bool
    path: Path

    @property
    def device(self) -> torch.device:
        """Where ``model`` lives (inputs go there)."""
        return next(self.model.parameters()).device


def load(path: str | Path, *, model_name: str | None = None, device: str = "cpu", trust_pickle: bool = False,
         channels_last: bool = True) -> Loaded:
    """The checkpoint at ``path`` (any supported layout) as a ready model with its masks and meta (see ``Loaded``).

    ``model_name``: the architecture (``list_models()``), needed only for a file that records none and whose
    keys and shapes fit several (or no) registered models; ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``;
    ``trust_pickle``: allow pickled ``nn.Module`` files (the original's structured checkpoints among them), which
    run code from the file; ``channels_last``: the memory layout every stage uses (``False``: NCHW, faster for
    VGG-16 on a CPU); outputs do not depend on it beyond rounding. A missing or damaged file, an unknown or wrong
    model name, a pickled file without ``trust_pickle``: a ``UsageError``. The caller's random state is left as
    it was (building a model draws its initial weights).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, trust_pickle=trust_pickle)
    name, dataset = resolve_names(model_name or ckpt.model or _matching_model(ckpt, path), ckpt.dataset)
    num_classes = ckpt.num_classes or model_spec(name).num_classes
    granularity = get_granularity(ckpt.granularity or default_granularity(), name, num_classes)
    with torch.random.fork_rng(devices=[]):
        model = model_from_checkpoint(ckpt, path, granularity, resolve_device(device), channels_last)
    if _merged_masks(ckpt, model):
        add_reparam(model)  # the zeros of a file whose masks were merged into its weights come back as masks
    masked = any(key.endswith("_mask") for key, _ in model.named_buffers())
    meta = {**ckpt.meta, "model": name, "dataset": dataset, "num_classes": num_classes, "format": ckpt.source}
    return Loaded(model.eval(), granularity.masks(model) if masked else None, meta, sparsity(model),
                  granularity.sparsity(model), granularity.name if masked else None,
                  ckpt.export_history is not None, path)


def evaluate(loaded: Loaded, *, split: str = "test", data_dir: str | Path = "./data", dataset: str | None = None,
             download: bool = True, amp: bool = True) -> float:
    """Top-1 accuracy (%) of ``loaded.model`` on ``split`` (``val`` or ``test``) of ``dataset`` (default: the one the
    checkpoint records, else the model's own: ``meta["dataset"]``), on the images evaluate.py measures by default:
    the checkpoint's own seed, val split and eval subset (the defaults where it records none). ``data_dir``: where
    the data set lives (synthetic needs none); ``amp``: bf16 autocast where the device has native bf16, as every
    stage evaluates."""
    if split not in SPLITS:
        raise UsageError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    name = canonical_dataset(dataset or loaded.meta["dataset"])
    saved = eval_flags_in(loaded.meta)
    settings = DataSettings(data_dir=data_dir, seed=int(saved.get("seed", DataSettings.seed)),
                            val_split=float(saved.get("val_split", DataSettings.val_split)),
                            eval_subset=saved.get("eval_subset"), download=download)
    data = get_data(name, settings, device=loaded.device)
    expected = model_spec(loaded.meta["model"]).input_size
    if data.info.image_size != expected:
        raise UsageError(f"model '{loaded.meta['model']}' takes {expected}x{expected} images but '{name}' has "
                         f"{data.info.image_size}x{data.info.image_size}; pick a data set it was built for")
    return evaluate_model(loaded.model, getattr(data, split), amp=amp)[1]


def _matching_model(ckpt: Checkpoint, path: Path) -> str:
    """The one registered model whose state dict has ``ckpt``'s keys and shapes (keys only, for the original's
    slimmed structured files); a ``UsageError`` asking for ``model_name`` when none or several do."""
    shapes = plain_shapes(ckpt.state_dict)
    layouts = {}
    for name in list_models():
        with torch.device("meta"):  # shapes only: no memory, no random draws
            layouts[name] = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
    same_keys = [name for name, layout in layouts.items() if layout.keys() == shapes.keys()]
    exact = [name for name in same_keys if layouts[name] == shapes]
    found = exact or same_keys
    if len(found) != 1:
        which = f"fits {', '.join(found)}" if found else "fits no registered model"
        raise UsageError(f"{path} records no model name and its state dict {which}: pass model_name= (one of "
                         f"{', '.join(list_models())})")
    return found[0]


def _merged_masks(ckpt: Checkpoint, model: nn.Module) -> bool:
    """Whether ``model``, loaded from a file without masks that need not be dense (a raw state dict or a pickled
    module: the original's test scripts merge masks into the weights), has pruned weights to keep as masks."""
    plain = ckpt.granularity is None and ckpt.export_history is None and ckpt.source not in DENSE_SOURCES
    return plain and sparsity(model) > 0
