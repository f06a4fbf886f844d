"""The report's tables from the records of ``utils.results.records.collect``: one section's (experiment, model,
data set) settings grouped over the seed roots (sparsities equal within ``TOLERANCE``), as mean ± std and n,
rendered as Markdown (each table under a caption that says which model its accuracies are of: before or after
a final finetune) or flat rows for CSV/JSON. A missing value stays missing; a regrowth result is compared only
with the pruning checkpoint of the same seed and start schedule at the same final sparsity.
"""
from __future__ import annotations

from utils.core.provenance import describe_all
from utils.results.records import SETTINGS, Stat, cluster, same_sparsity

Table = list[dict]  # rows of plain values and ``Stat``s


def _per_root(records: list[dict]) -> list[dict]:
    """One record per root (the first), so a seed counts once."""
    seen, out = set(), []
    for r in records:
        if r["root"] not in seen:
            seen.add(r["root"])
            out.append(r)
    return out


def pruning_table(records: list[dict], setting: str) -> Table:
    """Setting A (iterative), B (one-shot) or gradual: val/test accuracy per sparsity, over the roots."""
    prune = [r for r in records if r["kind"] == "prune" and r["setting"] == setting]
    rows = []
    for key in sorted({(r["model"], r["dataset"] or "?", r["granularity"]) for r in prune}):
        group = [r for r in prune if (r["model"], r["dataset"] or "?", r["granularity"]) == key]
        for head in cluster([r["sparsity"] for r in group if r["sparsity"] is not None]):
            members = _per_root([r for r in group if same_sparsity(r["sparsity"], head)])
            rows.append({"model": key[0], "dataset": key[1], "granularity": key[2],
                         "sparsity": Stat.of(r["sparsity"] for r in members), "n": len(members),
                         "val_acc": Stat.of(r["val_acc"] for r in members),
                         "test_acc": Stat.of(r["test_acc"] for r in members)})
    return rows


def baseline_setting(result: dict) -> str:
    """The pruning run a regrowth result is compared with: the one its start came from (``start_schedule``:
    one-shot B, iterative A, gradual), or for a summary that does not record it, the one of the regrowth's own
    schedule (one-shot search: B, iterative: A)."""
    start = result.get("start_schedule")
    return SETTINGS[start] if start in SETTINGS else "B" if result["schedule"] == "oneshot" else "A"


def baseline_for(records: list[dict], result: dict) -> dict | None:
    """The pruning checkpoint of the same root, model, data set and granularity at ``result``'s final
    sparsity (within TOLERANCE), from the pruning run of ``baseline_setting``."""
    setting = baseline_setting(result)
    for r in records:
        if (r["kind"] == "prune" and r["setting"] == setting and r["root"] == result["root"]
                and (r["model"], r["dataset"], r["granularity"]) == (result["model"], result["dataset"],
                                                                      result["granularity"])
                and same_sparsity(r["sparsity"], result["final_sparsity"])):
            return r
    return None


def _group_key(r: dict) -> tuple:
    return (r["model"], r["dataset"] or "?", r["granularity"], r["schedule"], r["method"], r["label"],
            r.get("start_schedule") or "missing")


