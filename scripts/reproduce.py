"""Runs everything the paper's Tables 1-3 (and Figure 2) need on one machine, one run after another, then the report.

    python scripts/reproduce.py --runs RUNS_DIR --data_dir DATA_DIR [--tables 1,2,3] [--seeds 0,1,2]
        [--sizes base] [--t5 base=T5_DIR ...] [--tasks boolq,cb] [--methods sharpt,prompt_tuning]
        [--eval_sources] [--mfu 0.3] [--peak_tflops 989] [--dry_run] [--config.FIELD=VALUE ...]

Each run is two ordinary commands, `python run.py --config=... --workdir=DIR` and the same with
`--config.mode=eval`, started as subprocesses from the repository root (a fresh process per run: nothing of one
run's JAX state or memory reaches the next, and every command is one a user could type). Every
`--config.FIELD=VALUE` given here is passed to every run (fewer steps, a batch size, an instance-embedding
cache); the runner sets the seed, the size, the source checkpoint and the method itself. Paths are the user's:
`--runs`, `--data_dir`, `--t5` folders and path fields (t5_vocab, encoder, encoder_vocab,
instance_embedding_cache; t5 and encoder when they name an existing folder, else they are hub ids) are resolved
against the current folder and passed as absolute paths, so every run records where its files are.

  --data_dir DATA_DIR   the folder of <task>/<split>.jsonl files (tasks/prepare.py writes it): both source
                        mixtures hold CxC and Table 1 has CR, which exist only there, so it is needed unless the
                        plan has neither.
  --t5 SIZE=DIR         the T5 of one size (a local copy of google/t5-SIZE-lm-adapt), once per size; sizes
                        without one use the hub id (downloaded once, or read from HF_HOME offline).

The plan is printed first: every run with its training steps, model FLOPs (bench/flops.py's count of one train
step of the size's LM-adapted T5 shape, times the steps; scoring is not counted) and GPU-hours at `--mfu` of
`--peak_tflops`. No accelerator measurement is committed (bench/results holds CPU runs only), so the default
MFU 0.3 of an H100 SXM's 989 dense bfloat16 TFLOP/s is an assumption: measure yours with
`python bench/accelerator.py` (its MFU column) and pass it. `--dry_run` prints the plan and the commands and
runs nothing.

Resumable: a run is finished when its last checkpoint is the config's last step and (for a scored run)
`eval/best.json` is newer than that checkpoint; finished runs are skipped. Any other run is started again
with the same commands: training resumes from its last checkpoint and the eval mode scores only what is
missing. The first command that fails stops the runner (later targets may need its source); fix the cause and
run the same command line again.

Runs shared by several tables are made once: the PromptTuning and ModelTuning targets serve Tables 1 and 2, the
SharPT high_to_low source and its targets serve Tables 1 and 3. The "no source task training" ablation is
`configs/target.py:TASK,method=no_source` (same steps and lengths as the other targets): the codebook and
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
import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import flops, shapes  # noqa: E402
from sharpt_jax import storage  # noqa: E402
from sharpt_jax.experiments import paper_report as report  # noqa: E402

METHODS = ("sharpt", "no_latent", "prompt_tuning", "model_tuning", "no_source")
TRANSFERRED = ("sharpt", "no_latent")  # Their targets start from a source run of the same method.
SET_BY_RUNNER = ("seed", "source_checkpoint", "stage", "mode", "method", "task", "size")
OWN_FLAGS = {"t5": "--t5 SIZE=DIR", "data_dir": "--data_dir DIR"}  # Fields the runner takes through its own flags.
# Fields that name files or folders; t5 and encoder name a hub id (or "random") unless such a folder exists.
PATH_FIELDS = ("t5_vocab", "encoder", "encoder_vocab", "instance_embedding_cache")
HUB_OR_FOLDER = ("t5", "encoder")
FILE_ONLY_TARGETS = ("cr",)  # Besides CxC, in both source mixtures: tasks read only from the data folder.
DEFAULT_MFU, DEFAULT_PEAK_TFLOPS = 0.3, 989.0  # Assumed (see the module docstring): an H100 SXM, dense bfloat16.


@dataclasses.dataclass
class Run:
    workdir: Path
    config: str  # run.py's --config argument, relative to the repository.
    flags: list[str]  # --config.* flags of this run (the user's come after them).
    scored: bool  # Whether the eval mode runs.
    tables: set[int]
    size: str = "base"

    def commands(self, overrides: list[str]) -> list[list[str]]:
        train = [sys.executable, "run.py", f"--config={self.config}", f"--workdir={self.workdir}"]
        train += self.flags + overrides
        return [train, train + ["--config.mode=eval"]] if self.scored else [train]


def plan(runs_dir: Path, tables, seeds, sizes, tasks=None, methods=METHODS, eval_sources=False) -> list[Run]:
    """Every run the tables need, sources before their targets, each once (its `tables` lists which use it)."""
    runs = {}

    def add(workdir: Path, config: str, flags: list[str], scored: bool, table: int) -> Path:
        run = runs.setdefault(workdir, Run(workdir, config, flags, scored, set(), size))
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
                        for task in targets:
                            config = f"configs/target.py:{task},method={method},size={size}"
                            add(base / method / task, config, seed_flag, True, table)
    # Sources first: each one's targets need its last checkpoint.
    return sorted(runs.values(), key=lambda r: not r.config.startswith("configs/source_mix.py"))


def needs_data_dir(run: Run) -> bool:
    """Whether the run reads a task that exists only in the data folder (CxC in a source mixture, CR)."""
    return run.config.startswith("configs/source_mix.py") or run.config.partition(":")[2].split(",")[0] in (
        FILE_ONLY_TARGETS
    )


def absolute(field: str, value: str) -> str:
    """A path field's value as an absolute path (from the current folder); hub ids and "" unchanged."""
    if not value or (field in HUB_OR_FOLDER and not storage.path(value).exists()):
        return value
    return str(storage.absolute(value))


