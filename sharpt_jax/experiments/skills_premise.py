"""The premise test (configs/skills.py:premise): does SharPT transfer where its premise holds?

    python run.py --config=configs/skills.py:premise --workdir=DIR
    python run.py --config=configs/skills.py:premise_quick --workdir=DIR

Targets are specs (tasks/skills_world.py, SPEC_GRAMMAR) grouped in pre-registered strata (A: a source's own phrase
on held-out words; B: one paraphrase per source skill; C: the original targets), plus `skills.targets` (stratum
"extra") and source replays (a source's own task as a target). Every run is an ordinary run through the real
trainer and evaluator. Layout of DIR:

  source/seed<s>/                          SharPT's source stage (k-means start) per seed
  source_<start>/seed0/                    source-stage-only runs of other codebook starts (the source table)
  embeddings/                              cached instance embeddings (unless config.instance_embedding_cache)
  <target>/step0/seed<s>/                  routing.json and record.json: the routing and step-0 scores
  <target>/oracle/seed<s>.npz              the oracle-routing file (config.oracle_routing) of the target
  <target>/<method>/n<N>/lr<rate>/seed<s>/ one target run; record.json once scored
  claim_setup/, <target>/claim_n<N>/       locks: the process running the setup, or that (target, size) unit
  results.json, results.md, gain_vs_routing.png   (sharpt_jax.experiments.skills_report.write_premise)

Routing, measured before any target step with the source run's frozen codebook: the share of a target's test
instances whose chosen skill vector is the one its true skill's source instances (the source task's test split)
choose most. Step 0: the transferring methods' scores before any target step (num_train 0 in the records).
Protocol per (target, method, size): every rate of the method's grid on the first `selection_seeds` seeds, the
rate of best mean validation (first on ties) for the remaining seeds; sharpt_oracle runs at SharPT's chosen rate.
Killed at any moment, the same command continues: finished runs are read back from their record.json. Started
again while one runs (another terminal, or `&`), the same command is a second worker: it waits for the setup (the
sources, routing, step 0), then takes the (target, size) units that no live process holds.
"""

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from sharpt_jax import build, data, embedding_cache, scoring, sharding, source_stage, storage, workdir_lock
from sharpt_jax.experiments import skills_report, skills_runs
from tasks import registry, skills_world

# Method of the premise -> (model method, stage, whether it starts from SharPT's source run).
METHODS = {
    "sharpt": ("sharpt", "target", True),
    "sharpt_oracle": ("sharpt", "target", True),  # SharPT with oracle routing (diagnostic).
    "prompt_tuning": ("prompt_tuning", "target", False),
    "no_source": ("no_source", "target", False),  # Codebook and generator learned on the target alone.
    "no_latent_no_source": ("no_latent", "source", False),  # The generator reads e0, learned on the target alone.
}
# Source-stage-only codebook starts (beside sharpt's, the config default k-means) -> their config fields.
# sharpt_random_normalized: the random start on L2-normalised instance embeddings.
CODEBOOK_STARTS = {
    "sharpt_random": dict(codebook_init="random"),
    "sharpt_random_normalized": dict(codebook_init="random", encoder_pooling="mean_normalized"),
}


@dataclasses.dataclass(frozen=True)
class PremiseTarget:
    """One target of the test: its stratum, spec, task, training sizes, seeds and methods."""

    stratum: str
    spec: str
    task: skills_world.SkillTask
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]


