"""Training: the train step, its state, and the loop from a config to checkpoints, metrics.jsonl and TensorBoard.

    python run.py --config=configs/source_mix.py --workdir=DIR

A run writes under its workdir:
  config.json            the config as run (the eval mode of run.py scores the run with it)
  lock                   while the run lasts: its host, pid and start (sharpt_jax.workdir_lock)
  checkpoints/<step>/    Orbax: trainable params, optimizer state (the last two checkpoints), step; metadata with
                         the input stream's position, the frozen models' paths and checksums, the source
                         checkpoint and the config
  input_index/           each training task's untokenised examples, made at the first start and read back by every
                         later one (sharpt_jax.data.indexed_examples: keyed by the data, settings and seed)
  damaged_checkpoints/   where a resume moves a checkpoint it could not read (only after such a resume)
  metrics.jsonl          one JSON object per logged step (step, loss, learning_rate, examples_per_sec, ...)
  tensorboard/           the same scalars as TensorBoard events (and the eval mode's scores, eval/<split>/<metric>)

The train state is a plain pytree {"trainable": nnx.State, "opt": optax state, "step": int32 []} (plus
"skill_window": int32 [K] with dead-skill restarts). `train_step` makes one update from it: the loss of the
batch (Eq. 5 while the codebook trains, Eq. 3 otherwise), its gradient with respect to the trainable part only
(in micro-batches with gradient accumulation), the optimizer's update, and the codebook's restarts.

Determinism: parameters come from config.seed, the data order from (task, seed, batch size), dropout from
fold_in(seed key, step). A run killed at any moment and started again with the same command restores its last
checkpoint, restarts the input stream at the position saved with it (sharpt_jax.data: no replay) and ends with
the same numbers as one that never stopped. A last checkpoint that cannot be read is named in one line and set
aside, and the run resumes from the one before (the last two keep their resume state).

The next global batches are made and placed on the devices by a thread while the step runs (`data.prefetch`,
two in flight), so an input pipeline slower than the host's share of the step's dispatch still keeps up with
the devices as long as it is faster than the step.
"""

import dataclasses
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from sharpt_jax import (
    build,
    checkpoints,
    codebook_health,
    data,
    embedding_cache,
    errors,
    logs,
    optim,
    scoring,
    sharding,
    source_stage,
    storage,
    workdir_lock,
)
from sharpt_jax.models import methods
from tasks import files


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN or Inf; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# The train step.
# ---------------------------------------------------------------------------------------------

