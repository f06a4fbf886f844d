"""Keep a finished dense pretrain run as a reference model: its best checkpoint copied under --out with a JSON
record beside it (sha256, the exact command, commit, machine, threads, precision, data, minutes, and val/test
accuracy measured by evaluate.py in bf16 where native and in fp32).

The reference models are the one kind of checkpoint the repository keeps (about 1.1 MB each, ResNet-20): every
paper-regime experiment starts from them (``bench_matched --dense``), and so can users.

    python -m benchmarks.reference_dense --run_dir runs/dense_s1 --data_dir DATA --out docs/results/data/dense

Writes ``{out}/{model}_{dataset}_seed{seed}.pth`` and ``.json``; refuses to replace them without --overwrite.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

import evaluate
from utils.cli.flags import cli_main
from utils.core.errors import UsageError
from utils.core.files import read_csv, write_json
from utils.core.paths import pretrained_path
from utils.core.provenance import PROVENANCE_KEY, cpu_model
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.train import precision_name

# flags of the run that do not change the model it makes (where it ran and how it showed progress)
NOT_DEFINING = ("save_dir", "data_dir", "device", "no_progress", "resume", "overwrite", "no_download",
                "eval_batch_size")


def sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command(args: dict) -> str:
    """The pretrain.py command line that makes the model, from the run's recorded flags (defining ones only)."""
    parts = ["python pretrain.py"]
    for key, value in args.items():
        if key in NOT_DEFINING or value is None or value is False:
            continue
        parts.append(f"--{key}" if value is True else f"--{key} {value}")
    return " ".join(parts)


def measured(path: Path, data_dir: str, amp: bool) -> dict:
    """evaluate.py --json on the CPU over every val and test image of ``path`` (the checkpoint's own seed and val
    split)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaluate.main(["--ckpt", str(path), "--data_dir", data_dir, "--json", "--eval_subset", "all",
                              "--device", "cpu", "--no_progress", *([] if amp else ["--no_amp"])])
    if code:
        raise UsageError(f"evaluate.py on {path} failed (exit {code})")
    report = json.loads(out.getvalue())
    return {k: report[k] for k in ("val_acc", "test_acc", "val_images", "test_images")}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="the pretrain run's --save_dir")
    parser.add_argument("--m_name", default="resnet20")
    parser.add_argument("--data_dir", required=True, help="where the data set the run used lies")
    parser.add_argument("--data_note", default="CIFAR-10, the JPEG copy of ../shared/datasets (make_cifar10.py)",
                        help="which data the run used, in words")
    parser.add_argument("--out", default="docs/results/data/dense")
    parser.add_argument("--threads", type=int, default=None,
                        help="the thread count the run trained with, where its summary.json does not record it")
    parser.add_argument("--commit", default=None,
                        help="the commit the run trained at, where its checkpoint did not record one")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = pretrained_path(args.run_dir, args.m_name)
    summary_path = source.with_name("summary.json")
    if not summary_path.is_file():
        raise UsageError(f"{source.parent} holds no finished pretrain run (no summary.json)")
    ckpt = read_checkpoint(source)
    run_args = ckpt.meta.get("args") or {}
    name = f"{ckpt.model}_{ckpt.dataset}_seed{run_args.get('seed', 42)}"
    target, record = Path(args.out) / f"{name}.pth", Path(args.out) / f"{name}.json"
    if not args.overwrite and (target.exists() or record.exists()):
        raise UsageError(f"{target} exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    rows = read_csv(source.with_name("pretrain_log.csv"))
    summary = json.loads(summary_path.read_text())
    trained = summary.get(PROVENANCE_KEY) or {}  # runs before provenance records kept threads and precision alone
    evaluated = precision_name(torch.device("cpu"), True)  # what evaluate.py's default runs in on this CPU
    write_json(record, {
        "file": target.name, "sha256": sha256(target), "bytes": target.stat().st_size,
        "model": ckpt.model, "dataset": ckpt.dataset, "data": args.data_note, "seed": run_args.get("seed"),
        "command": command(run_args), "commit": ckpt.meta.get("git") or args.commit, "torch": ckpt.meta.get("torch"),
        "cpu": trained.get("cpu", cpu_model()), "threads": trained.get("threads", summary.get("threads", args.threads)),
        "precision": trained.get("precision",
                                 summary.get("precision", "fp32 unless bf16 was native on the training machine")),
        **({"trained": trained} if trained else {}),
        "epochs": len(rows), "best_epoch": summary["best_epoch"],
        "train_minutes": round(sum(float(r["seconds"]) for r in rows) / 60, 1),
        "recorded": {"val_acc": summary["best_val_acc"], "test_acc": summary["test_acc"]},
        "evaluated_on": cpu_model(),
        "evaluate": {evaluated: measured(target, args.data_dir, amp=True),
                     **({} if evaluated == "fp32" else {"fp32": measured(target, args.data_dir, amp=False)})},
        "created": ckpt.meta.get("created")})
    print(f"wrote {target} and {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
