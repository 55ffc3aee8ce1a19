"""Three diagnostics of the premise test's target runs (configs/skills.py:premise), read from its DIR.

    python scripts/premise_diagnostics.py extend --workdir DIR --steps 900 [--size 16] [--strata A]
        [--methods prompt_tuning,no_source]
    python scripts/premise_diagnostics.py untrained --workdir DIR [--size 16] [--targets A1,A2]
        [--methods no_source]
    python scripts/premise_diagnostics.py route --workdir DIR --targets swap --to reverse,copy,map [--size 16]

extend: is the target budget long enough? The test trains every run for `skills.target_steps` and reports its
best-validation checkpoint; a run whose best checkpoint is its last may still have been improving. This copies
each such chosen-rate run (of --methods at --size in --strata) to DIR/budget/<run>, resumes it to --steps (the
schedule is constant after warm-up, so this is the run a budget of --steps trains), scores the new checkpoints,
and writes DIR/budget/results.json: per run, best step, validation and test at both budgets.

untrained: what does a method score before it learns anything? For each chosen-rate run of --methods on
--targets at --size, the same run with learning rate 0 for one step (its start: initialisation, the k-means
codebook start, a source's parameters where it has one) is trained and scored in DIR/untrained/<run>; written
to DIR/untrained/results.json beside the trained run's test score.

route: does a target gain from its routing or from any trained source generator? For each chosen-rate SharPT run
of --targets at --size and each source skill S of --to, the same run with every instance sent to the vector
S's source instances choose most (config.oracle_routing, a file of the instances' e0 and that vector) in
DIR/routed/<S>/<run>; DIR/routed/results.json holds each run's test beside SharPT's and "no source training"'s on
its seed, and per S the paired difference to each (mean over seeds, 95% interval).

All are ordinary runs of the trainer and evaluator; killed, the same command continues.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("extend", "untrained", "route"))
    parser.add_argument("--workdir", type=Path, required=True, help="the premise test's DIR")
    parser.add_argument("--steps", type=int, default=0, help="extend: the longer budget")
    parser.add_argument("--size", type=int, default=16, help="the runs' training size")
    parser.add_argument("--strata", default="A", help="extend: strata of the runs")
    parser.add_argument("--targets", default="", help="untrained, route: targets of the runs")
    parser.add_argument("--methods", default="prompt_tuning,no_source", help="extend, untrained: their methods")
    parser.add_argument("--to", default="", help="route: the source skills whose vectors the runs use")
    args = parser.parse_args(argv)
    results_file = args.workdir / "results.json"
    if not results_file.is_file():
        parser.error(f"{results_file} does not exist: run the premise test in {args.workdir} first")
    if args.mode == "extend" and args.steps <= 0:
        parser.error("extend needs --steps, the longer budget")
    if args.mode in ("untrained", "route") and not args.targets:
        parser.error(f"{args.mode} needs --targets")
    if args.mode == "route" and not args.to:
        parser.error("route needs --to, the source skills to send every instance to")

    from sharpt_jax.experiments import skills_runs
    from tasks import skills_world

    skills_runs.use_compilation_cache(args.workdir)
    results = json.loads(results_file.read_text())
    unknown = [s for s in args.to.split(",") if s and s not in skills_world.SOURCE_SKILLS]
    if unknown:
        parser.error(f"--to {','.join(unknown)}: not source skills ({', '.join(skills_world.SOURCE_SKILLS)})")
    methods = ["sharpt"] if args.mode == "route" else args.methods.split(",")
    runs = [r for r in results["runs"] if r["selected"] and r["num_train"] == args.size and r["method"] in methods]
    if args.mode == "extend":
        picked = [r for r in runs if r["stratum"] in args.strata.split(",") and r.get("best_step") == r["last_step"]]
    else:
        picked = [r for r in runs if r["target"] in args.targets.split(",")]
    if not picked:
        parser.error(f"no chosen-rate runs of {','.join(methods)} at size {args.size} match; is the test that far?")
    if args.mode == "extend":
        summary = {"steps": args.steps, "runs": [extend(args.workdir, r, args.steps) for r in picked]}
    elif args.mode == "untrained":
        summary = {"runs": [untrained(args.workdir, r) for r in picked]}
    else:
        routed = [route(args.workdir, results, r, skill) for skill in args.to.split(",") for r in picked]
        summary = routed_summary(results, routed)
    folder = {"extend": "budget", "untrained": "untrained", "route": "routed"}[args.mode]
    (args.workdir / folder / "results.json").write_text(json.dumps(summary, indent=1) + "\n")


def scored_copy(workdir: Path, record: dict, folder: str, copy: bool, **fields) -> dict:
    """The run of `record` in workdir/folder/<run> with `fields` changed in its config, trained (resumed from its
    copied checkpoints when `copy`) and scored: {best_step, validation, test} (written once, then read back)."""
    import ml_collections

    from sharpt_jax import evaluate, storage, train
    from sharpt_jax.experiments import skills_runs

    source, target = workdir / record["run"], workdir / folder / record["run"]
    done = target / "scores.json"
    if not done.exists():
        if copy and not (target / "checkpoints").exists():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("record.json", "lock*"))
        config = ml_collections.ConfigDict(json.loads((source / "config.json").read_text()))
        config.update(fields)
        train.train(config, target)
        best = evaluate.evaluate_checkpoints(config, target)
        test = skills_runs.mean_metric(best["test"] or {}, "exact_match")
        storage.write_json(done, {"best_step": best["step"], "validation": best["validation"]["score"], "test": test})
    return storage.read_json(done)


def extend(workdir: Path, r: dict, steps: int) -> dict:
    longer = scored_copy(workdir, r, "budget", True, num_train_steps=steps)
    before, after = f"{r['test']:.1f} (step {r['best_step']})", f"{longer['test']:.1f} (step {longer['best_step']})"
    print(f"{r['run']}: test {before} -> {after} of {steps} steps", flush=True)
    row = {k: r[k] for k in ("target", "method", "seed", "learning_rate", "run", "best_step", "validation", "test")}
    return {**row, "budget": r["last_step"], **{f"{k}_at_{steps}": v for k, v in longer.items()}}


def untrained(workdir: Path, r: dict) -> dict:
    start = scored_copy(workdir, r, "untrained", False, learning_rate=0.0, num_train_steps=1, save_every=1)
    print(f"{r['run']}: untrained test {start['test']:.1f}, trained {r['test']:.1f}", flush=True)
    return {**{k: r[k] for k in ("target", "method", "seed", "run", "test")}, "untrained_test": start["test"]}


def route(workdir: Path, results: dict, r: dict, skill: str) -> dict:
    """The SharPT run of `r` again with every instance sent to the vector that `skill`'s source instances choose
    most on its seed (that seed's source run); its scores beside SharPT's."""
    import ml_collections

    from sharpt_jax import storage
    from sharpt_jax.experiments import skills_premise
    from tasks import registry, skills_world

    folder = f"routed/{skill}"
    routing_file = workdir / folder / r["target"] / f"n{r['num_train']}" / f"seed{r['seed']}.npz"
    if not routing_file.exists():
        config = ml_collections.ConfigDict(storage.read_json(workdir / r["run"] / "config.json"))
        majority = next(s["majority"] for s in results["sources"] if s["start"] == "sharpt" and s["seed"] == r["seed"])
        model, setup = skills_premise.transferred(config)
        task = registry.PREFIX + skills_world.resolve(config.task)
        vector_of = dict.fromkeys(skills_world.base_task(task).skills, majority[skill])
        skills_premise.write_routing(model, config, setup, task, vector_of, routing_file)
    scores = scored_copy(workdir, r, folder, False, oracle_routing=str(routing_file))
    print(f"{r['run']} routed to {skill}: test {scores['test']:.1f}, SharPT {r['test']:.1f}", flush=True)
    row = {k: r[k] for k in ("target", "num_train", "seed", "run", "learning_rate")}
    return {**row, "to": skill, **scores, "sharpt": r["test"]}


def routed_summary(results: dict, out: list[dict]) -> dict:
    """The routed runs and, per (target, skill), their paired differences to SharPT and to the other methods."""
    from sharpt_jax.experiments import skills_stats

    cells = skills_stats.cells(results["runs"])
    rows = []
    for target, skill, size in dict.fromkeys((o["target"], o["to"], o["num_train"]) for o in out):
        routed = {o["seed"]: o["test"] for o in out if (o["target"], o["to"]) == (target, skill)}
        row = {"target": target, "to": skill, "num_train": size, "test": skills_stats.mean_test(routed)}
        for method in ("sharpt", "no_source", "no_latent_no_source", "prompt_tuning"):
            if (target, method, size) in cells:
                row[f"minus_{method}"] = skills_stats.paired(routed, cells[(target, method, size)])
        rows.append(row)
    return {"runs": out, "paired": rows}


if __name__ == "__main__":
    main()