# The model outputs a micro-batch step keeps: the losses, and what SharPT's metrics and restarts read.
INDEX_DIR = "input_index"  # Under the workdir: the training tasks' indexes (sharpt_jax.data.indexed_examples).
KEPT_OUTPUTS = ("lm_loss", "codebook_loss", "skill_counts", "e0", "codebook_distance")


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What shapes the step's program (static under jit).

    restart_every, num_train_steps: with N > 0, after every N-th step the skills that no instance chose in those N
      steps are re-seated on far instance embeddings (`codebook_health.restart_dead_skills`; metric
      `restarted_skills` counts them), except in the last N steps of the run's `num_train_steps`, which leave a
      re-seated skill too little training to be any use to the target tasks.
    micro_batches: M > 1 accumulates the gradient over M micro-batches of B / M rows (rows i, i + M, ...: each
      micro-batch keeps rows on every device of the data axis) under `jax.lax.scan`, then makes one update. Each
      micro-batch's loss is weighted by its share of the batch's target tokens (the LM loss) and by 1 / M (the
      codebook term), so the update equals the full batch's; dropout draws micro-batch i's masks from
      fold_in(key, i), so with dropout the masks (not their distribution) differ from the full batch's.
    """

    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    restart_every: int = 0
    num_train_steps: int = 0
    micro_batches: int = 1


def make_train_step(
    graphdef, optimizer, schedule, restart_every: int = 0, num_train_steps: int = 0, micro_batches: int = 1
):
    """`train_step(state, frozen, batch, dropout_key) -> (state, metrics)` for these settings, not yet jitted;
    the caller jits it with `donate_argnums=(0,)` so the trainable parameters and optimizer state are updated in
    place."""
    settings = StepSettings(graphdef, optimizer, schedule, restart_every, num_train_steps, micro_batches)
    return functools.partial(train_step, settings=settings)


def train_step(state: dict, frozen: nnx.State, batch: dict, dropout_key: jax.Array, *, settings: StepSettings):
    """One update of the train state on `batch` (see the module docstring); `frozen` is read only.

    Dropout masks come from fold_in(dropout_key, step), so a resumed run draws the same masks. Metrics are device
    scalars (plus `skill_counts` [K] for SharPT); nothing here syncs with the host.
    """
    step = state["step"]
    key = jax.random.fold_in(dropout_key, step)
    grads, out = batch_gradients(state["trainable"], frozen, batch, key, settings)
    updates, opt_state = settings.optimizer.update(grads, state["opt"], state["trainable"])
    trainable = optax.apply_updates(state["trainable"], updates)
    trains_codebook = "codebook" in state["trainable"]
    metrics = {
        "loss": out["lm_loss"] + out["codebook_loss"] if trains_codebook else out["lm_loss"],
        "lm_loss": out["lm_loss"],
        "codebook_loss": out["codebook_loss"],
        "grad_norm": optax.global_norm(grads),
        "learning_rate": settings.schedule(step),
    }
    if "skill_counts" in out:
        metrics["skill_counts"] = out["skill_counts"]
    new_state = {"trainable": trainable, "opt": opt_state, "step": step + 1}
    if settings.restart_every:
        every = settings.restart_every
        window = state["skill_window"] + out["skill_counts"]
        restart = ((step + 1) % every == 0) & (step + 1 + every <= settings.num_train_steps)
        new_state["trainable"] = jax.lax.cond(
            restart,
            lambda t: codebook_health.restart_dead_skills(t, window, out["e0"], out["codebook_distance"]),
            lambda t: t,
            trainable,
        )
        new_state["skill_window"] = jnp.where(restart, jnp.zeros_like(window), window)
        metrics["restarted_skills"] = jnp.where(restart, jnp.sum(window == 0), 0).astype(jnp.int32)
    return new_state, metrics


def objective(trainable, frozen, batch, key, lm_share, codebook_share, graphdef):
    """The batch's share of the step's loss, and the model's outputs."""
    model = nnx.merge(graphdef, trainable, frozen)
    # Rngs are stateful, so they are made inside the differentiated function's trace.
    out = model(batch, rngs=nnx.Rngs(dropout=key))
    # Eq. 5 adds the codebook term while the codebook trains (source stage). Frozen (target stage, Eq. 3), it has
    # no gradient to give, so the objective, and the logged loss, is the LM loss alone.
    loss = lm_share * out["lm_loss"]
    if "codebook" in trainable:
        loss = loss + codebook_share * out["codebook_loss"]
    return loss, out


def batch_gradients(trainable, frozen, batch, key, settings: StepSettings):
    """(gradient, metrics and per-row outputs) of the whole batch, in micro-batches when M > 1."""
    grad_fn = jax.grad(functools.partial(objective, graphdef=settings.graphdef), has_aux=True)
    num_micro = settings.micro_batches
    if num_micro == 1:
        return grad_fn(trainable, frozen, batch, key, 1.0, 1.0)
    micro = jax.tree.map(lambda x: x.reshape(-1, num_micro, *x.shape[1:]).swapaxes(0, 1), batch)
    weights = jnp.sum(micro["decoder_loss_weights"].astype(jnp.float32), axis=(1, 2))  # [M]
    lm_shares = weights / jnp.maximum(jnp.sum(weights), 1.0)

    def add_micro_batch(grads, inputs):
        batch_i, lm_share, i = inputs
        grads_i, out = grad_fn(trainable, frozen, batch_i, jax.random.fold_in(key, i), lm_share, 1 / num_micro)
        kept = {k: v for k, v in out.items() if k in KEPT_OUTPUTS}  # Not the logits: the scan stacks these.
        return jax.tree.map(jnp.add, grads, grads_i), (kept, lm_share)

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    grads, (outs, shares) = jax.lax.scan(add_micro_batch, zeros, (micro, lm_shares, jnp.arange(num_micro)))
    out = {"lm_loss": jnp.sum(shares * outs["lm_loss"]), "codebook_loss": jnp.mean(outs["codebook_loss"])}
    if "skill_counts" in outs:  # Per-row outputs of all micro-batches, [M, B / M, ...] -> [B, ...].
        out["skill_counts"] = jnp.sum(outs["skill_counts"], axis=0)
        for name in ("e0", "codebook_distance"):
            out[name] = outs[name].reshape(-1, *outs[name].shape[2:])
    return grads, out


def logged_step(state, frozen, batch, dropout_key, totals, *, step_fn):
    """`step_fn` and the window's metric sums (`logs.accumulate`) in one jitted program."""
    state, metrics = step_fn(state, frozen, batch, dropout_key)
    return state, logs.accumulate(totals, metrics)


