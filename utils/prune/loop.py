"""A pruning run at any granularity: prune -> finetune -> save -> log -> plot, iterative, one-shot or gradual.

Used by ``prune_unstructure.py`` (weights) and ``prune_structure.py`` (channels); the granularity and the
pruner are the only difference. Each step writes ``{m}_{tag}{sparsity:.4f}.pth``, a row of
``prune_log.csv`` (``step, amount, sparsity``, the granularity's own columns, ``val_acc, test_acc,
checkpoint``) and the sparsity-vs-accuracy plot (gradual: ``schedule_{checkpoint stem}.csv``, the plan in
optimizer steps, and ``gradual_schedule.png``: each target's planned sparsity, its sparsity at each epoch's end
and its val accuracy per epoch, from those CSVs). Every target is checked before any training
starts: a step that would remove nothing, or empty a channel group, is a ``UsageError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from data.loader import DeviceLoader
from utils.core.distributed import is_main_process
from utils.core.errors import UsageError
from utils.core.files import read_csv, write_csv
from utils.core.log import LOG, log_outputs, setup_logging
from utils.core.paths import PRUNE_LOG, check_output_dir, clean_stale_temps, prune_checkpoint
from utils.core.seeds import seed_everything
from utils.prune.gradual import GradualPruning
from utils.prune.weight_pruners import PruneContext, Pruner
from utils.results.plots import plot_gradual_schedule, plot_sparsity_accuracy
from utils.runtime.resume import RESUME_SUFFIX, ResumePoint, check_point, resume_point
from utils.runtime.settings import FinetuneSettings, LoopSettings, ScheduleSettings
from utils.runtime.stage import Stage
from utils.runtime.train import FitState, evaluate_model, finetune_model, finetune_steps
from utils.sparsity.budget import prune_count
from utils.sparsity.masks import clone_model

LOG_COLUMNS = {"step": int, "sparsity": float, "checkpoint": str}  # what the stage reads back of prune_log.csv
GRADUAL_PLOT = "gradual_schedule.png"  # a gradual run's figure (its one point per target says little as a curve)


def read_prune_log(path: Path) -> list[dict[str, str]]:
    """The rows of a prune_log.csv, checked (``read_csv``): damaged or hand-edited logs are a ``UsageError``."""
    return read_csv(path, LOG_COLUMNS)


@dataclass
class PruneRun:
    """One pruning run: where it writes, with which pruner, its schedule and the finetune after each step."""

    stage: Stage
    pruner: Pruner
    context: PruneContext
    out: Path
    schedule: ScheduleSettings
    finetuning: FinetuneSettings  # the finetune after each step (with swap cycles when it has them)
    dense: dict[str, torch.Tensor] | None = None  # the dense weights by layer (the ``saliency`` swap grow score)
    search_script: str | None = None  # the granularity's RL search script, named in the next: line (None: none)

    @property
    def iterative(self) -> bool:
        return self.schedule.iterative

    def finetune_and_score(self, model: nn.Module, train: DeviceLoader, csv_path: Path, resume: ResumePoint,
                           gradual: GradualPruning | None = None) -> tuple[float, float, FitState]:
        """AdamW finetune on ``train`` (pruning along ``gradual`` while it trains), best epoch chosen on
        --select_on, with its resume point (continued with --resume); returns (val acc, test acc) of that state
        and the finetune's record (its swap cycles, its precision)."""
        ft, data, stage = self.finetuning, self.stage.data, self.stage
        select = data.test if ft.select_on == "test" else data.val
        if resume.continues:
            LOG.info("continuing the finetune from its resume point %s", resume.path)
        state = finetune_model(model, train, select, ft, LoopSettings(
            progress=stage.run.progress, csv_path=csv_path, **stage.speed), dense=self.dense,
            during=gradual, resume=resume)
        amp = self.stage.amp
        return evaluate_model(model, data.val, amp=amp)[1], evaluate_model(model, data.test, amp=amp)[1], state

    def fresh_streams(self) -> DeviceLoader:
        """Start each random stream of a step from the run seed: the global RNG, the pruner's generator and the
        gradient scores' batches; returns the training batches in the data order from its start
        (``Stage.train_from_start``). So no step depends on the steps before it: --resume skips the logged ones,
        and a step equals the same step run alone."""
        seed = self.stage.run.seed
        seed_everything(seed)
        self.context.restart(seed)
        return self.stage.train_from_start()

    def write_log_row(self, row: dict) -> None:
        """Add ``row`` to prune_log.csv, atomically. Iterative: rows of this step and later (an older run
        being redone) are dropped first; one-shot: a row for the same checkpoint is replaced."""
        path = self.out / PRUNE_LOG
        if self.iterative:
            rows = [r for r in read_prune_log(path) if int(r["step"]) < int(row["step"])]
        else:
            rows = [r for r in read_prune_log(path) if r["checkpoint"] != row["checkpoint"]]
        rows.append({k: str(v) for k, v in row.items()})
        rows.sort(key=lambda r: (int(r["step"]), float(r["sparsity"])))
        write_csv(path, rows, list(row))

    def step(self, model: nn.Module, amount: float, step: int, parent: Path, gradual: int = 0,
             label: str | None = None) -> Path:
        """Prune ``amount`` of the survivors, finetune, save the checkpoint and log row; returns the checkpoint.
        ``gradual`` > 0: no prune first; the finetune prunes ``gradual`` weights along the cubic schedule.
        ``label``: what the log calls the step (default ``step {step}``; one-shot targets: ``target i/n``)."""
        stage, gran = self.stage, self.stage.granularity
        label = label or f"step {step}"
        during, train = None, self.fresh_streams()
        if gradual:
            plan = self.schedule
            during = GradualPruning(model, gran, self.pruner, self.context, gradual, plan.gradual_steps,
                                    round(plan.gradual_until * finetune_steps(self.finetuning, stage.data.train)))
            removed = gradual
            achieved = (gran.total(model) - during.plan[-1][1]) / gran.total(model)
        else:
            removed = self.pruner.prune(model, amount, context=self.context)
            achieved = gran.sparsity(model)
        path = prune_checkpoint(self.out, stage.model_name, gran, achieved)
        if path.resolve() == Path(parent).resolve():
            raise UsageError(f"step {step} would write over its own input {parent}; nothing was pruned")
        LOG.info("%s: %s %s %d %ss -> sparsity %.4f", label, self.pruner.name,
                 f"removes, in {len(during.plan)} steps during the finetune," if during else "removed", removed,
                 gran.name, achieved)
        log = f"finetune_step{step}.csv" if self.iterative else f"finetune_{path.stem}.csv"  # one per target
        resume = ResumePoint.of_stage(path, Path(parent), stage.run, stage.flags)
        val_acc, test_acc, fitted = self.finetune_and_score(model, train, self.out / log, resume, during)
        extra = {**({"swap": fitted.swaps} if fitted.swaps else {}), **({"gradual": during.record()} if during else {}),
                 "precisions": fitted.precisions}
        stage.save(path, model, {"stage": f"prune_{self.schedule.mode}", "granularity": gran.name, "step": step,
                                 "amount": amount, "pruner": self.pruner.name, "sparsity": gran.sparsity(model),
                                 "val_acc": val_acc, "test_acc": test_acc, "parent": str(parent), **extra})
        if during:  # the plan in optimizer steps, for the figure (the finetune CSV has one row per epoch)
            write_csv(self.out / f"schedule_{path.stem}.csv", during.schedule_rows(len(stage.data.train)))
        self.write_log_row({"step": step, "amount": amount, "sparsity": gran.sparsity(model), **gran.describe(model),
                            "val_acc": val_acc, "test_acc": test_acc, "checkpoint": path.name})
        if is_main_process():
            resume.path.unlink(missing_ok=True)  # the step is saved and logged: nothing to resume
        self.plot(f"{stage.model_name} {self.schedule.mode} {gran.name} pruning ({self.pruner.name})")
        LOG.info("%s: sparsity %.4f  val %.2f%%  test %.2f%%  -> %s", label, achieved, val_acc, test_acc, path)
        return path

    def plot(self, title: str) -> None:
        """The run's figure from its CSVs: accuracy against sparsity, or for gradual pruning each target's
        schedule (sparsity and val accuracy per epoch of its finetune, ``finetune_{checkpoint stem}.csv``)."""
        if self.figure != GRADUAL_PLOT:
            plot_sparsity_accuracy(self.out / PRUNE_LOG, self.out / self.figure, title)
            return
        rows = read_prune_log(self.out / PRUNE_LOG)
        logs = {r["checkpoint"]: (self.out / f"finetune_{Path(r['checkpoint']).stem}.csv",
                                  self.out / f"schedule_{Path(r['checkpoint']).stem}.csv") for r in rows}
        plot_gradual_schedule({name: files for name, files in logs.items() if files[0].is_file()},
                              {r["checkpoint"]: float(r["sparsity"]) for r in rows}, self.out / self.figure, title)

    @property
    def figure(self) -> str:
        """The file name of the run's figure."""
        return GRADUAL_PLOT if self.schedule.mode == "gradual" else "sparsity_vs_accuracy.png"

    # ---- schedules -----------------------------------------------------------------------------------
    def run_iterative(self, parent: Path, amount: float, first: int, last: int) -> None:
        """Steps ``first..last``, each removing ``amount`` of the survivors, from checkpoint ``parent``. A step
        capped by what may go (every unit keeps ``keep_per_unit`` entries) says so; the run stops early when
        a step would remove nothing (at that floor, or when ``amount`` of the survivors rounds to 0)."""
        gran = self.stage.granularity
        model = self.stage.load_model(parent, reparam=True)
        self.check_outputs(self.planned_iterative(model, amount, first, last), first)
        setup_logging(self.out)
        for step in range(first, last + 1):
            alive, room = sum(int(m.sum()) for m in gran.masks(model).values()), gran.removable(model)
            if min(prune_count(amount, alive), room) == 0:
                LOG.info("step %d would remove no %s (%d live, %d may go); stopping at sparsity %.4f", step,
                         gran.name, alive, room, gran.sparsity(model))
                return
            if prune_count(amount, alive) > room:
                LOG.warning("step %d: only %d of the %d %ss asked can go (every %s keeps %d)", step, room,
                            prune_count(amount, alive), gran.name, gran.unit_noun, gran.keep_per_unit)
            parent = self.step(model, min(amount, room / alive), step, parent)

    def planned_iterative(self, model: nn.Module, amount: float, first: int, last: int) -> list[float]:
        """The sparsity each step ``first..last`` will reach (counts only: the schedule is deterministic); a
        first step that would remove nothing is a ``UsageError``."""
        gran = self.stage.granularity
        masks = gran.masks(model)
        total, alive = gran.total(model), sum(int(m.sum()) for m in masks.values())
        floor, planned = alive - gran.removable(model), []
        for _ in range(first, last + 1):
            remove = min(prune_count(amount, alive), alive - floor)
            if remove == 0:
                break
            alive -= remove
            planned.append((total - alive) / total)
        if not planned:
            raise UsageError(f"step {first} would remove no {gran.name}: {amount:g} of {alive:,} live {gran.name}s "
                             f"rounds to 0 or every {gran.unit_noun} is at its floor; raise the per-step fraction")
        return planned

    def check_outputs(self, sparsities: list[float], first_step: int | None) -> None:
        """Before any work: the run folder is writable, no planned checkpoint replaces an existing file, and
        (iterative) no step from ``first_step`` on is already logged, unless --overwrite. A planned step's
        resume point (a killed finetune) needs --resume (continue it) or --overwrite (removed here). Also
        removes the temp files of a killed earlier run."""
        overwrite = self.stage.run.overwrite
        gran, name = self.stage.granularity, self.stage.model_name
        paths = [prune_checkpoint(self.out, name, gran, s) for s in sparsities]
        check_distinct_names(paths, "--target_sparsity values" if first_step is None else "steps")
        check_output_dir(self.out, overwrite=overwrite, what="pruning folder")
        clean_stale_temps(self.out)
        logged = read_prune_log(self.out / PRUNE_LOG)  # a damaged log fails here, not after the first step
        if first_step is not None and not overwrite:
            done = [r["step"] for r in logged if int(r["step"]) >= first_step]
            if done:
                raise UsageError(f"step {done[0]} already ran in {self.out} (see {PRUNE_LOG}); pass --overwrite to "
                                 f"redo the steps from {first_step}, or --resume to continue after step {done[-1]}")
        for path in paths:
            check_point(resume_point(path), self.stage.run)
            if path.exists() and not overwrite and not resume_point(path).exists():  # a point: saved, not logged
                keep = ("it is neither logged nor resumable" if self.stage.run.resume else
                        "pass --resume to keep what it finished and run the rest")
                raise UsageError(f"{path} exists (an earlier run); {keep}, or --overwrite to replace it")

    def unfinished(self, first_step: int, sparsities: list[float]) -> tuple[int, list[float]]:
        """With --resume, what is left of the run: (iterative) the first step not in prune_log.csv from
        ``first_step`` on, (one-shot) the ``sparsities`` whose checkpoint is not logged; unchanged without it. The
        resume points a kill left beside logged checkpoints are removed. A --resume with nothing done and no
        resume point of this run's steps is a ``UsageError``."""
        if not self.stage.run.resume:
            return first_step, sparsities
        logged = read_prune_log(self.out / PRUNE_LOG)
        for row in logged if is_main_process() else ():
            resume_point(self.out / row["checkpoint"]).unlink(missing_ok=True)
        gran, name = self.stage.granularity, self.stage.model_name
        if self.iterative:
            steps = [int(r["step"]) for r in logged if int(r["step"]) >= first_step]
            left = (max(steps) + 1 if steps else first_step, sparsities)
            finished = [r for r in logged if int(r["step"]) == left[0] - 1]  # the step the next one starts from
            points = list(self.out.glob(f"*{RESUME_SUFFIX}"))  # the step in progress's, if any
        else:
            names = {r["checkpoint"] for r in logged}
            paths = {s: prune_checkpoint(self.out, name, gran, s) for s in sparsities}
            left = (first_step, [s for s in sparsities if paths[s].name not in names])
            finished = [s for s in sparsities if s not in left[1]]
            points = [resume_point(paths[s]) for s in left[1] if resume_point(paths[s]).exists()]
        if not finished and not points:
            raise UsageError(f"--resume: nothing to continue in {self.out} (no finished step of this run, no resume "
                             "point); run without --resume to start")
        return left

    def run(self, pretrained: Path) -> None:
        """The schedule: iterative from ``iter_start`` (the pretrained model, or the checkpoint of the step
        before, from prune_log.csv), or one-shot to each target sparsity."""
        plan, run = self.schedule, self.stage.run
        if self.iterative:
            first, _ = self.unfinished(plan.iter_start, [])
            parent = pretrained if first == 1 else previous_checkpoint(self.out, first - 1)
            if first <= plan.iter_end:
                self.run_iterative(parent, plan.amount, first, plan.iter_end)
            else:
                LOG.info("--resume: steps %d-%d already ran in %s", plan.iter_start, plan.iter_end, self.out)
        else:
            self.run_oneshot(pretrained, list(plan.target_sparsity), gradual=plan.mode == "gradual")
        rows = read_prune_log(self.out / PRUNE_LOG)
        last = self.out / max(rows, key=lambda r: float(r["sparsity"]))["checkpoint"]
        search = "" if self.search_script is None else (
            f"; the original method's next step, an RL regrowth search: python {self.search_script} "
            f"{self.stage.repeat_flags()}{f' --pretrained {run.pretrained}' if run.pretrained else ''} "
            f"--initial_ckpt {last} --num_epochs 200 --episode_steps 30 --episode_val_subset 1000")
        log_outputs([self.out / PRUNE_LOG, self.out / self.figure, self.out / "log.txt",
                     f"{len(rows)} checkpoint(s) in {self.out}/, the sparsest {last.name}, each with its "
                     "finetune_*.csv (one row per epoch)" + (" and schedule_*.csv" if self.figure == GRADUAL_PLOT
                                                              else "")],
                    f"python evaluate.py --ckpt {last} --per_layer   (then finetune.py or export.py --ckpt {last}"
                    f"{search})")

    def run_oneshot(self, dense_path: Path, targets: list[float], gradual: bool = False) -> None:
        """One step from the dense model ``dense_path`` to each target sparsity (all checked first; with --resume
        those already logged are skipped); ``gradual``: the step prunes during its finetune (``GradualPruning``)
        instead of before it."""
        gran = self.stage.granularity
        dense = self.stage.load_model(dense_path, reparam=True)
        amounts = [oneshot_amount(gran.sparsity(dense), t, dense_path) for t in targets]
        alive, total = sum(int(m.sum()) for m in gran.masks(dense).values()), gran.total(dense)
        planned = [(total - alive + prune_count(a, alive)) / total for a in amounts]
        _, left = self.unfinished(1, planned)
        if len(left) < len(planned):
            LOG.info("--resume: %d of the %d target(s) already ran in %s", len(planned) - len(left), len(planned),
                     self.out)
        numbers = [i for i, s in enumerate(planned, start=1) if s in left]  # the log names targets as in the flag
        targets, amounts = [targets[i - 1] for i in numbers], [amounts[i - 1] for i in numbers]
        for target, amount in zip(targets, amounts, strict=True):
            check_amount(amount, alive, gran.removable(dense), target)
        if gradual:  # the pruner meets the target only at the end of the finetune: try it on a copy first
            for target, amount in zip(targets, amounts, strict=True):
                trial = PruneContext(torch.Generator(device=self.stage.device).manual_seed(0), self.context.loader,
                                     self.context.num_batches)
                try:
                    self.pruner.prune(clone_model(dense), amount, context=trial)
                except UsageError as exc:
                    raise UsageError(f"--target_sparsity {target}: {exc}") from exc
        self.check_outputs(left, None)
        setup_logging(self.out)
        for i, amount in zip(numbers, amounts, strict=True):  # each target from the dense model: step 1 of its own
            self.step(self.stage.load_model(dense_path, reparam=True), amount, 1, dense_path,
                      gradual=prune_count(amount, alive) if gradual else 0, label=f"target {i}/{len(planned)}")