def _regrowth_groups(records: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """Regrowth results of one experiment over the roots: same model, data set, granularity, schedule,
    method, label, start schedule and start sparsity."""
    results = [r for r in records if r["kind"] == "regrowth"]
    groups = []
    for key in sorted({_group_key(r) for r in results}, key=lambda k: tuple(str(v) for v in k)):
        group = [r for r in results if _group_key(r) == key]
        starts = [r["start_sparsity"] for r in group if r["start_sparsity"] is not None]
        for head in cluster(starts) or [None]:
            members = [r for r in group if head is None or same_sparsity(r["start_sparsity"], head)]
            groups.append((key, _per_root(members)))
    return groups


def regrowth_table(records: list[dict]) -> Table:
    """Start and final sparsity, the pruning baseline at the same final sparsity (same seed), the result,
    and the improvement over that baseline (per seed, then mean ± std)."""
    rows = []
    for key, members in _regrowth_groups(records):
        baselines = [baseline_for(records, r) for r in members]
        gains = [r["test_acc"] - b["test_acc"] if b and r["test_acc"] is not None and b["test_acc"] is not None
                 else None for r, b in zip(members, baselines, strict=True)]
        rows.append({"model": key[0], "dataset": key[1], "granularity": key[2], "schedule": key[3],
                     "method": key[4], "label": key[5], "start_schedule": key[6], "n": len(members),
                     "start_sparsity": Stat.of(r["start_sparsity"] for r in members),
                     "final_sparsity": Stat.of(r["final_sparsity"] for r in members),
                     "baseline_test_acc": Stat.of(b["test_acc"] if b else None for b in baselines),
                     "val_acc": Stat.of(r["val_acc"] for r in members),
                     "test_acc": Stat.of(r["test_acc"] for r in members), "improvement_pp": Stat.of(gains)})
    return rows


def cost_table(records: list[dict]) -> Table:
    """What each regrowth result cost: episodes, finetune epochs (per episode, or greedy's per iteration),
    wall-clock seconds."""
    return [{"model": key[0], "granularity": key[2], "schedule": key[3], "method": key[4], "label": key[5],
             "n": len(members), "episodes": Stat.of(r["episodes"] for r in members),
             "finetune_epochs": Stat.of(r["finetune_epochs"] for r in members),
             "seconds": Stat.of(r["seconds"] for r in members)}
            for key, members in _regrowth_groups(records)]


def pipeline_table(records: list[dict]) -> Table:
    """pipeline.py's final table (every sparse model after the finetune it gives every row alike), over the
    roots; with the epochs after pruning where its CSV records them."""
    pipe = [r for r in records if r["kind"] == "pipeline"]
    epochs = any(r.get("epochs") is not None for r in pipe)
    rows = []
    for key in dict.fromkeys((r["model"], r["dataset"] or "?", r["granularity"], r["row"]) for r in pipe):
        members = _per_root([r for r in pipe if (r["model"], r["dataset"] or "?", r["granularity"], r["row"]) == key])
        rows.append({"model": key[0], "dataset": key[1], "granularity": key[2], "row": key[3], "n": len(members),
                     "sparsity": Stat.of(r["sparsity"] for r in members),
                     "params": Stat.of(r["params"] for r in members),
                     **({"epochs": Stat.of(r.get("epochs") for r in members)} if epochs else {}),
                     "val_acc": Stat.of(r["val_acc"] for r in members),
                     "test_acc": Stat.of(r["test_acc"] for r in members)})
    return rows


TABLES = {"Setting A: iterative pruning": lambda rec: pruning_table(rec, "A"),
          "Setting B: one-shot pruning": lambda rec: pruning_table(rec, "B"),
          "Gradual pruning": lambda rec: pruning_table(rec, "gradual"),
          "Regrowth outcome": regrowth_table, "Search cost": cost_table, "Pipeline": pipeline_table}
_BEFORE_FINAL = "before any final finetune (finetune.py)"
CAPTIONS = {  # what each table's accuracies are of: "pruned" means one thing per table
    "Setting A: iterative pruning": "Pruned = each step's checkpoint after its own pruning finetune (prune_log.csv), "
                                    f"{_BEFORE_FINAL}.",
    "Setting B: one-shot pruning": "Pruned = each target pruned from the dense model in one step, after its pruning "
                                   f"finetune (prune_log.csv), {_BEFORE_FINAL}.",
    "Gradual pruning": "Pruned = each target reached along the cubic schedule during its one finetune "
                       f"(prune_unstructure.py --mode gradual), at the best epoch after the last pruning step, "
                       f"{_BEFORE_FINAL}.",
    "Regrowth outcome": "Pruned (baseline_test_acc) = the pruning checkpoint of the same seed at the result's final "
                        "sparsity, from the run its start was pruned by (start_schedule; where not recorded, the "
                        "search's schedule: one-shot B, iterative A), after its pruning finetune; result = the best "
                        f"regrown model after its search or greedy finetune. Both {_BEFORE_FINAL}.",
    "Search cost": "Per regrowth result: episodes, finetune epochs per episode (greedy: per iteration), wall-clock "
                   "seconds.",
    "Pipeline": "pipeline.py's final table: pruned and regrown = each sparse model after the pipeline's final "
                "finetune (finetune.py; a gradual row: its own finetune, as long; epochs, where recorded: finetune "
                "epochs after pruning), so its pruned rows are not the pruning tables' numbers; dense = the "
                "pretrained model.",
}
DIGITS = {"sparsity": 4, "start_sparsity": 4, "final_sparsity": 4, "params": 0, "episodes": 0, "seconds": 0,
          "finetune_epochs": 0, "epochs": 0}


def tables(records: list[dict]) -> dict[str, Table]:
    """Every table that has rows."""
    built = {name: make(records) for name, make in TABLES.items()}
    return {name: rows for name, rows in built.items() if rows}


def markdown(name: str, rows: Table) -> str:
    """One table as Markdown (Stats as mean ± std), under its caption."""
    columns = list(rows[0])
    cell = lambda k, v: v.text(DIGITS.get(k, 2)) if isinstance(v, Stat) else str(v)  # noqa: E731
    caption = [CAPTIONS[name], ""] if name in CAPTIONS else []
    lines = [f"### {name}", "", *caption, "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(k, r[k]) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def flat(name: str, row: dict) -> dict:
    """A table row as plain values (each Stat as _mean, _std, _n) for CSV and JSON."""
    out = {"table": name}
    for key, value in row.items():
        if isinstance(value, Stat):
            out.update({f"{key}_mean": value.mean, f"{key}_std": value.std, f"{key}_n": value.n})
        else:
            out[key] = value
    return out


def provenance_line(records: list[dict]) -> str | None:
    """One line saying where a section's numbers come from, over the summaries that record it (``provenance``:
    commit, device or CPU, threads, precision, data), each field's different values joined by " / "; None
    when no summary of the section records one."""
    sources = [r for r in records if r["kind"] == "provenance"]
    found = [r["provenance"] for r in sources if r["provenance"] is not None]
    if not found:
        return None
    text = describe_all(found)
    missing = len(sources) - len(found)
    return f"Provenance ({len(found)} summar{'y' if len(found) == 1 else 'ies'}" + (
        f"; {missing} older one(s) record none" if missing else "") + f"): {text}"