def dropout_key(seed: int) -> jax.Array:
    """The run's dropout key (rbg). Each dropout call draws two 32-bit words from its own key (nnx.Rngs splits
    it off fold_in(key, step)) and hashes element indices with them (`layers.dropout`), so masks depend only on
    (seed, step), not on the mesh (the trainer tests check that)."""
    return jax.random.key(seed, impl="rbg")


def init_train_state(trainable: nnx.State, optimizer: optax.GradientTransformation, restart_window: int = 0) -> dict:
    """The train state at step 0; `restart_window` = K adds the dead-skill restarts' window counts [K]."""
    state = {"trainable": trainable, "opt": optimizer.init(trainable), "step": jnp.zeros((), jnp.int32)}
    if restart_window:
        state["skill_window"] = jnp.zeros((restart_window,), jnp.int32)
    return state


def train_state_shardings(trainable, trainable_sharding, optimizer, mesh, restart_window: int = 0) -> dict:
    """Shardings of the train state: optimizer moments shaped like a parameter are sharded like it (Adam's mu and
    nu), everything else (counts, Adafactor's factored rows and columns) is replicated."""
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
# The loop.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Program:
    """A run's jitted step with what it runs on: the train state, the frozen part, the model's graph."""

    graphdef: nnx.GraphDef
    state: dict
    frozen: nnx.State
    step_fn: object  # jitted logged_step
    schedule: optax.Schedule
    restart_every: int


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains `config` in `workdir` (resuming from its last checkpoint); returns the last logged metrics.

    Raises:
      WorkdirInUse: another run holds `workdir` (sharpt_jax.workdir_lock), checked before anything is built.
    """
    with workdir_lock.hold(workdir):
        return _train(config, storage.path(workdir))


def _train(config: ml_collections.ConfigDict, workdir: storage.Path) -> dict:
    is_main = jax.process_index() == 0

    # -- Set-up and model: build, start from the source run (target stage), split into trainable and frozen. --
    setup = build.prepare(config)
    model, identity = build.build_model(config, setup.files, setup.mesh)
    source = source_stage.restore_source(model, config, identity) if source_stage.needs_source(config) else None
    # With config.instance_embedding_cache, each training example's e0 is computed once (or read back) and the
    # batches carry it, so the step never runs the encoder (sharpt_jax.embedding_cache); None otherwise.
    embeddings = embedding_cache.for_run(config, setup.train_task, model, identity, setup.mesh)
    graphdef, trainable, frozen = optim.split_model(model, config.method, config.stage)
    del model  # Its arrays now live in `trainable` and `frozen`.
    program = compile_step(config, graphdef, trainable, frozen, setup.mesh)

    # -- Resume from the last checkpoint of this workdir (or start: a k-means codebook for a fresh run). --
    ckpts = checkpoints.Checkpoints(workdir)
    run_record = {
        "task": setup.train_task,
        "method": config.method,
        "stage": config.stage,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "sequence_length": config.sequence_length.to_dict(),
        "identity": identity,
        "source": source,
    }
    if data_files := files.checksums(setup.eval_tasks):  # {path: sha256}: a changed file is refused on resume.
        run_record["data_files"] = data_files
    start_step, position = resume(config, program, ckpts, run_record, setup, workdir)
    if is_main:
        storage.write_text(workdir / "config.json", config.to_json(indent=2) + "\n")
    batches = data.prefetch(
        data.train_batches(
            setup.train_task,
            config.sequence_length.to_dict(),
            config.batch_size,
            setup.mesh,
            config.seed,
            position,
            embeddings,
            index_dir=workdir / INDEX_DIR,
        )
    )
    if is_main:
        print(
            f"{setup.train_task}: {config.method} {config.stage} stage, "
            f"{optim.count_params(program.state['trainable']):,} trainable parameters, steps {start_step} -> "
            f"{config.num_train_steps}, mesh {dict(setup.mesh.shape)}",
            flush=True,
        )
    try:
        return loop(config, program, batches, start_step, ckpts, run_record, setup, workdir)
    finally:
        batches.close()  # Stops the prefetching thread.
        ckpts.close()


def compile_step(config, graphdef, trainable, frozen, mesh) -> Program:
    """Places the state on the mesh and jits the logged step with its shardings and donation."""
    optimizer = optim.make_optimizer(config.optimizer, config.learning_rate, config.warmup_steps)
    schedule = optim.learning_rate_schedule(config.learning_rate, config.warmup_steps)
    # Codebook health (sharpt_jax.codebook_health) applies where the codebook trains: SharPT's source stage.
    restart_every = config.codebook_restart_every if "codebook" in trainable else 0
    restart_window = config.num_skills if restart_every else 0
    trainable_sharding = sharding.state_shardings(trainable, mesh)
    frozen_sharding = sharding.state_shardings(frozen, mesh)
    state_sharding = train_state_shardings(trainable, trainable_sharding, optimizer, mesh, restart_window)
    frozen = jax.device_put(frozen, frozen_sharding)
    trainable = jax.device_put(trainable, trainable_sharding)
    state = jax.jit(lambda t: init_train_state(t, optimizer, restart_window), out_shardings=state_sharding)(trainable)
    step = make_train_step(graphdef, optimizer, schedule, restart_every, config.num_train_steps, config.micro_batches)
    replicated = sharding.replicated(mesh)
    step_fn = jax.jit(
        functools.partial(logged_step, step_fn=step),
        in_shardings=(state_sharding, frozen_sharding, sharding.batch_sharding(mesh), replicated, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0, 4),
    )
    return Program(graphdef, state, frozen, step_fn, schedule, restart_every)


def resume(
    config, program: Program, ckpts, run_record: dict, setup: build.Setup, workdir: storage.Path
) -> tuple[int, dict]:
    """Restores the newest readable checkpoint into `program.state` (after checking it is this run's), or gives a
    fresh run its k-means codebook start; returns the step to continue from and the input stream's position.

    A checkpoint that cannot be read is named in one line on stderr and set aside (`Checkpoints.set_aside`), and
    the one before takes over."""
    for step in reversed(ckpts.resumable_steps()):
        try:
            metadata = ckpts.metadata(step)
            check_same_run(metadata, run_record, workdir)
            check_same_config(metadata["config"], config, workdir)
            state, _ = ckpts.restore(step, program.state)
            error = None
        except checkpoints.DamagedCheckpoint as err:
            error = err
        # Each host reads its own shards, so a damaged file may stop some hosts only: all move on together.
        if not multihost_utils.process_allgather(np.array(error is None)).all():
            moved = ckpts.set_aside(step)
            if error is not None:
                print(f"warning: {error}; moved to {moved}, resuming from the one before", file=sys.stderr, flush=True)
            continue
        program.state = state
        if "data" not in metadata:
            raise build.ConfigError(f"{workdir}: checkpoint {step} has no input position (an older version wrote it)")
        return step, metadata["data"]
    if ckpts.all_steps():  # Parameters only: the resume state of every kept checkpoint was damaged.
        raise build.ConfigError(
            f"{ckpts.directory}: no checkpoint keeps a readable resume state; move the folder away to start over"
        )
    if "codebook" in program.state["trainable"] and config.codebook_init == "kmeans":  # The first batches' k-means.
        first_batches = data.train_batches(
            setup.train_task,
            config.sequence_length.to_dict(),
            config.batch_size,
            setup.mesh,
            config.seed,
            index_dir=workdir / INDEX_DIR,
        )
        program.state["trainable"] = codebook_health.kmeans_start(
            program.state["trainable"], program.graphdef, program.frozen, (b for b, _ in first_batches), config.seed
        )
    return 0, data.start_position(setup.train_task)


def loop(config, program: Program, batches, start_step: int, ckpts, run_record, setup, workdir: storage.Path) -> dict:
    """Steps from `start_step` to the end, logging every config.log_every steps and saving every save_every.
    Nothing here waits for the devices except logging and saving."""
    is_main = jax.process_index() == 0
    num_skills = config.num_skills if methods.get(config.method).has_codebook else 0
    totals = logs.zero_totals(num_skills, program.restart_every)
    metrics_file = logs.MetricsFile(workdir / "metrics.jsonl", keep_until=start_step, enabled=is_main)
    writer = logs.tensorboard_writer(workdir)
    key, num_steps, last = dropout_key(config.seed), config.num_train_steps, {}
    window_start, window_step, run_start = time.perf_counter(), start_step, time.perf_counter()
    for step in range(start_step + 1, num_steps + 1):
        batch, position = next(batches)
        program.state, totals = program.step_fn(program.state, program.frozen, batch, key, totals)
        save_now = step % config.save_every == 0 or step == num_steps
        eval_now = bool(config.eval_every) and step % config.eval_every == 0
        if step % config.log_every and not save_now and not eval_now:
            continue
        # -- Log: one host sync per window. --
        now = time.perf_counter()
        last = logs.summarize(jax.device_get(totals), step - window_step, float(program.schedule(step - 1)))
        last.update(
            step=step,
            examples_per_sec=(step - window_step) * config.batch_size / (now - window_start),
            steps_per_sec=(step - window_step) / (now - window_start),
        )
        totals = logs.zero_totals(num_skills, program.restart_every)
        if last["nonfinite_steps"]:
            kept = ckpts.latest_step()
            kept = f"the last good checkpoint is step {kept} in {ckpts.directory}" if kept else "no checkpoint yet"
            raise TrainingDiverged(
                f"loss or gradient became NaN/Inf between steps {window_step} and {step}; {kept} (lower "
                "--config.learning_rate or try --config.optimizer=adafactor)"
            )
        if eval_now:
            model = nnx.merge(program.graphdef, program.state["trainable"], program.frozen)
            scores, _, _ = scoring.score_tasks(model, setup.eval_tasks, "validation", config, setup.mesh)
            last.update({f"eval/validation/{name}": value for name, value in scores.items()})
        metrics_file.write(last)
        if writer is not None:
            writer.write_scalars(step, {k: v for k, v in last.items() if k != "step"})
            writer.flush()
        if is_main:
            print(logs.progress_line(last, num_steps, (now - run_start) / (step - start_step)), flush=True)
        window_start, window_step = time.perf_counter(), step  # Evaluation time is not training throughput.
        if save_now:
            # The stream's position after this step's batch: a resume restarts the input there.
            metadata = {"step": step, "examples_seen": step * config.batch_size, "data": position}
            ckpts.save(step, program.state, {**metadata, **run_record, "config": config.to_dict()})
    if writer is not None:
        writer.close()
    return last


# What a resumed training may set differently from the config its checkpoint was saved with: how long it trains
# (the schedule does not depend on num_train_steps, so a longer run continues the same one), how often it logs,
# saves and scores, how it is scored (eval.*), where instance embeddings are cached and data sets are found
# (another machine's mounts; model and data files are checked by content in `check_same_run`), on which
# machines, and the fields of the programs that chain runs (the demo's and the skills experiments' groups). Any
# other change would alter the run midway (a learning rate, a prompt length, a loss weight), so it is refused.
RESUME_MAY_CHANGE = (
    "mode",
    "num_train_steps",
    "log_every",
    "save_every",
    "eval_every",
    "instance_embedding_cache",
    "data_dir",
    *errors.INVOCATION_FIELDS,
)
RESUME_MAY_CHANGE_GROUPS = ("eval.", "demo.", "skills.")


def check_same_config(saved: dict, config: ml_collections.ConfigDict, workdir: storage.Path) -> None:
    """A resumed training runs the config its checkpoint was saved with (`saved`), but for RESUME_MAY_CHANGE;
    ConfigError naming every other field that differs."""
    ours, theirs = errors.flat(config), errors.flat(saved)
    differing = [
        f"{field} (the run's: {theirs.get(field, 'unset')!r}, now: {ours.get(field, 'unset')!r})"
        for field in sorted(ours.keys() | theirs.keys())
        if field not in RESUME_MAY_CHANGE
        and not field.startswith(RESUME_MAY_CHANGE_GROUPS)
        and not (field in ours and field in theirs and errors.same(ours[field], theirs[field]))
    ]
    if differing:
        raise build.ConfigError(
            f"{workdir} holds a run trained with another config: {'; '.join(differing)}; resume with the run's "
            "config (only the number of steps, the log, save and eval cadence, config.eval.*, the embedding cache "
            "and data paths and the machines may change) or use a new --workdir"
        )


def check_same_run(saved: dict, current: dict, workdir: storage.Path) -> None:
    """A workdir resumes only the run it holds: same task, method, data order, data files, models and source."""
    old, new = saved.get("data_files") or {}, current.get("data_files") or {}  # {path: sha256}: files: tasks.
    if changed := [path for path in new if old.get(path) != new[path]]:
        raise build.ConfigError(
            f"{workdir}: the data file {changed[0]} changed since the run started (sha256 "
            f"{old.get(changed[0], 'none')[:12]}, now {new[changed[0]][:12]}); put the original back or use a new "
            "--workdir"
        )
    for key, value in current.items():
        if json.loads(json.dumps(saved.get(key))) != json.loads(json.dumps(value)):
            raise build.ConfigError(
                f"{workdir} holds checkpoints of another run ({key}: {saved.get(key)!r}, now {value!r}); "
                f"use a new --workdir or the original config"
            )
