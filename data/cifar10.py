"""CIFAR-10 from the standard ``cifar-10-batches-py/`` files (Python-2 or Python-3 pickles).

When the folder is missing it is downloaded with torchvision's helper (md5 checked) unless
``--no_download``; offline, the error says where to put the files. 50,000 train / 10,000 test images.
"""
from __future__ import annotations

import contextlib
import pickle
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data import DatasetInfo, ImageSet, RawDataset, register_dataset
from data.loader import Augment
from utils.core.errors import UsageError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
INFO = DatasetInfo("cifar10", 10, 32, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                   augment=Augment(padding=4, flip=True))


def _where_to_put(data_dir: Path) -> str:
    return (f"download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
            f"into {data_dir} (so that {data_dir / FOLDER}/data_batch_1 exists)")


# the only globals a CIFAR batch pickle holds (numpy arrays and dtypes, Python-2 or -3, numpy 1 or 2; bytes
# pickled by Python 3 at protocol 2): anything else (os.system, eval, ...) is refused before it is called
_BATCH_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("__builtin__", "bytes"),
                  ("builtins", "bytes")}


class _RefusedGlobal(pickle.UnpicklingError):
    """A batch file names a global that CIFAR data never holds."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batch files hold: dicts, lists, str, bytes, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _BATCH_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images uint8 [N, 3, 32, 32], labels int64 [N]); bytes or str keys both work. Read with
    a restricted unpickler (``_BATCH_GLOBALS``): a file that would call anything else is refused unread."""
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
        entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except FileNotFoundError:
        raise
    except _RefusedGlobal as exc:
        raise UsageError(f"CIFAR-10 file {path} holds a pickled call to {exc}, which CIFAR-10 data never holds: it "
                         f"was refused unrun; delete {path.parent} and download the data set again") from None
    except Exception as exc:
        raise UsageError(f"CIFAR-10 file {path} is damaged ({type(exc).__name__}: {exc}); delete "
                         f"{path.parent} and download the data set again") from exc
    if len(images) == 0 or len(labels) != len(images) or labels.min() < 0 or labels.max() > 9:
        raise UsageError(f"CIFAR-10 file {path} is damaged (no images, or labels that do not match them); delete "
                         f"{path.parent} and download the data set again")
    return images, labels


def _read_split(root: Path, names: list[str]) -> ImageSet:
    parts = [read_batch(root / name) for name in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ImageSet(images, labels)


def _download(data_dir: Path) -> None:
    """Fetch and extract the official archive; a failed download leaves nothing behind."""
    from torchvision.datasets.utils import download_url, extract_archive

    created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]  # folders this download makes
    data_dir.mkdir(parents=True, exist_ok=True)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
            download_url(URL, tmp, md5=ARCHIVE_MD5)
            extract_archive(str(Path(tmp) / Path(URL).name), tmp)
            shutil.move(str(Path(tmp) / FOLDER), str(data_dir / FOLDER))
    except BaseException:
        for folder in created:  # deepest first; only folders that are still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        socket.setdefaulttimeout(old_timeout)


@register_dataset("cifar10")
def load_cifar10(data_dir: Path, download: bool = True) -> RawDataset:
    """Read CIFAR-10 from ``data_dir/cifar-10-batches-py``, downloading it first when allowed."""
    root = data_dir / FOLDER
    missing = [n for n in TRAIN_FILES + TEST_FILES if not (root / n).is_file()]
    if missing and not download:
        raise UsageError(f"CIFAR-10 not found ({root / missing[0]} is missing); {_where_to_put(data_dir)}")
    if missing:
        if root.exists():
            raise UsageError(f"CIFAR-10 folder {root} is incomplete ({missing[0]} is missing); "
                             f"delete it and {_where_to_put(data_dir)}")
        try:
            _download(data_dir)
        except Exception as exc:
            raise UsageError(f"CIFAR-10 not found in {data_dir} and the download failed ({type(exc).__name__}); "
                             f"{_where_to_put(data_dir)}") from exc
    return RawDataset(INFO, _read_split(root, TRAIN_FILES), _read_split(root, TEST_FILES))