def check_distinct_names(paths: list[Path], what: str) -> None:
    """A ``UsageError`` when two planned checkpoints have one file name (sparsities equal at 4 decimals): the
    later would replace the earlier without a word."""
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise UsageError(f"two {what} would both write {path.name} (the same sparsity to 4 decimals): pass "
                             "each target once, at least 0.0001 apart")


def check_amount(amount: float, alive: int, room: int, target: float) -> None:
    """A ``UsageError`` when ``amount`` of ``alive`` removes nothing or more than ``room``."""
    remove = prune_count(amount, alive)
    if remove == 0:
        raise UsageError(f"--target_sparsity {target} is already reached (within one unit): nothing would be pruned")
    if remove > room:
        raise UsageError(f"--target_sparsity {target} is past the floor (every unit keeps one): at most {room} of "
                         f"{alive} can go, max sparsity {(1 - (alive - room) / alive):.4f} from this model; "
                         "this would empty a channel group")


def previous_checkpoint(out: Path, step: int) -> Path:
    """The checkpoint iteration ``step`` wrote, from prune_log.csv."""
    for row in read_prune_log(out / PRUNE_LOG):
        if int(row["step"]) == step and (out / row["checkpoint"]).is_file():
            return out / row["checkpoint"]
    raise UsageError(f"no checkpoint of iteration {step} in {out}: run iterations up to {step} first "
                     f"(or start with --iter_start 1)")


def oneshot_amount(current: float, target: float, path: Path) -> float:
    """Fraction of the survivors to remove to go from sparsity ``current`` to ``target``."""
    if target >= 1.0:
        raise UsageError("--target_sparsity must be below 1 (something has to survive)")
    if target <= current:
        raise UsageError(f"--target_sparsity {target} is not above the sparsity of {path} ({current:.4f})")
    return (target - current) / (1.0 - current)
