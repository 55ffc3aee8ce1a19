"""The eval mode: score every saved checkpoint of a run once, select the best on validation, report its test.

    python run.py --workdir=DIR --config.mode=eval     # with the run's own DIR/config.json (run.py)

Scoring itself (decoding or rank classification, the tasks' postprocessors and metrics) is `sharpt_jax.scoring`;
this module walks the checkpoints, keeps the results files and writes the best step's predictions.

Writes, under workdir/eval/ (each file replaced atomically after every checkpoint, so a killed evaluation loses
at most the checkpoint it was scoring, and a rerun scores only what is missing):
  results.json  {"<step>": {"<split>": {"<metric>": value, ..., "score": value}}, "protocol": {"scoring",
                "split_protocol"}}: validation at every step, the other splits at the best step (at every step
                with config.eval.every_split_every_checkpoint)
  skills.json   {"<step>": {"<split>": {"<task>": [K] skill counts}}}   (methods with a codebook)
  best.json     {"step", "validation", "test", "selected_by", "protocol"}: the step with the highest validation
                score (the earliest on ties), as the paper reports
  predictions/<best step>/<split>.jsonl   one JSON object per example, in the split's order: task, inputs,
                target, prediction (the decoded or ranked text) and skill (SharPT)
and every score to TensorBoard beside the training's, workdir/tensorboard, as eval/<split>/<metric> at the
checkpoint's step. The workdir is locked while it is scored (sharpt_jax.workdir_lock).
"""

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence

import jax

from sharpt_jax import build, checkpoints, logs, scoring, storage, workdir_lock
from sharpt_jax.models import methods
from sharpt_jax.scoring import SplitScore

PROGRESS_SECONDS = 30  # An evaluation prints a progress line at most this often, and its result at the end.
SELECTED_BY = "the highest validation score (mean of the metrics), the earliest step on ties"


def evaluate_checkpoints(config, workdir: str | os.PathLike) -> dict:
    """Scores every checkpoint of `workdir` on validation, selects the best, scores the other splits of
    `config.eval.splits` there and writes its predictions; returns best.json's content (module docstring).

    Raises:
      ConfigError: no checkpoints, no validation split, or eval/ holds scores of another protocol.
      WorkdirInUse: another run holds `workdir`.
    """
    if "validation" not in config.eval.splits:
        raise build.ConfigError(f"config.eval.splits={config.eval.splits}: validation selects the best checkpoint")
    with workdir_lock.hold(workdir):
        return _evaluate(config, storage.path(workdir))


def _evaluate(config, workdir: storage.Path) -> dict:
    setup = build.prepare(config)
    ckpts = checkpoints.Checkpoints(workdir)
    writer = logs.tensorboard_writer(workdir)
    try:
        steps = ckpts.all_steps()
        if not steps:
            raise build.ConfigError(f"{workdir}: no checkpoints to score under {ckpts.directory}; train first")
        book = Results(workdir / "eval", scoring.scoring_protocol(config, setup.eval_tasks), config.method, writer)
        run_model = build.RunModel(config, setup, ckpts)

        def score(step: int, splits: Sequence[str]) -> dict[str, dict[str, SplitScore]]:
            model = run_model.at(step)
            return {
                split: book.add(step, split, *scoring.score_tasks(model, setup.eval_tasks, split, config, setup.mesh))
                for split in splits
            }

        best_step, leader_scores = _score_validation(book, steps, config.eval, score)
        # The best step's other splits, and the predictions of every split (validation is scored again only when
        # an earlier invocation scored the best step).
        predictions_dir = book.folder / "predictions" / str(best_step)
        if missing := [split for split in config.eval.splits if not (predictions_dir / f"{split}.jsonl").exists()]:
            scored = dict(leader_scores)
            if to_score := [split for split in missing if split not in scored]:
                scored.update(score(best_step, to_score))
            for split in missing:
                write_predictions(predictions_dir / f"{split}.jsonl", scored[split])
    finally:
        ckpts.close()
        if writer is not None:
            writer.close()
    best = book.best(best_step)
    scores = f"validation {best['validation']['score']:.2f}" + (
        f", test {best['test']['score']:.2f}" if best["test"] else ""
    )
    print(f"eval of {len(steps)} checkpoint(s): best step {best_step}, {scores}", flush=True)
    return best