# ---------------------------------------------------------------------------------------------
# The cost of a run.
# ---------------------------------------------------------------------------------------------


def config_value(config, flags: list[str], name: str):
    """The value of the field `name` (e.g. "sequence_length.inputs") after the --config flags, in its type."""
    value = config[name]
    for flag in flags:
        key, _, text = flag.removeprefix("--config.").partition("=")
        if key == name:
            value = type(value)(text)
    return value


def cost(run: Run, overrides: list[str], mfu: float, peak_tflops: float) -> dict:
    """{"steps", "flops", "gpu_hours"} of the run's training: bench/flops.py's model FLOPs of one step of the
    size's LM-adapted T5 shape (and a BERT-base instance encoder) times its steps, at `mfu` of the peak."""
    path, _, arg = run.config.partition(":")
    config = importlib.import_module(path.removesuffix(".py").replace("/", ".")).get_config(arg)
    flags = run.flags + overrides

    def value(name):
        return config_value(config, flags, name)

    method, stage = value("method"), value("stage")
    if method == "no_source":  # Its step is SharPT's source step: codebook and generator train (models/methods.py).
        method, stage = "sharpt", "source"
    point = shapes.Point(
        method=method,
        stage=stage,
        batch=value("batch_size"),
        input_len=value("sequence_length.inputs"),
        target_len=value("sequence_length.targets"),
        prompt_len=value("prompt_length"),
        num_skills=value("num_skills"),
        instance_len=value("sequence_length.instance_inputs"),
        cached_embeddings=bool(value("instance_embedding_cache")),
    )
    steps = value("num_train_steps")
    step_flops = flops.train_step_flops(shapes.T5_SHAPES[run.size], shapes.BERT_SHAPES["base"], point)["total"]
    total = step_flops * steps
    return {"steps": steps, "flops": total, "gpu_hours": total / (mfu * peak_tflops * 1e12) / 3600}


def print_plan(runs: list[Run], runs_dir: Path, tables, overrides: list[str], mfu: float, peak_tflops: float):
    """One line per run (steps, model FLOPs, GPU-hours of its training), then the totals."""
    counts = ", ".join(f"Table {t}: {sum(t in r.tables for r in runs)}" for t in tables)
    print(f"# Plan: {len(runs)} runs ({counts})")
    print(
        f"# Training cost per run: model FLOPs (bench/flops.py) and GPU-hours at MFU {mfu:g} of {peak_tflops:g} "
        "TFLOP/s (an assumption unless measured: --mfu, --peak_tflops); scoring is not counted"
    )
    totals = {"steps": 0, "flops": 0, "gpu_hours": 0.0}
    for i, run in enumerate(runs, 1):
        c = cost(run, overrides, mfu, peak_tflops)
        totals = {k: totals[k] + c[k] for k in totals}
        name = run.workdir.relative_to(runs_dir)
        print(f"# [{i}/{len(runs)}] {name}: {c['steps']:,} steps, {c['flops']:.3g} FLOP, {c['gpu_hours']:.3g} GPU-h")
    print(
        f"# Total: {totals['steps']:,} steps, {totals['flops']:.3g} FLOP, {totals['gpu_hours']:.3g} GPU-h", flush=True
    )


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
    # Orbax writes _CHECKPOINT_METADATA into each step's folder as it saves it (a folder on GCS has no time).
    return not run.scored or (
        best.exists() and storage.version(best)[0] >= storage.version(last / "_CHECKPOINT_METADATA")[0]
    )


