"""What the skills-world experiments share: one run trained and scored (or read back), and the compile cache.

`skills_experiment` (the method comparison) and `skills_premise` (the premise test) chain hundreds of ordinary
runs; each finished run leaves a `record.json` in its folder, so a killed experiment continues with the same
command and never trains a finished run again.
"""

import time
from pathlib import Path

import jax
import numpy as np

from sharpt_jax import evaluate, storage, train


def use_compilation_cache(workdir: Path) -> None:
    """XLA's persistent compilation cache in workdir/xla_cache (unless one is set): hundreds of runs compile the
    same few steps (one per method and learning rate), so every compile after the first becomes a lookup."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(workdir / "xla_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def train_and_score(cfg, run_dir: Path, workdir: Path) -> dict:
    """Trains and scores one run (or reads back its record.json); returns the record (`run`: its folder
    relative to the experiment's workdir).

    A run whose loss diverges (train.TrainingDiverged) is recorded as such (`diverged`, validation -inf, test
    NaN) instead of stopping the experiment: a learning-rate grid may hold a rate too large for a method.
    """
    done = run_dir / "record.json"
    if done.exists():
        return storage.read_json(done)
    started = time.perf_counter()
    record = {"run": str(run_dir.relative_to(workdir))}
    try:
        train.train(cfg, run_dir)
    except train.TrainingDiverged as err:
        record.update(diverged=str(err), best_step=None, validation=-np.inf, test=np.nan, test_token_accuracy=np.nan)
    else:
        best = evaluate.evaluate_checkpoints(cfg, run_dir)
        test = best["test"] or {}
        record.update(
            best_step=best["step"],
            validation=best["validation"]["score"],
            test=mean_metric(test, "exact_match"),
            test_token_accuracy=mean_metric(test, "token_accuracy"),
            test_metrics=test,
        )
    record["seconds"] = time.perf_counter() - started
    if jax.process_index() == 0:
        storage.write_json(done, record)
    return record


def mean_metric(metrics: dict, name: str) -> float:
    """The metric of a single task, or its mean over a mixture's tasks ("<task>/<name>")."""
    values = [v for k, v in metrics.items() if k == name or k.endswith("/" + name)]
    return float(np.mean(values)) if values else float("nan")
