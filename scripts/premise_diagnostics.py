"""Two diagnostics of the premise test's target runs (configs/skills.py:premise), read from its DIR.

    python scripts/premise_diagnostics.py extend --workdir DIR --steps 900 [--size 16] [--strata A]
        [--methods prompt_tuning,no_source]
    python scripts/premise_diagnostics.py untrained --workdir DIR [--size 16] [--targets A1,A2]
        [--methods no_source]

extend: is the target budget long enough? The test trains every run for `skills.target_steps` and reports its
best-validation checkpoint; a run whose best checkpoint is its last may still have been improving. This copies
each such chosen-rate run (of --methods at --size in --strata) to DIR/budget/<run>, resumes it to --steps (the
schedule is constant after warm-up, so this is the run a budget of --steps trains), scores the new checkpoints,
and writes DIR/budget/results.json: per run, best step, validation and test at both budgets.

untrained: what does a method score before it learns anything? For each chosen-rate run of --methods on
--targets at --size, the same run with learning rate 0 for one step (its start: initialisation, the k-means
codebook start, a source's parameters where it has one) is trained and scored in DIR/untrained/<run>; written
to DIR/untrained/results.json beside the trained run's test score.

Both are ordinary runs of the trainer and evaluator; killed, the same command continues.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("extend", "untrained"))
    parser.add_argument("--workdir", type=Path, required=True, help="the premise test's DIR")
    parser.add_argument("--steps", type=int, default=0, help="extend: the longer budget")
    parser.add_argument("--size", type=int, default=16, help="the runs' training size")
    parser.add_argument("--strata", default="A", help="extend: strata of the runs")
    parser.add_argument("--targets", default="", help="untrained: targets of the runs")
    parser.add_argument("--methods", default="prompt_tuning,no_source")
    args = parser.parse_args(argv)
    results_file = args.workdir / "results.json"
    if not results_file.is_file():
        parser.error(f"{results_file} does not exist: run the premise test in {args.workdir} first")
    if args.mode == "extend" and args.steps <= 0:
        parser.error("extend needs --steps, the longer budget")
    if args.mode == "untrained" and not args.targets:
        parser.error("untrained needs --targets")

    from sharpt_jax.experiments import skills_runs

    skills_runs.use_compilation_cache(args.workdir)
    runs = [
        r
        for r in json.loads(results_file.read_text())["runs"]
        if r["selected"] and r["num_train"] == args.size and r["method"] in args.methods.split(",")
    ]
    if args.mode == "extend":
        picked = [r for r in runs if r["stratum"] in args.strata.split(",") and r.get("best_step") == r["last_step"]]
        out = [extend(args.workdir, r, args.steps) for r in picked]
        summary = {"steps": args.steps, "runs": out}
    else:
        picked = [r for r in runs if r["target"] in args.targets.split(",")]
        summary = {"runs": [untrained(args.workdir, r) for r in picked]}
    folder = args.workdir / ("budget" if args.mode == "extend" else "untrained")
    (folder / "results.json").write_text(json.dumps(summary, indent=1) + "\n")


def scored_copy(workdir: Path, record: dict, folder: str, copy: bool, **fields) -> dict:
    """The run of `record` in workdir/folder/<run> with `fields` changed in its config, trained (resumed from its
    copied checkpoints when `copy`) and scored: {best_step, validation, test} (written once, then read back)."""
    import ml_collections

    from sharpt_jax import evaluate, storage, train
    from sharpt_jax.experiments import skills_runs

    source, target = workdir / record["run"], workdir / folder / record["run"]
    done = target / f"{folder}.json"
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


if __name__ == "__main__":
    main()
