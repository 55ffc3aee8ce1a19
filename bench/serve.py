"""Mixed-task serving throughput: several adapters in shared batches against one task at a time, same rows.

    python bench/serve.py [--workdir DIR] [--batch 32,128] [--repeats 5]

On the demo's models (configs/demo.py: the skills-world T5 of tasks/skills_backbone, the real MiniLM encoder,
L = 8, K = 16, float32) it trains a SharPT source run and one SharPT target run per skills target for a couple
of steps (the weights do not change the work; runs already in --workdir are reused), exports their adapters and
serves the 4 x 100 validation rows of the targets:
  mixed         one `Predictor` of the 4 adapters, the rows shuffled together: every batch mixes tasks;
  one task      4 single-adapter `Predictor`s, each given its task's rows (the usual one-model-per-task server).
Each is warmed up once (compiles, tf.data tracing), then timed `--repeats` times, the two modes in turns; the
table gives the best of those rows/s end to end (`predict`) and of the model half alone (the batches,
`Predictor.seconds["model"]`), and the number of batches. The best repeat is the one least disturbed by
the machine's other work (on a shared machine the medians moved by +-30% from one invocation to the next).
"""

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from configs import demo as demo_config  # noqa: E402
from sharpt_jax import train  # noqa: E402
from sharpt_jax.experiments import demo  # noqa: E402
from sharpt_jax.serving import export, predict  # noqa: E402
from tasks import skills_world  # noqa: E402

TARGETS = tuple(skills_world.task_name(t.name, 16).removeprefix("sharpt_") for t in skills_world.TARGETS)
STEPS = 2


def make_adapters(workdir: Path) -> list[Path]:
    """Trains (or reuses) the source run and one target run per skills target; returns their adapters."""
    base = demo_config.get_config()
    base.save_every = STEPS
    runs = {"source": demo.stage_config(base, "source", base.demo.source_tasks, STEPS)}
    for target in TARGETS:
        runs[target] = demo.stage_config(base, "target", target, STEPS, workdir / "source")
    adapters = []
    for name, config in runs.items():
        if not (workdir / name / "checkpoints" / str(STEPS)).is_dir():
            train.train(config, workdir / name)
        if name != "source":
            adapters.append(export.export(workdir / name, workdir / "adapters" / name, step=STEPS))
    return adapters


def timed(predictor: predict.Predictor, rows: list[dict]) -> tuple[float, float]:
    """(seconds end to end, seconds of the model half) of one `predict` call."""
    predictor.predict(rows)
    return sum(predictor.seconds.values()), predictor.seconds["model"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="runs and adapters (default: a temporary folder)")
    parser.add_argument("--batch", default="32,128", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sharpt-serve-"))
    adapters = [export.load_adapter(path) for path in make_adapters(workdir)]
    by_task = {
        adapter.tasks[0]: [
            {"task": adapter.tasks[0], **row} for row in skills_world.base_task(adapter.tasks[0]).examples("validation")
        ]
        for adapter in adapters
    }
    mixed_rows = [row for rows in by_task.values() for row in rows]
    random.Random(0).shuffle(mixed_rows)

    lines = [
        f"{len(mixed_rows)} rows ({len(by_task)} tasks x {len(mixed_rows) // len(by_task)}), "
        f"{len(adapters)} SharPT adapters, demo models, {os.cpu_count()} CPU cores",
        "",
        "| batch | mode | batches | rows/s end to end | rows/s model | mixed / one task (model) |",
        "|---|---|---|---|---|---|",
    ]
    for batch_size in map(int, args.batch.split(",")):
        mixed = predict.Predictor(adapters, batch_size=batch_size)
        single = {a.tasks[0]: predict.Predictor([a], batch_size=batch_size) for a in adapters}
        timed(mixed, mixed_rows)  # Warm-up: compiles and traces the input pipelines.
        for task, rows in by_task.items():
            timed(single[task], rows)
        mixed_times, single_times = [], []
        for _ in range(args.repeats):  # In turns, so that the machine's load falls on both modes alike.
            mixed_times.append(timed(mixed, mixed_rows))
            one = [timed(single[task], rows) for task, rows in by_task.items()]
            single_times.append((sum(t for t, _ in one), sum(m for _, m in one)))
        num_batches = {
            "mixed": -(-len(mixed_rows) // batch_size),
            "one task": sum(-(-len(rows) // batch_size) for rows in by_task.values()),
        }
        rates = {}
        for mode, times in (("mixed", mixed_times), ("one task", single_times)):
            total, model = min(t for t, _ in times), min(m for _, m in times)
            rates[mode] = (len(mixed_rows) / total, len(mixed_rows) / model)
        for mode in ("mixed", "one task"):
            ratio = f"{rates['mixed'][1] / rates['one task'][1]:.2f}" if mode == "mixed" else ""
            end_to_end, model = rates[mode]
            lines.append(f"| {batch_size} | {mode} | {num_batches[mode]} | {end_to_end:.1f} | {model:.1f} | {ratio} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
