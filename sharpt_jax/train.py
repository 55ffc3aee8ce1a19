"""The train loop: one readable function from a config to checkpoints, metrics.jsonl and TensorBoard events.

    python run.py --config=configs/source_mix.py --workdir=DIR

A run writes under its workdir:
  config.json            the config as run
  checkpoints/<step>/    Orbax: trainable params, optimizer state, step; metadata with the data position, the
                         frozen models' paths and checksums, the source checkpoint and the config
  metrics.jsonl          one JSON object per logged step (step, loss, learning_rate, examples_per_sec, ...)
  tensorboard/           the same scalars as TensorBoard events

Determinism: parameters come from config.seed, the data order from (task, seed, batch size), dropout from
fold_in(seed key, step). A run killed at any moment and started again with the same command restores its last
checkpoint, replays the input stream to that step and ends with the same numbers as one that never stopped.
"""

import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers
from flax import nnx

from sharpt_jax import build, checkpoints, codebook, data, embedding_cache, evaluate, optim, sharding


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN or Inf; the last good checkpoint is kept."""


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains `config` in `workdir` (resuming from its last checkpoint); returns the last logged metrics."""
    workdir = Path(workdir)
    is_main = jax.process_index() == 0

    # ---------------------------------------------------------------------------------------------
    # Set-up: config, tasks, mesh.
    # ---------------------------------------------------------------------------------------------
    build.check_config(config)
    files = build.resolve_files(config)
    train_task, eval_tasks = build.configure_tasks(config, files)
    mesh = build.make_mesh(config)

    # ---------------------------------------------------------------------------------------------
    # Model: build, start from the source run (target stage), split into trainable and frozen.
    # ---------------------------------------------------------------------------------------------
    model, identity = build.build_model(config, files, mesh)
    source = build.restore_source(model, config, identity) if build.needs_source(config) else None
    # With config.instance_embedding_cache, each training example's e0 is computed once (or read back) and the
    # batches carry it, so the step never runs the encoder (sharpt_jax.embedding_cache); None otherwise.
    embeddings = embedding_cache.for_run(config, train_task, model, identity, mesh)
    graphdef, trainable, frozen = optim.split_model(model, config.method, config.stage)
    del model  # Its arrays now live in `trainable` and `frozen`.

    # ---------------------------------------------------------------------------------------------
    # Shardings and the jitted step.
    # ---------------------------------------------------------------------------------------------
    optimizer = optim.make_optimizer(config.optimizer, config.learning_rate, config.warmup_steps)
    schedule = optim.learning_rate_schedule(config.learning_rate, config.warmup_steps)
    # Codebook health (sharpt_jax.codebook) applies where the codebook trains: SharPT's source stage.
    trains_codebook = "codebook" in trainable
    restart_every = config.codebook_restart_every if trains_codebook else 0
    restart_window = config.num_skills if restart_every else 0
    trainable_sharding = sharding.state_shardings(trainable, mesh)
    frozen_sharding = sharding.state_shardings(frozen, mesh)
    state_sharding = train_state_shardings(trainable, trainable_sharding, optimizer, mesh, restart_window)
    frozen = jax.device_put(frozen, frozen_sharding)
    trainable = jax.device_put(trainable, trainable_sharding)
    state = jax.jit(lambda t: optim.init_train_state(t, optimizer, restart_window), out_shardings=state_sharding)(
        trainable
    )
    del trainable
    totals = zero_totals(config, restart_every)

    train_step = optim.make_train_step(
        graphdef, optimizer, schedule, restart_every, config.num_train_steps, config.micro_batches
    )

    def step_and_accumulate(state, frozen, batch, dropout_key, totals):
        state, metrics = train_step(state, frozen, batch, dropout_key)
        return state, accumulate(totals, metrics)

    replicated = sharding.replicated(mesh)
    step_fn = jax.jit(
        step_and_accumulate,
        in_shardings=(state_sharding, frozen_sharding, sharding.batch_sharding(mesh), replicated, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0, 4),
    )
    dropout_key = optim.dropout_key(config.seed)

    # ---------------------------------------------------------------------------------------------
    # Resume from the last checkpoint of this workdir.
    # ---------------------------------------------------------------------------------------------
    ckpts = checkpoints.Checkpoints(workdir)
    run_record = {
        "task": train_task,
        "method": config.method,
        "stage": config.stage,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "sequence_length": config.sequence_length.to_dict(),
        "identity": identity,
        "source": source,
    }
    start_step = 0
    if (latest := ckpts.latest_step()) is not None:
        check_same_run(ckpts.metadata(latest), run_record, workdir)
        state, _ = ckpts.restore(latest, state)
        start_step = latest
    elif trains_codebook and config.codebook_init == "kmeans":  # A fresh run: the first batches' k-means.
        first_batches = data.train_batches(
            train_task, config.sequence_length.to_dict(), config.batch_size, mesh, config.seed
        )
        state["trainable"] = codebook.kmeans_start(state["trainable"], graphdef, frozen, first_batches, config.seed)
    if is_main:
        (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
    metrics_file = MetricsFile(workdir / "metrics.jsonl", keep_until=start_step, enabled=is_main)
    writer = metric_writers.SummaryWriter(str(workdir / "tensorboard")) if is_main else None
    batches = data.train_batches(
        train_task, config.sequence_length.to_dict(), config.batch_size, mesh, config.seed, start_step, embeddings
    )

    # ---------------------------------------------------------------------------------------------
    # The loop. Nothing here waits for the devices except logging and saving.
    # ---------------------------------------------------------------------------------------------
    num_steps = config.num_train_steps
    if is_main:
        print(
            f"{train_task}: {config.method} {config.stage} stage, {optim.count_params(state['trainable']):,} "
            f"trainable parameters, steps {start_step} -> {num_steps}, mesh {dict(mesh.shape)}",
            flush=True,
        )
    last = {}
    window_start, window_step, run_start = time.perf_counter(), start_step, time.perf_counter()
    for step in range(start_step + 1, num_steps + 1):
        state, totals = step_fn(state, frozen, next(batches), dropout_key, totals)
        save_now = step % config.save_every == 0 or step == num_steps
        eval_now = bool(config.eval_every) and step % config.eval_every == 0
        if step % config.log_every and not save_now and not eval_now:
            continue

        # -- Log: one host sync per window. --
        now = time.perf_counter()
        last = summarize(jax.device_get(totals), step - window_step, float(schedule(step - 1)))
        last.update(
            step=step,
            examples_per_sec=(step - window_step) * config.batch_size / (now - window_start),
            steps_per_sec=(step - window_step) / (now - window_start),
        )
        totals = zero_totals(config, restart_every)
        if last["nonfinite_steps"]:
            kept = ckpts.latest_step()
            kept = f"the last good checkpoint is step {kept} in {ckpts.directory}" if kept else "no checkpoint yet"
            raise TrainingDiverged(
                f"loss or gradient became NaN/Inf between steps {window_step} and {step}; {kept} (lower "
                "--config.learning_rate or try --config.optimizer=adafactor)"
            )
        if eval_now:
            model = nnx.merge(graphdef, state["trainable"], frozen)
            scores, _, _ = evaluate.score_tasks(model, eval_tasks, "validation", config, mesh)
            last.update({f"eval/validation/{name}": value for name, value in scores.items()})
        metrics_file.write(last)
        if writer is not None:
            writer.write_scalars(step, {k: v for k, v in last.items() if k != "step"})
            writer.flush()
        if is_main:
            print(progress_line(last, num_steps, (now - run_start) / (step - start_step)), flush=True)
        window_start, window_step = time.perf_counter(), step  # Evaluation time is not training throughput.

        # -- Checkpoint. --
        if save_now:
            metadata = {"step": step, "examples_seen": step * config.batch_size}
            ckpts.save(step, state, {**metadata, **run_record, "config": config.to_dict()})
    ckpts.close()
    if writer is not None:
        writer.close()
    return last


def check_same_run(saved: dict, current: dict, workdir: Path) -> None:
    """A workdir resumes only the run it holds: same task, method, data order, models and source."""
    for key, value in current.items():
        if json.loads(json.dumps(saved.get(key))) != json.loads(json.dumps(value)):
            raise build.ConfigError(
                f"{workdir} holds checkpoints of another run ({key}: {saved.get(key)!r}, now {value!r}); "
                f"use a new --workdir or the original config"
            )


# ---------------------------------------------------------------------------------------------
# Shardings of the train state.
# ---------------------------------------------------------------------------------------------


def train_state_shardings(trainable, trainable_sharding, optimizer, mesh, restart_window: int = 0) -> dict:
    """Shardings of {"trainable", "opt", "step"} (and "skill_window" with restarts): optimizer moments shaped
    like a parameter are sharded like it (Adam's mu and nu), everything else (counts, Adafactor's factored rows
    and columns) is replicated."""
    replicated = sharding.replicated(mesh)
    params_treedef = jax.tree.structure(trainable)

    def like_params(node):
        if jax.tree.structure(node) != params_treedef:
            return jax.tree.map(lambda _: replicated, node)
        return jax.tree.map(
            lambda leaf, param, spec: spec if leaf.shape == param.shape else replicated,
            node,
            trainable,
            trainable_sharding,
        )

    opt_shapes = jax.eval_shape(optimizer.init, trainable)
    opt_sharding = jax.tree.map(like_params, opt_shapes, is_leaf=lambda x: jax.tree.structure(x) == params_treedef)
    shardings = {"trainable": trainable_sharding, "opt": opt_sharding, "step": replicated}
    if restart_window:
        shardings["skill_window"] = replicated
    return shardings


# ---------------------------------------------------------------------------------------------
# Metrics: device-side sums over a logging window, summarised on the host.
# ---------------------------------------------------------------------------------------------

SUMMED = ("loss", "lm_loss", "codebook_loss", "grad_norm")


def zero_totals(config: ml_collections.ConfigDict, restart_every: int = 0) -> dict:
    totals = {name: jnp.zeros((), jnp.float32) for name in SUMMED}
    totals["nonfinite_steps"] = jnp.zeros((), jnp.int32)
    if config.method == "sharpt":
        totals["skill_counts"] = jnp.zeros((config.num_skills,), jnp.int32)
    if restart_every:
        totals["restarted_skills"] = jnp.zeros((), jnp.int32)
    return totals


def accumulate(totals: dict, metrics: dict) -> dict:
    """Adds one step's metrics to the window's sums (inside the jitted step: no host sync)."""
    out = {name: totals[name] + metrics[name] for name in SUMMED}
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    out["nonfinite_steps"] = totals["nonfinite_steps"] + (~finite).astype(jnp.int32)
    for name in ("skill_counts", "restarted_skills"):
        if name in totals:
            out[name] = totals[name] + metrics[name]
    return out


def summarize(totals: dict, num_steps: int, learning_rate: float) -> dict:
    """Window means, plus for SharPT how the batch used the codebook:
    skill_perplexity = exp(entropy of the skill frequencies) (1 = one skill for all, K = uniform use) and
    dead_skills = how many of the K skills no example chose in the window; with restarts, restarted_skills =
    how many dead skills were re-seated in the window."""
    out = {name: float(totals[name]) / num_steps for name in SUMMED}
    out["learning_rate"] = learning_rate
    out["nonfinite_steps"] = int(totals["nonfinite_steps"])
    if "skill_counts" in totals:
        counts = np.asarray(totals["skill_counts"], np.float64)
        p = counts[counts > 0] / counts.sum()
        out["skill_perplexity"] = float(np.exp(-np.sum(p * np.log(p))))
        out["dead_skills"] = int(np.sum(counts == 0))
    if "restarted_skills" in totals:
        out["restarted_skills"] = int(totals["restarted_skills"])
    return out


def progress_line(metrics: dict, num_steps: int, seconds_per_step: float) -> str:
    step = metrics["step"]
    left = int(seconds_per_step * (num_steps - step))
    line = (
        f"step {step}/{num_steps} ({100 * step / num_steps:.0f}%) loss {metrics['loss']:.4f} "
        f"lr {metrics['learning_rate']:.3g} {metrics['examples_per_sec']:.1f} ex/s"
    )
    if "skill_perplexity" in metrics:
        line += f" skills ppl {metrics['skill_perplexity']:.1f} dead {metrics['dead_skills']}"
    if "restarted_skills" in metrics:
        line += f" restarted {metrics['restarted_skills']}"
    return line + f" | {left // 3600}h{left // 60 % 60:02d}m{left % 60:02d}s left"


class MetricsFile:
    """metrics.jsonl, append-only; on resume, lines past the restored step (written after the checkpoint by the
    run that was killed) are dropped so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, keep_until: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= keep_until]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # A line cut by the kill.