def targets(config: ml_collections.ConfigDict) -> list[PremiseTarget]:
    """The strata's targets, the extra ones of `skills.targets` and the source replays, registered as seqio tasks
    at their sizes; ConfigError for a bad spec or an instance that the input length would cut."""
    spec = config.skills
    listed = [(stratum, s) for stratum, specs in spec.strata.items() for s in specs]
    try:
        listed += [("extra", s) for s in skills_world.split_specs(spec.targets)]
    except skills_world.SpecError as err:
        raise build.ConfigError(f"config.skills.targets: {err}") from err
    listed += [("replay", name) for name in spec.replay]
    out = []
    for stratum, text in listed:
        try:
            target = skills_world.register_spec(text)
        except skills_world.SpecError as err:
            raise build.ConfigError(str(err)) from err
        longest = max(len(b.phrase.split()) for b in target.task.behaviours)
        if longest + skills_world.MAX_WORDS + 1 > config.sequence_length.inputs:
            raise build.ConfigError(
                f"target spec {text!r}: a phrase of {longest} words + {skills_world.MAX_WORDS} words + EOS does not "
                f"fit config.sequence_length.inputs={config.sequence_length.inputs}"
            )
        sizes = (target.num_train,) if target.num_train else tuple(spec.sizes)
        methods = tuple(spec.methods_b) if stratum == "B" else tuple(spec.methods)
        if stratum == "replay":  # A bug check at step 0 only: nothing to train.
            methods = ()
        # Oracle routing needs a source skill for every behaviour (swap has none).
        if not set(target.task.skills) <= set(skills_world.SOURCE_SKILLS):
            methods = tuple(m for m in methods if m != "sharpt_oracle")
        seeds = tuple(spec.seeds_b) if stratum == "B" else tuple(spec.seeds)
        for size in sizes:
            skills_world.register_size(target.task, size)
        out.append(PremiseTarget(stratum, text, target.task, sizes, seeds, methods))
    return out


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Runs (or continues) the premise test in `workdir`; returns the content of results.json."""
    started = time.perf_counter()
    skills_runs.use_compilation_cache(workdir)
    config = config.copy_and_resolve_references()
    if not config.instance_embedding_cache:
        config.instance_embedding_cache = str(workdir / "embeddings")
    unknown = [m for m in (*config.skills.methods, *config.skills.methods_b) if m not in METHODS]
    unknown += [s for s in config.skills.codebook_starts if s not in CODEBOOK_STARTS]
    if unknown:
        raise build.ConfigError(
            f"config.skills: unknown methods or codebook starts {unknown}; methods are {', '.join(METHODS)}, "
            f"codebook starts {', '.join(CODEBOOK_STARTS)}"
        )
    planned = targets(config)
    seeds = sorted({s for t in planned for s in t.seeds})
    # The sources, then routing and step 0 of every target (no training, minutes): results.json then holds every
    # stratum's routing, step-0 scores and replays while the target runs are still to come. One process at a time
    # (a second one waits, then reads it all back).
    while (setup := claim(workdir / "claim_setup")) is None:
        time.sleep(10)
    with setup:
        sources = {seed: source_run(config, workdir, "sharpt", seed) for seed in seeds}
        starts = [source_run(config, workdir, start, 0) for start in config.skills.codebook_starts]
        routing, step0_runs = [], []
        for target in planned:
            for seed in target.seeds:
                step0 = step0_record(config, workdir, target, seed, sources[seed])
                routing.append(step0)
                step0_runs += [
                    {**base_record(target, method, seed, 0, step0), "test": s["test"], "validation": s["validation"]}
                    for method, s in step0["step0"].items()
                ]

    # Size by size, every target at the smallest size first (where the predictions are made). A (target, size)
    # unit is claimed by the process that runs it (a lock in DIR/<target>/claim_n<size>), so the same command
    # started again beside a running one takes the units nobody holds; units held by a live process are waited
    # for at the end. results.json is rewritten after each unit from every record on disk, whoever trained it.
    units = [(size, t) for size in sorted({n for t in planned for n in t.sizes}) for t in planned if size in t.sizes]

    def write(complete: bool) -> dict:
        trained, units_complete = [], []
        for size, t in units:
            records, unit_complete = target_runs(config, workdir, t, size, sources, False)
            trained += records
            if unit_complete and t.methods:  # Replays have no target runs: not units of the plan.
                units_complete.append(f"{t.task.name} n={size}")
        results = {
            "complete": complete,  # False while target runs are to come: results.json is rewritten per unit.
            "units_complete": units_complete,  # The (target, size) units with every run scored.
            "targets": [target_summary(t) for t in planned],
            "runs": step0_runs + trained,
            "routing": routing,
            "sources": [*sources.values(), *starts],
            "predictions": [dict(p) for p in config.skills.predictions],
            "ceiling": storage.read_json(Path(config.t5) / "ceiling.json"),
            "protocol": (
                "test exact match of the best-validation checkpoint; rate per (target, method, size) by the mean "
                f"validation of the first {config.skills.selection_seeds} seed(s); num_train 0 = before any target step"
            ),
            "config": config.to_dict(),
            "seconds": time.perf_counter() - started,
        }
        skills_report.write_premise(results, workdir)
        return results

    write(complete=False)
    while units_left := [(size, t) for size, t in units if not target_runs(config, workdir, t, size, {}, False)[1]]:
        claimed = 0
        for size, target in units_left:
            if (hold := claim(workdir / target.task.name / f"claim_n{size}")) is None:
                continue  # Another process runs this unit.
            with hold:
                target_runs(config, workdir, target, size, sources)
            claimed += 1
            write(complete=False)
        if not claimed:
            time.sleep(10)  # Only units that other processes hold are left: wait for them.
    return write(complete=True)


def claim(folder: Path) -> contextlib.ExitStack | None:
    """This process's hold on `folder` (sharpt_jax.workdir_lock; released when the stack closes), or None while
    another live process holds it."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(workdir_lock.hold(folder))
    except workdir_lock.WorkdirInUse:
        return None
    return stack


