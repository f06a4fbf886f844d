"""Data readers, the val split and the device-resident augmentation."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data.cifar10 as cifar10
from data import DataSettings, ImageSet, get_data, load_raw, split_train_val
from data.loader import Augment, DeviceLoader, color_jitter
from data.synthetic import make_images
from tests.conftest import tree, write_cifar
from utils.core.errors import UsageError

CPU = torch.device("cpu")


@pytest.mark.parametrize("bytes_keys", [False, True], ids=["py3-str-keys", "py2-bytes-keys"])
def test_cifar_reader_both_pickle_flavours(tmp_path, bytes_keys):
    root = write_cifar(tmp_path, per_batch=7, bytes_keys=bytes_keys, seed=3)
    raw = load_raw("CIFAR10", root, download=False)
    assert raw.train.images.shape == (35, 3, 32, 32) and raw.train.images.dtype == torch.uint8
    assert raw.test.images.shape == (7, 3, 32, 32) and raw.test.labels.dtype == torch.int64
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    first = entry[b"data" if bytes_keys else "data"][0]
    # rows are R, G, B planes of 1024 pixels each
    assert torch.equal(raw.train.images[0], torch.from_numpy(first.reshape(3, 32, 32)))
    assert raw.train.labels[0] == entry[b"labels" if bytes_keys else "labels"][0]


def test_cifar_truncated_batch_is_usage_error(tmp_path):
    root = write_cifar(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(UsageError, match="data_batch_3 is damaged"):
        load_raw("cifar10", root)


def test_cifar_missing_offline_says_where_to_put_files(tmp_path, monkeypatch):
    def offline(data_dir):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar10, "_download", offline)
    with pytest.raises(UsageError, match="download failed.*extract it into"):
        load_raw("cifar10", tmp_path / "empty")
    with pytest.raises(UsageError, match="not found"):
        load_raw("cifar10", tmp_path / "empty", download=False)
    assert tree(tmp_path) == []


def test_unknown_dataset_lists_names():
    with pytest.raises(UsageError, match="unknown dataset 'mnist'.*cifar10.*synthetic"):
        load_raw("mnist", ".")


def test_val_split_disjoint_and_seeded():
    n = 1000
    train = ImageSet(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.arange(n))  # labels = ids
    tr_a, va_a = split_train_val(train, 0.1, seed=7)
    tr_b, va_b = split_train_val(train, 0.1, seed=7)
    _, va_c = split_train_val(train, 0.1, seed=8)
    assert len(va_a.labels) == 100 and len(tr_a.labels) == 900
    assert set(va_a.labels.tolist()).isdisjoint(tr_a.labels.tolist())
    assert set(va_a.labels.tolist()) | set(tr_a.labels.tolist()) == set(range(n))
    assert torch.equal(va_a.labels, va_b.labels) and torch.equal(tr_a.labels, tr_b.labels)
    assert not torch.equal(va_a.labels, va_c.labels)


def test_val_uses_test_pipeline_and_subset_keeps_val(cifar_dir):
    full = get_data("cifar10", DataSettings(cifar_dir, seed=1, val_split=0.2, batch_size=8), device=CPU)
    small = get_data("cifar10", DataSettings(cifar_dir, seed=1, val_split=0.2, batch_size=8, train_subset=10),
                     device=CPU)
    assert full.val.augment is None and full.test.augment is None and full.train.augment is not None
    assert full.train.shuffle and not full.val.shuffle and not full.test.shuffle
    assert small.train.num_samples == 10 and full.train.num_samples == 80
    assert torch.equal(full.val.labels, small.val.labels)


def test_eval_subset_keeps_the_first_val_and_test_images_and_all_training_images(cifar_dir):
    full = get_data("cifar10", DataSettings(cifar_dir, seed=1, val_split=0.2, batch_size=8), device=CPU)
    quick = get_data("cifar10", DataSettings(cifar_dir, seed=1, val_split=0.2, batch_size=8, eval_subset=7),
                     device=CPU)
    assert quick.val.num_samples == quick.test.num_samples == 7 and quick.train.num_samples == 80
    assert torch.equal(quick.val.labels, full.val.labels[:7]) and torch.equal(quick.test.labels, full.test.labels[:7])
    assert torch.equal(quick.train.labels, full.train.labels)
    wide = get_data("cifar10", DataSettings(cifar_dir, seed=1, val_split=0.2, batch_size=8, eval_subset=10_000),
                    device=CPU)
    assert wide.val.num_samples == full.val.num_samples and wide.test.num_samples == full.test.num_samples


def _batches(loader: DeviceLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_augmentation_seeded_shapes_dtypes(cifar_dir):
    a = get_data("cifar10", DataSettings(cifar_dir, seed=5, batch_size=16), device=CPU)
    b = get_data("cifar10", DataSettings(cifar_dir, seed=5, batch_size=16), device=CPU)
    c = get_data("cifar10", DataSettings(cifar_dir, seed=6, batch_size=16), device=CPU)
    batches_a, batches_b, batches_c = _batches(a.train), _batches(b.train), _batches(c.train)
    assert len(batches_a) == len(a.train) == 6  # 90 images, batch 16
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b, strict=True):
        assert xa.dtype == torch.float32 and ya.dtype == torch.int64
        assert xa.shape[1:] == (3, 32, 32) and xa.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(batches_a[0][0], batches_c[0][0])
    assert not torch.equal(_batches(a.train)[0][0], batches_a[0][0])  # a new epoch draws anew


def _raw_loader(images: torch.Tensor, augment: Augment | None, shuffle: bool) -> DeviceLoader:
    """A loader whose 'normalisation' is x / 255, labels = image ids, one batch holding everything."""
    return DeviceLoader(images, torch.arange(len(images)), batch_size=len(images), mean=(0.0,) * 3, std=(1.0,) * 3,
                        device=CPU, shuffle=shuffle, augment=augment, generator=torch.Generator().manual_seed(0))


def _as_bytes(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def test_eval_pipeline_returns_images_unchanged_in_order():
    images = torch.randint(0, 256, (10, 3, 5, 7), dtype=torch.uint8)
    out, ids = next(iter(_raw_loader(images, None, shuffle=False)))
    assert torch.equal(ids, torch.arange(10)) and torch.equal(_as_bytes(out), images)


def test_crop_and_flip_give_windows_of_the_padded_image():
    images = torch.randint(1, 256, (200, 3, 8, 8), dtype=torch.uint8)
    out, ids = next(iter(_raw_loader(images, Augment(padding=2, flip=True), shuffle=True)))
    assert sorted(ids.tolist()) == list(range(200)) and not torch.equal(ids, torch.arange(200))
    out, padded = _as_bytes(out), torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets, flips = set(), 0
    for img, i in zip(out, ids.tolist(), strict=True):
        found = [(r, c, f) for r in range(5) for c in range(5) for f in (False, True)
                 if torch.equal(img, padded[i, :, r:r + 8, c:c + 8].flip(2) if f else padded[i, :, r:r + 8, c:c + 8])]
        assert found, f"image {i} is not a (mirrored) window of its padded source"
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 15 and 60 < flips < 140  # offsets spread over the 25, about half mirrored


def test_color_jitter_range_and_identity():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 6, 6)
    out = color_jitter(x, (0.2, 0.2, 0.2, 0.1), gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(color_jitter(x, (0.0, 0.0, 0.0, 0.0), gen), x, atol=1e-5)


def test_loader_normalises_with_dataset_constants():
    images = torch.full((4, 3, 2, 2), 255, dtype=torch.uint8)
    loader = DeviceLoader(images, torch.zeros(4, dtype=torch.long), batch_size=4, mean=(0.5, 0.5, 0.5),
                          std=(0.25, 0.25, 0.25), device=CPU, augment=None)
    x, _ = next(iter(loader))
    assert torch.allclose(x, torch.full_like(x, 2.0))


def test_synthetic_is_deterministic_balanced_and_not_trivial():
    a, b = make_images(500, seed=3), make_images(500, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.dtype == torch.uint8 and a.images.shape == (500, 3, 32, 32)
    counts = torch.bincount(a.labels, minlength=10)
    assert counts.min() > 25
    # nearest class mean in pixel space is far from perfect: classes overlap
    means = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(10)])
    dist = torch.cdist(a.images.float().flatten(1), means.flatten(1))
    assert (dist.argmin(1) == a.labels).float().mean() < 0.9


def _write_tiny_imagenet(root: Path, wnids: list[str], per_class: int = 3) -> Path:
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    lines = []
    for k, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")
        name = f"val_{k}.JPEG"
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(base / "val" / "images" / name)  # gray
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_read_in_place_and_cached(tmp_path, monkeypatch):
    root = _write_tiny_imagenet(tmp_path, ["n01", "n02", "n03"])
    before = tree(root / "tiny-imagenet-200")
    raw = load_raw("tiny_imagenet", root)
    assert raw.info.num_classes == 3 and raw.train.images.shape == (9, 3, 64, 64)
    assert raw.test.images.shape == (3, 3, 64, 64) and raw.test.labels.tolist() == [0, 1, 2]
    assert tree(root / "tiny-imagenet-200") == before  # nothing moved or renamed
    assert len(list((root / ".cache").glob("*.pt"))) == 1
    import data.tiny_imagenet as tiny

    monkeypatch.setattr(tiny, "_decode", lambda *a: pytest.fail("cache not used"))
    again = load_raw("tiny_imagenet", root)
    assert torch.equal(again.train.images, raw.train.images)
    data = get_data("tiny_imagenet", DataSettings(root, val_split=0.34, batch_size=4), device=CPU)
    x, _ = next(iter(data.train))
    assert x.shape == (4, 3, 64, 64)


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(UsageError, match="Tiny-ImageNet not found"):
        load_raw("tiny_imagenet", tmp_path)