def main(argv=None) -> None:
    # No abbreviations: every unknown flag passes through to run.py, and "--t" must not become --tables.
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1], allow_abbrev=False)

    def numbers(text):
        return [int(x) for x in text.split(",")]

    def names(text):
        return text.split(",")

    parser.add_argument("--runs", required=True, type=storage.path, help="the folder of every run and the report")
    parser.add_argument("--data_dir", default="", help="the data folder (CxC, CR; tasks/prepare.py writes it)")
    parser.add_argument("--tables", type=numbers, default=[1, 2, 3], help="paper tables, e.g. 1,3")
    parser.add_argument("--seeds", type=numbers, default=[0], help="e.g. 0,1,2")
    parser.add_argument("--sizes", type=names, default=["base"], help="T5 LM-adapted sizes, e.g. base,large,xl")
    parser.add_argument("--t5", action="append", default=[], help="SIZE=DIR: the T5 folder of one size (repeat)")
    parser.add_argument("--tasks", type=names, default=None, help="only these target tasks (default: all)")
    parser.add_argument("--methods", type=names, default=list(METHODS), help=f"only these of {','.join(METHODS)}")
    parser.add_argument("--eval_sources", action="store_true", help="also score the source runs (slow)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model FLOPs utilisation of the plan's cost")
    parser.add_argument("--peak_tflops", type=float, default=DEFAULT_PEAK_TFLOPS, help="peak TFLOP/s of one GPU")
    parser.add_argument("--dry_run", action="store_true", help="print the plan and the commands, run nothing")
    args, passed = parser.parse_known_args(argv)
    overrides = []
    for flag in passed:
        field, _, value = flag.removeprefix("--config.").partition("=")
        if not flag.startswith("--config.") or "=" not in flag:
            parser.error(f"{flag}: only --config.FIELD=VALUE flags pass through to the runs")
        if field in SET_BY_RUNNER:
            parser.error(f"{flag}: the runner sets --config.{field} itself")
        if field in OWN_FLAGS:
            parser.error(f"{flag}: give it as {OWN_FLAGS[field]}")
        path_field = field in PATH_FIELDS + HUB_OR_FOLDER
        overrides.append(f"--config.{field}={absolute(field, value)}" if path_field else flag)
    unknown = [t for t in args.tables if t not in report.PAPER_TABLES] + [m for m in args.methods if m not in METHODS]
    unknown += [s for s in args.sizes if s not in report.SIZE_ORDER]
    if unknown:
        parser.error(
            f"unknown tables, methods or sizes {unknown}: tables 1, 2, 3; methods {', '.join(METHODS)}; "
            f"sizes {', '.join(report.SIZE_ORDER)}"
        )
    t5 = {}
    for item in args.t5:
        size, sep, folder = item.partition("=")
        if not sep or size not in args.sizes:
            parser.error(f"--t5 {item}: expected SIZE=DIR with SIZE one of --sizes ({','.join(args.sizes)})")
        t5[size] = absolute("t5", folder)

    runs_dir = storage.absolute(args.runs)
    runs = plan(runs_dir, args.tables, args.seeds, args.sizes, args.tasks, args.methods, args.eval_sources)
    if not args.data_dir and any(needs_data_dir(r) for r in runs):
        parser.error(
            "--data_dir DIR is needed: the source mixtures hold CxC and Table 1 has CR, which exist only in the data "
            "folder (tasks/prepare.py writes it)"
        )
    for run in runs:
        run.flags += [f"--config.t5={t5[run.size]}"] if run.size in t5 else []
        run.flags += [f"--config.data_dir={absolute('data_dir', args.data_dir)}"] if args.data_dir else []
    print_plan(runs, runs_dir, args.tables, overrides, args.mfu, args.peak_tflops)
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
