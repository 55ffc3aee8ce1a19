"""Runs everything the paper's Tables 1-3 (and Figure 2) need on one machine, one run after another, then the report.

    python scripts/reproduce.py --runs RUNS_DIR [--tables 1,2,3] [--seeds 0,1,2] [--sizes base]
        [--tasks boolq,cb] [--methods sharpt,prompt_tuning] [--eval_sources] [--dry_run] [--config.FIELD=VALUE ...]

Each run is two ordinary commands, `python run.py --config=... --workdir=DIR` and the same with
`--config.mode=eval`, started as subprocesses from the repository root (a fresh process per run: nothing of one
run's JAX state or memory reaches the next, and every command is one a user could type). Every
`--config.FIELD=VALUE` given here is passed to every run (a data folder, `--config.t5=...`, fewer steps);
the runner sets the seed, the source checkpoint and the stage itself. `--dry_run` prints the commands.

Resumable: a run is finished when its last checkpoint is the config's last step and (for a scored run)
`eval/best.json` is newer than that checkpoint; finished runs are skipped. Any other run is started again
with the same commands: training resumes from its last checkpoint and the eval mode scores only what is
missing. The first command that fails stops the runner (later targets may need its source); fix the cause and
run the same command line again.

Runs shared by several tables are made once: the PromptTuning and ModelTuning targets serve Tables 1 and 2, the
SharPT high_to_low source and its targets serve Tables 1 and 3. The "no source task training" ablation is
configs/target.py's run (same steps and lengths as the other targets) in the source stage: the codebook and
generator learn on the target alone. Source runs are not scored unless `--eval_sources` is given: no table
needs their scores, and the eval mode scores every one of their checkpoints on every source task (160
checkpoints x 15 tasks with the paper's 80K steps); the report's task relations (Figure 3) then show the
target tasks only. Figure 2 is `--tables 1 --sizes base,large,xl`.

Layout of RUNS_DIR (every run is an ordinary run.py workdir):
  <size>/seed<s>/source_high_to_low/<method>/  source stage of sharpt (Tables 1, 3) and no_latent (Table 3)
  <size>/seed<s>/source_category/sharpt/       source stage of the cross-category setting (Table 2)
  <size>/seed<s>/high_to_low/<method>/<task>/  sharpt (Tables 1, 3) and no_latent (Table 3) targets
  <size>/seed<s>/category/sharpt/<task>/       sharpt targets (Table 2)
  <size>/seed<s>/<method>/<task>/              prompt_tuning, model_tuning (Tables 1, 2), no_source (Table 3)
  report/                                      python -m sharpt_jax.report --runs RUNS_DIR --out RUNS_DIR/report
"""

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sharpt_jax.experiments import paper_report as report  # noqa: E402

METHODS = ("sharpt", "no_latent", "prompt_tuning", "model_tuning", "no_source")
TRANSFERRED = ("sharpt", "no_latent")  # Their targets start from a source run of the same method.
SET_BY_RUNNER = ("seed", "source_checkpoint", "stage", "mode", "method", "task")


@dataclasses.dataclass
class Run:
    workdir: Path
    config: str  # run.py's --config argument.
    flags: list[str]  # --config.* flags of this run (the user's come after them).
    scored: bool  # Whether the eval mode runs.
    tables: set[int]

    def commands(self, overrides: list[str]) -> list[list[str]]:
        train = [sys.executable, "run.py", f"--config={self.config}", f"--workdir={self.workdir}"]
        train += self.flags + overrides
        return [train, train + ["--config.mode=eval"]] if self.scored else [train]