def target_summary(t: PremiseTarget) -> dict:
    return dict(stratum=t.stratum, spec=t.spec, target=t.task.name, skills=t.task.skills, sizes=t.sizes, seeds=t.seeds)


def task_name(target: PremiseTarget, size: int) -> str:
    """config.task of a run of `target` at `size`: "skills:SPEC@N", from which any process (a resumed run, the eval
    mode) registers the task again."""
    spec = target.spec.strip().rpartition("@")[0] if "@" in target.spec else target.spec.strip()
    return f"{skills_world.SCHEME}{spec}@{size}"


def run_config(config, method: str, task: str, seed: int, **fields) -> ml_collections.ConfigDict:
    model_method, stage, _ = METHODS[method]
    return build.run_config(config, method=model_method, stage=stage, task=task, seed=seed, **fields)


# ---------------------------------------------------------------------------------------------
# Source stage: SharPT's source run per seed, and the codebook-start runs.
# ---------------------------------------------------------------------------------------------


def source_run(config, workdir: Path, start: str, seed: int) -> dict:
    """SharPT's source stage with the codebook start `start` ("sharpt": the config's) on seed `seed`: trained,
    scored (one checkpoint, the last) and summarised: per-source validation along the way and test at the end,
    and the skill vector each source task's test instances choose most."""
    fields = CODEBOOK_STARTS[start] if start != "sharpt" else {}
    cfg = build.run_config(config, method="sharpt", stage="source", task="skills_sources", seed=seed, **fields)
    spec = config.skills
    cfg.update(
        learning_rate=spec.source_learning_rate,
        num_train_steps=spec.source_steps,
        save_every=spec.source_steps,
        eval_every=spec.source_eval_every,
    )
    if not spec.source_embedding_cache:
        cfg.instance_embedding_cache = ""
    run_dir = workdir / ("source" if start == "sharpt" else f"source_{start}") / f"seed{seed}"
    record = skills_runs.train_and_score(cfg, run_dir, workdir)
    curve = {}  # step -> {source: validation exact match}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        scores = {k.split("/")[-2].removeprefix("skills_"): v for k, v in row.items() if k.endswith("/exact_match")}
        if scores:
            curve[row["step"]] = scores
    skills_json = storage.read_json(run_dir / "eval" / "skills.json")
    counts = skills_json[str(record["best_step"])]["test"]
    test = {t.name: record["test_metrics"][f"skills_{t.name}/exact_match"] for t in skills_world.SOURCES}
    return {
        "start": start,
        "seed": seed,
        "run": record["run"],
        "validation_curve": curve,
        "test": test,
        "counts": {t.name: counts[f"skills_{t.name}"] for t in skills_world.SOURCES},
        "majority": source_majority(counts),
    }


def source_majority(counts: dict[str, list[int]]) -> dict[str, int]:
    """Source skill -> the skill vector its source task's instances choose most, from a source run's skill counts
    ({"skills_<source>": [K] counts}, eval/skills.json at one step and split)."""
    return {t.name: int(np.argmax(counts[f"skills_{t.name}"])) for t in skills_world.SOURCES}


# ---------------------------------------------------------------------------------------------
# Before any target step: routing, the offline check, the step-0 scores and the oracle file.
# ---------------------------------------------------------------------------------------------


def instances(model, task: str, split: str, config, mesh) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """e0 [N, m] by the model's encoder, the codebook's choice [N] and the true skill of every instance of a split."""
    graphdef, state = nnx.split(model)
    e0s, chosen, truth = [], [], []
    for batch, num_real, examples in data.eval_batches(
        task, split, config.sequence_length.to_dict(), config.eval.batch_size, mesh
    ):
        e0, skill = embedding_cache.instance_embeddings(graphdef, state, batch)
        e0, skill = multihost_utils.process_allgather((e0, skill), tiled=True)
        e0s.append(np.asarray(e0)[:num_real])
        chosen.append(np.asarray(skill)[:num_real])
        truth += [scoring.text(ex["skill"]) for ex in examples]
    return np.concatenate(e0s), np.concatenate(chosen), truth


