"""The toolkit in a notebook: one call loads any checkpoint, ours or the original repository's, into a ready model
with its masks and meta (timm's ``create_model(checkpoint_path=...)`` is the model)::

    import bridge
    net = bridge.load("runs/resnet20/oneshot/resnet20_0.9900.pth")  # .model (eval mode) .masks .meta .sparsity
    print(net.meta["stage"], f"{net.sparsity:.4f}", net.meta.get("test_acc"))
    logits = net.model(images)                 # normalised float images [N, 3, 32, 32] on net.device
    print(bridge.evaluate(net, split="test"))  # top-1 % on the images evaluate.py measures

Not a stage script: it writes nothing. The code is ``utils/runtime/api.py``; usage in docs/usage/pruning.md.
"""
from __future__ import annotations

from utils.runtime.api import Loaded, evaluate, load

__all__ = ["Loaded", "evaluate", "load"]