def plan(runs_dir: Path, tables, seeds, sizes, tasks=None, methods=METHODS, eval_sources=False) -> list[Run]:
    """Every run the tables need, sources before their targets, each once (its `tables` lists which use it)."""
    runs = {}

    def add(workdir: Path, config: str, flags: list[str], scored: bool, table: int) -> Path:
        run = runs.setdefault(workdir, Run(workdir, config, flags, scored, set()))
        run.tables.add(table)
        return workdir

    for size in sizes:
        for seed in seeds:
            base = runs_dir / size / f"seed{seed}"
            for table in tables:
                setting, table_tasks, rows = report.PAPER_TABLES[table]
                targets = [t for t in table_tasks if tasks is None or t in tasks]
                for method in [m for m in rows if m in methods]:
                    seed_flag = [f"--config.seed={seed}"]
                    if method in TRANSFERRED:
                        mixture = f"source_{setting}"
                        source_config = f"configs/source_mix.py:{setting},method={method},size={size}"
                        source = add(base / mixture / method, source_config, seed_flag, eval_sources, table)
                        for task in targets:
                            flags = seed_flag + [f"--config.source_checkpoint={source}"]
                            config = f"configs/target.py:{task},method={method},size={size}"
                            add(base / setting / method / task, config, flags, True, table)
                    else:
                        model = "sharpt" if method == "no_source" else method
                        flags = seed_flag + (["--config.stage=source"] if method == "no_source" else [])
                        for task in targets:
                            config = f"configs/target.py:{task},method={model},size={size}"
                            add(base / method / task, config, flags, True, table)
    # Sources first: each one's targets need its last checkpoint.
    return sorted(runs.values(), key=lambda r: not r.config.startswith("configs/source_mix.py"))


def finished(run: Run) -> bool:
    """The run's last checkpoint is its last step and, if it is scored, eval/best.json is newer than it."""
    steps = [p for p in (run.workdir / "checkpoints").glob("*") if p.name.isdigit()]
    config = run.workdir / "config.json"
    if not steps or not config.exists():
        return False
    last = max(steps, key=lambda p: int(p.name))
    if int(last.name) != json.loads(config.read_text())["num_train_steps"]:
        return False
    best = run.workdir / "eval" / "best.json"
    return not run.scored or (best.exists() and best.stat().st_mtime >= last.stat().st_mtime)


def main(argv=None) -> None:
    # No abbreviations: every unknown flag passes through to run.py, and "--t" must not become --tables.
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1], allow_abbrev=False)

    def numbers(text):
        return [int(x) for x in text.split(",")]

    def names(text):
        return text.split(",")

    parser.add_argument("--runs", required=True, type=Path, help="the folder of every run and the report")
    parser.add_argument("--tables", type=numbers, default=[1, 2, 3], help="paper tables, e.g. 1,3")
    parser.add_argument("--seeds", type=numbers, default=[0], help="e.g. 0,1,2")
    parser.add_argument("--sizes", type=names, default=["base"], help="T5 LM-adapted sizes, e.g. base,large,xl")
    parser.add_argument("--tasks", type=names, default=None, help="only these target tasks (default: all)")
    parser.add_argument("--methods", type=names, default=list(METHODS), help=f"only these of {','.join(METHODS)}")
    parser.add_argument("--eval_sources", action="store_true", help="also score the source runs (slow)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args, overrides = parser.parse_known_args(argv)
    for flag in overrides:
        field = flag.removeprefix("--config.").partition("=")[0]
        if not flag.startswith("--config.") or "=" not in flag:
            parser.error(f"{flag}: only --config.FIELD=VALUE flags pass through to the runs")
        if field in SET_BY_RUNNER:
            parser.error(f"{flag}: the runner sets --config.{field} itself")
    unknown = [t for t in args.tables if t not in report.PAPER_TABLES] + [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown tables or methods {unknown}: tables 1, 2, 3; methods {', '.join(METHODS)}")

    runs_dir = args.runs.absolute()
    runs = plan(runs_dir, args.tables, args.seeds, args.sizes, args.tasks, args.methods, args.eval_sources)
    for table in args.tables:
        print(f"# Table {table}: {sum(table in r.tables for r in runs)} runs")
    for i, run in enumerate(runs, 1):
        if finished(run):
            print(f"# [{i}/{len(runs)}] {run.workdir.relative_to(runs_dir)}: finished, skipped", flush=True)
            continue
        print(f"# [{i}/{len(runs)}] {run.workdir.relative_to(runs_dir)}", flush=True)
        for command in run.commands(overrides):
            if args.dry_run:
                print(shlex.join(command), flush=True)
                continue
            print(f"$ {shlex.join(command)}", flush=True)
            if (status := subprocess.run(command, cwd=ROOT).returncode) != 0:
                sys.exit(f"error: exit status {status} from {shlex.join(command)}; run this runner again once fixed")
    report_command = [sys.executable, "-m", "sharpt_jax.report", "--runs", str(runs_dir)]
    report_command += ["--out", str(runs_dir / "report")]
    print(shlex.join(report_command), flush=True)
    if not args.dry_run:
        sys.exit(subprocess.run(report_command, cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