def nearest(e0: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Offline nearest skill vector in float64: e0 [N, m], table [K, m] -> [N] (ties: lowest index)."""
    e0, table = e0.astype(np.float64), table.astype(np.float64)
    return np.argmin(((e0[:, None, :] - table[None, :, :]) ** 2).sum(-1), axis=1)


def routing_share(chosen, truth: list[str], majority: dict[str, int]) -> float:
    """Share of the instances whose chosen vector is the one their true skill's source instances choose most
    (over the instances whose skill has a source; NaN where none has)."""
    hits = [int(c) == majority[t] for c, t in zip(chosen, truth, strict=True) if t in majority]
    return float(np.mean(hits)) if hits else float("nan")


def step0_record(config, workdir: Path, target: PremiseTarget, seed: int, source: dict) -> dict:
    """Routing and step-0 scores of `target` on `seed` (computed once, then read back from record.json)."""
    folder = workdir / target.task.name / "step0" / f"seed{seed}"
    oracle_file = workdir / target.task.name / "oracle" / f"seed{seed}.npz"
    # Computed again (the same numbers) where the oracle file is missing: records travel without it (megabytes).
    if (folder / "record.json").exists() and ("sharpt_oracle" not in target.methods or oracle_file.exists()):
        return storage.read_json(folder / "record.json")
    task = skills_world.register_size(target.task, target.sizes[0])
    cfg = run_config(
        config, "sharpt", task_name(target, target.sizes[0]), seed, source_checkpoint=str(workdir / source["run"])
    )
    model, setup = transferred(cfg)
    e0, chosen, truth = instances(model, registry.PREFIX + task, "test", cfg, setup.mesh)
    table = np.asarray(jax.device_get(model.codebook.embeddings[...]))
    step0 = {"sharpt": step0_scores(model, setup, cfg)}
    evaluator = np.asarray(step0["sharpt"].pop("skills"))
    routing = {
        "stratum": target.stratum,
        "target": target.task.name,
        "spec": target.spec,
        "seed": seed,
        "routing": routing_share(evaluator, truth, source["majority"]),
        "chosen": np.bincount(evaluator, minlength=cfg.num_skills).tolist(),
        # The evaluator's choices against an offline nearest-vector computation with the saved codebook.
        "offline_mismatches": int(np.sum(nearest(e0, table) != evaluator)),
        "encoder_mismatches": int(np.sum(chosen != evaluator)),
    }
    if "sharpt_oracle" in target.methods:
        largest = registry.PREFIX + skills_world.register_size(target.task, max(target.sizes))
        write_routing(model, cfg, setup, largest, source["majority"], oracle_file)
        oracle_cfg = cfg.copy_and_resolve_references()
        oracle_cfg.oracle_routing = str(oracle_file)
        model.oracle = build.oracle_routing(oracle_cfg, model)
        model = on_mesh(model, setup.mesh)
        step0["sharpt_oracle"] = step0_scores(model, setup, oracle_cfg)
        routing["oracle_routing"] = routing_share(step0["sharpt_oracle"].pop("skills"), truth, source["majority"])
    record = {**routing, "step0": step0}
    if jax.process_index() == 0:
        storage.write_json(folder / "routing.json", routing)
        storage.write_json(folder / "record.json", record)
    return record


def transferred(cfg) -> tuple:
    """(model, build.Setup) of the target run `cfg` before any target step: built, with what its source run
    trained (cfg.source_checkpoint) restored, every array on the mesh."""
    setup = build.prepare(cfg)
    model, identity = build.build_model(cfg, setup.files, setup.mesh)
    source_stage.restore_source(model, cfg, identity)
    return on_mesh(model, setup.mesh), setup


def on_mesh(model, mesh):
    """The model with every array placed by its sharding on `mesh` (restored and added parts sit on one device)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, sharding.state_shardings(state, mesh)))


def step0_scores(model, setup, cfg, metric: str = "exact_match") -> dict:
    """Validation and test `metric` of the model as it is (no target step; one task), and the test instances'
    skills [N] (the codebook index each chose)."""
    out = {}
    for split in ("validation", "test"):
        metrics, _, scored = scoring.score_tasks(model, setup.eval_tasks, split, cfg, setup.mesh)
        out[split] = metrics[metric]
        if split == "test":
            out["skills"] = np.asarray(next(iter(scored.values())).skills).tolist()
    return out


