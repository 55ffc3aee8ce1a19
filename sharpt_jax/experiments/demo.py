"""The embedded demo (configs/demo.py): source stage -> target stages and baselines -> scores, table, heatmap.

    python run.py --config=configs/demo.py --workdir=DIR

Every stage is an ordinary run of the trainer and the evaluator in its own folder (DIR/source, DIR/<target>),
so the demo exercises exactly the code paths of a real experiment, resumes the same way after a kill, and can
be inspected with the same tools (metrics.jsonl, TensorBoard, eval/results.json, eval/best.json). A target is a
task name or, for the skills world, "skills:SPEC@N" (tasks/skills_world.py); its stages are named by its task
("skills_A1_n16"). Each SharPT target run also gets its step 0, the premise test's (skills_premise): the test score
of the source's codebook and generator before any target step and, on a skills-world target, its routing, written
once to DIR/<target>/step0.json.
"""

import collections
import os
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np
import seqio

from sharpt_jax import build, evaluate, scoring, storage, train
from sharpt_jax.experiments import plots, skills_premise
from sharpt_jax.models import methods
from tasks import registry, samples, skills_world

SAMPLES_PER_SPLIT = 32


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict]:
    """Runs the demo's stages in `workdir`; returns the rows of the results table."""
    if not storage.is_local(workdir):  # Its sample data and SentencePiece model are built with local files.
        raise build.ConfigError(f"--workdir={workdir}: the demo runs in a local folder (train and eval take gs://)")
    workdir = Path(workdir)
    base = config.copy_and_resolve_references()
    if base.t5 == build.RANDOM_T5:
        data_dir, t5_vocab = prepare_data(workdir / "data")
        base.data_dir = base.data_dir or str(data_dir)
        base.t5_vocab = base.t5_vocab or str(t5_vocab)
        print(
            f"T5: a tiny RANDOMLY INITIALISED model ({dict(base.t5_random)}) on the bundled sample rows, so the "
            "scores below only show that the pipeline runs.",
            flush=True,
        )

    # ---------------------------------------------------------------------------------------------
    # Source stage, every target from it, and every baseline method on every target.
    # ---------------------------------------------------------------------------------------------
    stages = {"source": stage_config(base, "source", base.demo.source_tasks, base.demo.source_steps)}
    # One source checkpoint, the one the targets start from: scoring a mixture's tasks at every checkpoint
    # would take longer than training it.
    stages["source"].save_every = base.demo.source_steps
    baselines = [m for m in base.demo.baselines.split(",") if m]
    for target in base.demo.targets.split(","):
        name = skills_world.resolve(target)  # A folder's name: a spec's task at its size ("skills_A1_n16").
        stages[name] = stage_config(base, "target", target, base.demo.target_steps, workdir / "source")
        for method in baselines:
            stages[f"{name}_{method}"] = stage_config(
                base,
                "target",
                target,
                base.demo.target_steps,
                method=method,
                learning_rate=base.demo.baseline_learning_rate,
            )
    for name, stage in stages.items():
        train.train(stage, workdir / name)
        evaluate.evaluate_checkpoints(stage, workdir / name)

    # ---------------------------------------------------------------------------------------------
    # Results table and skill heatmap.
    # ---------------------------------------------------------------------------------------------
    rows = results_rows(workdir, stages)
    print(format_table(rows), flush=True)
    storage.write_json(workdir / "results.json", rows)
    sharpt_stages = {name: stage for name, stage in stages.items() if methods.get(stage.method).has_codebook}
    if sharpt_stages:
        plot_skills(workdir, sharpt_stages, workdir / "skills.png")
        print(f"skill usage per task: {workdir / 'skills.png'}", flush=True)
    return rows