def _score_validation(book: "Results", steps: list[int], eval_config, score) -> tuple[int, dict]:
    """Scores every step on what it lacks (validation, or every split); returns the best step and, when this
    call scored it, its SplitScores by split ({} otherwise)."""
    every = eval_config.splits if eval_config.every_split_every_checkpoint else ("validation",)
    leader, leader_scores = None, {}  # The best step scored here, and its SplitScores (for its predictions).
    candidates = []  # The steps with scores: a damaged checkpoint without earlier scores is skipped.
    for step in steps:
        if missing := [split for split in every if split not in book.results.get(str(step), {})]:
            try:
                scored = score(step, missing)
            except checkpoints.DamagedCheckpoint as err:
                if jax.process_index() == 0:
                    print(f"warning: {err}; not scored", file=sys.stderr, flush=True)
                continue
            if leader is None or book.rank(step) > book.rank(leader):
                leader, leader_scores = step, scored
        candidates.append(step)
    if not candidates:
        raise build.ConfigError(f"no checkpoint of {steps} could be read")
    best_step = max(candidates, key=book.rank)
    return best_step, leader_scores if leader == best_step else {}


class Results:
    """eval/results.json and eval/skills.json of a run, kept in memory and written after every scored split (and
    its scores to TensorBoard with `writer`, the first host's)."""

    def __init__(self, folder: storage.Path, protocol: dict, method: str, writer=None):
        self.folder, self.protocol, self.method, self.writer = folder, protocol, method, writer
        self.results = storage.read_json(folder / "results.json") or {"protocol": protocol}
        if self.results.get("protocol") != protocol:
            raise build.ConfigError(
                f"{folder} holds scores made with {self.results.get('protocol')}, this evaluation uses {protocol}; "
                f"move {folder} away (or pass the same --config.eval.scoring) so that no table mixes protocols"
            )
        self.skills = storage.read_json(folder / "skills.json", {})
        self.num_scored, self.last_line = 0, time.perf_counter()

    def add(self, step: int, split: str, metrics: dict, counts: dict, scored: dict) -> dict[str, SplitScore]:
        """Records `scoring.score_tasks`'s result for (step, split); returns its SplitScores."""
        self.results.setdefault(str(step), {})[split] = metrics
        self.skills.setdefault(str(step), {})[split] = counts
        if jax.process_index() == 0:  # Every host computes the same results; the first writes them.
            storage.write_json(self.folder / "results.json", self.results)
            if methods.get(self.method).has_codebook:
                storage.write_json(self.folder / "skills.json", self.skills)
        if self.writer is not None:
            self.writer.write_scalars(step, {f"eval/{split}/{name}": value for name, value in metrics.items()})
            self.writer.flush()
        self.num_scored += 1
        if time.perf_counter() - self.last_line >= PROGRESS_SECONDS:
            print(f"eval step {step}: {split} {metrics['score']:.2f} ({self.num_scored} scored so far)", flush=True)
            self.last_line = time.perf_counter()
        return scored

    def rank(self, step: int) -> tuple[float, int]:
        return self.results[str(step)]["validation"]["score"], -step  # The earliest step wins ties.

    def best(self, step: int) -> dict:
        """Writes and returns best.json's content for `step`."""
        best = {
            "step": step,
            "validation": self.results[str(step)]["validation"],
            "test": self.results[str(step)].get("test"),
            "selected_by": SELECTED_BY,
            "protocol": self.protocol,
        }
        if jax.process_index() == 0:
            storage.write_json(self.folder / "best.json", best)
        return best


def write_predictions(path: storage.Path, scored: Mapping[str, SplitScore]) -> None:
    """One JSON line per example of every task of `scored` ({task: SplitScore}), written atomically."""
    lines = []
    for task, split_score in scored.items():
        skill_of = split_score.skills if split_score.skills is not None else [None] * split_score.num_examples
        for example, text, skill in zip(split_score.examples, split_score.texts, skill_of, strict=True):
            row = {
                "task": task,
                "inputs": scoring.text(example["inputs_pretokenized"]),
                "target": scoring.text(example["targets_pretokenized"]),
                "prediction": text,
            }
            if skill is not None:
                row["skill"] = int(skill)
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    if jax.process_index() == 0:
        storage.write_text(path, "".join(lines))