def write_routing(model, cfg, setup, task: str, vector_of: dict[str, int], path: Path) -> None:
    """A routing file for config.oracle_routing: the e0 of every instance of the seqio task `task` (train,
    validation, test) as keys, and as skills the vector `vector_of` gives each instance's true skill (the oracle:
    the vector that skill's source instances choose most)."""
    keys, skills = [], []
    for split in ("train", "validation", "test"):
        e0, _, truth = instances(model, task, split, cfg, setup.mesh)
        keys.append(e0)
        skills += [vector_of[t] for t in truth]
    if jax.process_index() == 0:
        with storage.replacing(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.concatenate(keys), skills=np.asarray(skills, np.int32))
    multihost_utils.sync_global_devices("routing file written")


# ---------------------------------------------------------------------------------------------
# Target runs: the rate grid on the selection seeds, then the other seeds at the chosen rate.
# ---------------------------------------------------------------------------------------------


def base_record(target: PremiseTarget, method: str, seed: int, size: int, step0: dict) -> dict:
    """The fields every record of (target, method, seed, size) carries."""
    return {
        "stratum": target.stratum,
        "target": target.task.name,
        "task": target.task.name,
        "spec": target.spec,
        "method": method,
        "seed": seed,
        "num_train": size,
        "routing": step0["routing"],
        "step0_test": step0["step0"].get(method, {}).get("test"),
        "selected": True,
    }


def target_runs(
    config, workdir: Path, target: PremiseTarget, size: int, sources: dict, train=True
) -> tuple[list[dict], bool]:
    """Every run of `target` at `size` (each method's grid on the selection seeds, then the other seeds) and
    whether all have their record. With train=False, only the records already on disk (the chosen rate's runs
    once its grid is complete)."""
    spec = config.skills
    selection, rest = target.seeds[: spec.selection_seeds], target.seeds[spec.selection_seeds :]
    out, chosen, complete = [], {}, True

    def runs(method, rate, seeds):
        nonlocal complete
        records = [one_run(config, workdir, target, method, size, rate, seed, sources, train) for seed in seeds]
        complete &= None not in records
        return [r for r in records if r is not None]

    for method in [m for m in target.methods if m != "sharpt_oracle"]:
        grid = {rate: runs(method, rate, selection) for rate in spec.learning_rates[method]}
        if any(len(records) < len(selection) for records in grid.values()):  # Read back before the grid is done.
            out += [{**r, "selected": False} for records in grid.values() for r in records]
            continue
        chosen[method] = max(grid, key=lambda rate: np.mean([r["validation"] for r in grid[rate]]))
        for rate, records in grid.items():
            out += [{**r, "selected": rate == chosen[method]} for r in records]
        out += runs(method, chosen[method], rest)
    if "sharpt_oracle" in target.methods:  # A diagnostic at SharPT's rate, every seed (once SharPT's is chosen).
        complete &= "sharpt" in chosen
        out += runs("sharpt_oracle", chosen["sharpt"], target.seeds) if "sharpt" in chosen else []
    return out, complete


def one_run(
    config, workdir, target: PremiseTarget, method: str, size: int, rate: float, seed: int, sources, train=True
):
    """One target run, trained and scored unless its record.json exists; returns its record (None where it has
    none and train is False)."""
    run_dir = workdir / target.task.name / method / f"n{size}" / f"lr{rate:g}" / f"seed{seed}"
    if train:
        steps = config.skills.target_steps
        cfg = run_config(config, method, task_name(target, size), seed, learning_rate=rate, num_train_steps=steps)
        cfg.save_every = config.skills.target_save_every
        if METHODS[method][2]:
            cfg.source_checkpoint = str(workdir / sources[seed]["run"])
        if method == "sharpt_oracle":
            cfg.oracle_routing = str(workdir / target.task.name / "oracle" / f"seed{seed}.npz")
        record = skills_runs.train_and_score(cfg, run_dir, workdir)
    elif (run_dir / "record.json").exists():
        record = storage.read_json(run_dir / "record.json")
    else:
        return None
    step0 = storage.read_json(workdir / target.task.name / "step0" / f"seed{seed}" / "record.json")
    record = {**record, **base_record(target, method, seed, size, step0), "learning_rate": rate}
    record["last_step"] = config.skills.target_steps
    if train:
        print(
            f"[premise] {target.stratum} {target.task.name:12.12s} {method:19s} n={size:<3d} lr={rate:<6g} "
            f"seed {seed}: validation {record['validation']:5.1f} test {record['test']:5.1f} "
            f"(step {record['best_step']})",
            flush=True,
        )
    return record