def prepare_data(data_dir: Path) -> tuple[Path, Path]:
    """The bundled sample rows of every task and a SentencePiece model trained on them, written once.

    Both are written into a temporary folder renamed into place, so a run killed here starts over cleanly.
    """
    vocab = data_dir / "spiece.model"
    if not vocab.exists():
        partial = data_dir.with_name(data_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        samples.write_samples(partial, num_per_split=SAMPLES_PER_SPLIT)
        samples.train_sentencepiece(partial, partial / "spiece")
        partial.rename(data_dir)
    return data_dir, vocab


def stage_config(base, stage: str, task: str, steps: int, source: Path | None = None, **fields):
    """The config of one stage: `stage` on `task` for `steps` steps, from the source run in `source`."""
    source = str(source) if source is not None else ""
    return build.run_config(base, stage=stage, task=task, num_train_steps=steps, source_checkpoint=source, **fields)


# ---------------------------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------------------------


def majority_baseline(task: str, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Test metrics of always answering the most frequent training target (first in order on ties)."""
    lengths = config.sequence_length.to_dict()

    def examples(split: str) -> list[dict]:
        dataset = seqio.get_mixture_or_task(task).get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
        return list(dataset.as_numpy_iterator())

    train_targets = [ex["targets_pretokenized"].decode() for ex in examples("train")]
    majority = collections.Counter(train_targets).most_common(1)[0][0]
    test = examples("test")
    return scoring.task_metrics(task, test, [majority] * len(test))


def results_rows(workdir: Path, stages: dict) -> list[dict]:
    """One row per (stage, task): the best checkpoint's test score on the task's first metric, beside always
    answering the most frequent training target and, for a run from the source, its step 0 (`step0`)."""
    rows = []
    for name, stage in stages.items():
        best = storage.read_json(workdir / name / "eval" / "best.json")
        _, eval_tasks = build.configure_tasks(stage, build.resolve_files(stage))
        for task in eval_tasks:
            short = task.removeprefix(registry.PREFIX)
            prefix = f"{short}/" if len(eval_tasks) > 1 else ""
            metric, majority = next(iter(majority_baseline(task, stage).items()))
            transferred = stage.stage == "target" and stage.source_checkpoint
            start = step0(stage, workdir / name, metric) if transferred else {"test": None, "routing": None}
            rows.append(
                {
                    "stage": name,
                    "method": stage.method,
                    "task": short,
                    "metric": metric,
                    "step": best["step"],
                    "step0": start["test"],
                    "test": best["test"][prefix + metric],
                    "majority": majority,
                    "routing": start["routing"],
                }
            )
    return rows


def step0(stage, run_dir: Path, metric: str) -> dict:
    """The target run `stage` (in `run_dir`) before any target step, with what its source run trained: its test
    `metric` and, on a skills-world target, its routing (skills_premise.routing_share: the share of test instances
    whose skill vector is the one the source instances of their skill choose most in the source run; else None).
    Computed once, then read back from run_dir/step0.json."""
    path = run_dir / "step0.json"
    if path.exists():
        return storage.read_json(path)
    model, setup = skills_premise.transferred(stage)
    scores = skills_premise.step0_scores(model, setup, stage, metric)
    record = {"metric": metric, "validation": scores["validation"], "test": scores["test"], "routing": None}
    (task,) = setup.eval_tasks
    if task.startswith(skills_world.PREFIX):
        _, _, truth = skills_premise.instances(model, task, "test", stage, setup.mesh)
        source = Path(stage.source_checkpoint)
        source_step = storage.read_json(source / "eval" / "best.json")["step"]
        counts = storage.read_json(source / "eval" / "skills.json")[str(source_step)]["test"]
        majority = skills_premise.source_majority(counts)
        record["routing"] = skills_premise.routing_share(scores["skills"], truth, majority)
    if jax.process_index() == 0:
        storage.write_json(path, record)
    return record


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table; "-" where a row has no step 0 or routing (no source run, no source skill)."""

    def number(value, spec: str) -> str:
        return "-" if value is None or np.isnan(value) else format(value, spec)

    lines = [
        "| stage | method | task | metric | best step | step 0 | test | majority target | routing |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['stage']} | {r['method']} | {r['task']} | {r['metric']} | {r['step']} | {number(r['step0'], '.1f')} | "
        f"{r['test']:.1f} | {r['majority']:.1f} | {number(r['routing'], '.2f')} |"
        for r in rows
    ]
    return "\n".join(lines)


def plot_skills(workdir: Path, stages: dict, out: Path) -> None:
    """Heatmap [task, skill] of how often each task's test examples chose each skill (best checkpoint)."""
    names, rows = [], []
    for name in stages:
        best = storage.read_json(workdir / name / "eval" / "best.json")
        skills = storage.read_json(workdir / name / "eval" / "skills.json")[str(best["step"])]["test"]
        for task, counts in skills.items():
            names.append(f"{task} ({name})" if name == "source" else task)
            rows.append(counts)
    plots.skill_heatmap(names, rows, "Skill usage per task (fraction of test examples)", out)
