"""The skills-world experiment (configs/skills.py): every method of the paper's tables on a world where the
skills are known, through the real trainer and evaluator.

    python run.py --config=configs/skills.py --workdir=DIR

Layout of DIR (every run is an ordinary run folder: checkpoints/, metrics.jsonl, eval/results.json, best.json):
  <method>/source/seed<s>/                   source stage of sharpt and no_latent on `sharpt_skills_sources`
  <method>/<target>_n<N>/lr<rate>/seed<s>/   one target run; `record.json` there once it is scored
  results.json, results.md, *.png            written by `sharpt_jax.experiments.skills_report` at the end
  xla_cache/                                 XLA's persistent compilation cache, shared by the runs

Protocol: the same steps, batch and checkpoints for every method; for each (method, target, size) seed 0 runs
every learning rate of the method's grid and the rate with the best validation score (of the best-validation
checkpoint) is the one the other seeds use. The reported `test` is the exact match of the best-validation
checkpoint. Nothing is chosen on test data. A killed experiment continues with the same command: finished runs
are read back from their record.json, an unfinished one resumes from its last checkpoint.
"""

import os
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from sharpt_jax import build, checkpoints, data, embedding_cache, storage
from sharpt_jax.experiments import skills_premise, skills_report, skills_runs
from sharpt_jax.models import methods
from tasks import skills_world

