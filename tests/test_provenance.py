"""Where a result came from: the provenance record (code, torch, device and CPU, threads, precision, data, the
command) and the command a stage records for itself."""
from __future__ import annotations

import torch

from utils.cli.flags import cli_main
from utils.core import provenance as prov
from utils.core.provenance import FIELDS, command_line, data_fingerprint, describe, provenance, running, script_command


def test_the_record_names_code_machine_precision_data_and_command():
    data = {"name": "synthetic", "train": 9000, "val": 1000, "test": 2000, "fingerprint": "ab"}
    with running("python pretrain.py --epochs 1"):
        record = provenance(torch.device("cpu"), "bf16", data)
    assert set(FIELDS) <= set(record) and record["data"] == data and record["precision"] == "bf16"
    assert record["command"] == "python pretrain.py --epochs 1" and record["threads"] == torch.get_num_threads()
    assert record["torch"] == torch.__version__ and record["capability"] == torch.backends.cpu.get_cpu_capability()
    line = describe(record)
    assert "bf16" in line and "synthetic 9000/1000/2000" in line and "torch " in line
    assert describe(None) == "provenance not recorded"  # files written before the record existed


def test_commands_are_pasteable_for_scripts_and_modules():
    assert script_command(vars(prov), ["--x", "a b"]) == "python -m utils.core.provenance --x 'a b'"
    assert script_command({"__file__": "/repo/pretrain.py", "__spec__": None}, ["--epochs", "2"]) == \
        "python pretrain.py --epochs 2"
    with running("outer"):
        with running("inner"):
            assert command_line() == "inner"  # the stage pipeline.py runs, not the pipeline
        assert command_line() == "outer"
    assert command_line().startswith("python ")  # outside any stage: this process's arguments


def test_a_cli_main_records_its_own_command_line():
    seen = []

    @cli_main
    def main(argv=None) -> int:
        seen.append(command_line())
        return 0

    assert main(["--epochs", "1"]) == 0
    assert seen == ["python -m tests.test_provenance --epochs 1"] and prov._COMMANDS == []  # popped after it


def test_a_search_script_made_by_search_entry_records_its_own_name(monkeypatch):
    import regrowth_structure_oneshot
    from utils.cli import jobs
    from utils.core.errors import UsageError

    seen = []

    def job(args, granularity, schedule):
        seen.append((command_line(), granularity, schedule))
        raise UsageError("stop here")
    monkeypatch.setattr(jobs, "regrowth_job", job)
    assert regrowth_structure_oneshot.main(["--initial_ckpt", "x.pth"]) == 2
    assert seen == [("python regrowth_structure_oneshot.py --initial_ckpt x.pth", "channel", "oneshot")]


def test_the_data_fingerprint_follows_the_content():
    images = torch.arange(24, dtype=torch.uint8).view(2, 3, 2, 2)
    labels = torch.tensor([0, 1])
    same = data_fingerprint(images.clone(), labels.clone())
    assert data_fingerprint(images, labels) == same and len(same) == 16
    changed = images.clone()
    changed[0, 0, 0, 0] += 1  # one pixel of a re-encoded copy
    assert data_fingerprint(changed, labels) != same
    assert data_fingerprint(images, labels.flip(0)) != same