# Methods of the comparison -> (model method, stage, whether the target starts from a source run, config fields).
# The SharPT rows pin their codebook settings (sharpt_jax.codebook_health), so that each row means the same whatever
# the defaults of configs/common.py: "sharpt" and "no_source" are the paper's method (random start, no restarts).
METHODS = {
    "sharpt": ("sharpt", "target", True, methods.PAPER_CODEBOOK),
    "sharpt_restarts": ("sharpt", "target", True, dict(codebook_init="random", codebook_restart_every=100)),
    "sharpt_kmeans": ("sharpt", "target", True, dict(codebook_init="kmeans", codebook_restart_every=0)),
    "sharpt_kmeans_restarts": ("sharpt", "target", True, dict(codebook_init="kmeans", codebook_restart_every=100)),
    "no_latent": ("no_latent", "target", True, {}),
    "prompt_tuning": ("prompt_tuning", "target", False, {}),
    "model_tuning": ("model_tuning", "target", False, {}),
    "no_source": ("no_source", "target", False, methods.PAPER_CODEBOOK),  # Codebook and generator on the target alone.
}


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Runs (or continues) the whole experiment in `workdir`; returns the content of results.json."""
    if not storage.is_local(workdir):  # Its backbone, caches and hundreds of small runs are local folders.
        raise build.ConfigError(
            f"--workdir={workdir}: the skills experiment runs in a local folder (train, eval: gs://)"
        )
    workdir = Path(workdir)
    spec = config.skills
    if spec.get("variant") == "premise":
        return skills_premise.run(config, workdir)
    unknown = [m for m in spec.methods if m not in METHODS]
    if unknown:
        raise build.ConfigError(f"config.skills.methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    started = time.perf_counter()
    skills_runs.use_compilation_cache(workdir)

    # ---------------------------------------------------------------------------------------------
    # Source stage: one run per seed for each method that transfers.
    # ---------------------------------------------------------------------------------------------
    sources = {}
    for method in [m for m in spec.methods if METHODS[m][2]]:
        for seed in spec.seeds:
            source = run_config(config, method, "source", "skills_sources", seed)
            source.learning_rate, source.num_train_steps = spec.source_learning_rate, spec.source_steps
            source.save_every = spec.source_steps
            sources[method, seed] = workdir / method / "source" / f"seed{seed}"
            record = skills_runs.train_and_score(source, sources[method, seed], workdir)
            print(f"[skills] {method} source seed {seed}: validation {record['validation']:.1f}", flush=True)

    # ---------------------------------------------------------------------------------------------
    # Targets: the learning-rate grid on seed 0, then the other seeds at the chosen rate.
    # ---------------------------------------------------------------------------------------------
    runs = []
    for method in spec.methods:
        for target in spec.targets:
            for size in spec.sizes:
                first, *rest = spec.seeds
                grid = [
                    target_run(config, workdir, sources, method, target, size, rate, first)
                    for rate in spec.learning_rates[method]
                ]
                chosen = max(grid, key=lambda r: r["validation"])  # The first (largest) rate on ties.
                for record in grid:
                    record["selected"] = record is chosen
                more = [
                    target_run(config, workdir, sources, method, target, size, chosen["learning_rate"], seed)
                    for seed in rest
                ]
                runs += grid + [{**r, "selected": True} for r in more]

    # ---------------------------------------------------------------------------------------------
    # How the codebook relates to the true skills, then the tables and figures.
    # ---------------------------------------------------------------------------------------------
    codebooks = {}
    for method in [m for m in spec.methods if METHODS[m][0] == "sharpt" and METHODS[m][2]]:
        for seed in spec.seeds:
            source = run_config(config, method, "source", "skills_sources", seed)
            codebooks.setdefault(method, {})[str(seed)] = codebook_usage(source, sources[method, seed])
    results = {
        "runs": runs,
        "codebook": codebooks,
        "ceiling": storage.read_json(Path(config.t5) / "ceiling.json"),
        "protocol": (
            "test exact match of the best-validation checkpoint; learning rate per (method, target, size) "
            "chosen on seed 0's validation score; the world's fixed validation and test sets"
        ),
        "config": config.to_dict(),
        "seconds": time.perf_counter() - started,
    }
    skills_report.write(results, workdir)
    return results


def run_config(config, method: str, stage: str, task: str, seed: int) -> ml_collections.ConfigDict:
    """The run config of one of `METHODS` (its model method and fields) in `stage` on `task`."""
    return build.run_config(config, method=METHODS[method][0], stage=stage, task=task, seed=seed, **METHODS[method][3])


def target_run(config, workdir: Path, sources: dict, method: str, target: str, size: int, rate: float, seed: int):
    """One target run of `method` (trained and scored unless its record.json exists); returns its record."""
    _, stage, transfers, _ = METHODS[method]
    run_dir = workdir / method / f"{target}_n{size}" / f"lr{rate:g}" / f"seed{seed}"
    cfg = run_config(config, method, stage, f"skills_{target}_n{size}", seed)
    cfg.learning_rate, cfg.num_train_steps = rate, config.skills.target_steps
    cfg.save_every = config.skills.target_save_every
    if transfers:
        cfg.source_checkpoint = str(sources[method, seed])
    record = skills_runs.train_and_score(cfg, run_dir, workdir)
    record.update(method=method, target=target, task=target, num_train=size, learning_rate=rate, seed=seed)
    print(
        f"[skills] {method:13s} {target:15s} n={size:<3d} lr={rate:<6g} seed {seed}: "
        f"validation {record['validation']:5.1f} test {record['test']:5.1f} (step {record['best_step']}, "
        f"{record['seconds']:.0f}s)",
        flush=True,
    )
    return record


# ---------------------------------------------------------------------------------------------
# Codebook usage: which skill vector every test instance of every task picks.
# ---------------------------------------------------------------------------------------------


def codebook_usage(config, source_dir: Path) -> dict:
    """The source run's codebook choices on the test split of every skills task (sources and targets).

    Returns {"step", "tasks": {task: {"true_skills": [...], "counts": [[K] counts per true skill]}},
    "geometry": {...}}: for each task and each true skill of its instances, how many chose each of the K skill
    vectors (the codebook is frozen in the target stage, so these are also the choices the SharPT target runs
    see), and where the source tasks' instance embeddings e0 lie relative to the skill vectors (mean norms and
    distances), which explains a collapse. Kept in the source run's eval/codebook_usage.json.
    """
    done = source_dir / "eval" / "codebook_usage.json"  # Written once: a continued experiment reads it back.
    if done.exists():
        return storage.read_json(done)
    setup = build.prepare(config)
    mesh = setup.mesh
    ckpts = checkpoints.Checkpoints(source_dir)
    try:
        step = ckpts.latest_step()
        model = build.RunModel(config, setup, ckpts).at(step)
    finally:
        ckpts.close()
    graphdef, state = nnx.split(model)
    out, source_embeddings = {}, []
    for task in skills_world.TASKS:
        chosen, truth = [], []
        for batch, num_real, examples in data.eval_batches(
            skills_world.task_name(task), "test", config.sequence_length.to_dict(), config.eval.batch_size, mesh
        ):
            e0, indices = embedding_cache.instance_embeddings(graphdef, state, batch)
            e0, indices = multihost_utils.process_allgather((e0, indices), tiled=True)
            chosen.extend(np.asarray(indices)[:num_real].tolist())
            truth.extend(ex["skill"].decode() for ex in examples)
            if task in {t.name for t in skills_world.SOURCES}:
                source_embeddings.append(np.asarray(e0)[:num_real])
        true_skills = sorted(set(truth))
        counts = np.zeros((len(true_skills), config.num_skills), np.int64)
        np.add.at(counts, ([true_skills.index(s) for s in truth], chosen), 1)
        out[task] = {"true_skills": true_skills, "counts": counts.tolist()}
    usage = {"step": step, "tasks": out, "geometry": _geometry(np.concatenate(source_embeddings), model)}
    if jax.process_index() == 0:
        storage.write_json(done, usage)
    return usage


def _geometry(e0: np.ndarray, model) -> dict:
    """Mean distances between the source instances' embeddings e0 [N, m] and the skill vectors E [K, m]."""
    table = np.asarray(jax.device_get(model.codebook.embeddings[...]), np.float64)
    distances = np.linalg.norm(e0[:, None, :] - table[None, :, :], axis=-1)  # [N, K]
    used = np.zeros(len(table), bool)
    used[distances.argmin(1)] = True
    out = {
        "embedding_norm": float(np.linalg.norm(e0, axis=1).mean()),
        "embedding_distance_to_centroid": float(np.linalg.norm(e0 - e0.mean(0), axis=1).mean()),
        "distance_to_chosen_skill": float(distances.min(1).mean()),
        "used_skill_norm": float(np.linalg.norm(table[used], axis=1).mean()),
    }
    if not used.all():
        out["unused_skill_norm"] = float(np.linalg.norm(table[~used], axis=1).mean())
        out["distance_to_nearest_unused_skill"] = float(distances[:, ~used].min(1).mean())
    return out
