"""The tables and the scaling figure of `bench/run.py`, from its record (the dict it writes with --json).

python bench/run_report.py RECORD.json     # the tables of a committed record, e.g. bench/results/cpu_base.json
"""

import json
import sys
from pathlib import Path

import numpy as np

UNROLL = "+unroll"  # The suffix of a program whose T5 runs its layers unrolled (bench/run.py --layers).
# The summary ratios a record may hold (bench/run.py writes those whose programs ran).
SUMMARY = (
    "sharpt_over_prompt_tuning",
    "sharpt_cached_over_prompt_tuning",
    "sharpt_source_over_prompt_tuning",
    "ours_over_peft",
    "mfu",
)


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows])


def mib(n: int) -> float:
    return n / 2**20


def report(record: dict) -> str:
    """Every table of the record, as markdown sections."""
    settings, methods = record["settings"], record["methods"]
    base = settings["base"]
    sections = [
        f"## Peak matmul ({record.get('matmul_size', 'n')}^3)",
        table(["dtype", "TFLOP/s"], [[d, p / 1e12] for d, p in record["peak_flops"].items()]),
        f"## Train step ({settings['dtype']} backbone, B={base['batch']}, T={base['input_len']}, "
        f"S={base['target_len']}, L={base['prompt_len']}, K={base['num_skills']})",
        step_table(record),
    ]
    if unrolled := [name for name in methods if name + UNROLL in methods]:
        sections += [
            "## Scanned against unrolled layers (compile: trace, lower and compile the jitted step)",
            unroll_table(methods, unrolled),
        ]
    sections += ["## Memory of the compiled step (MiB)", memory_table(methods)]
    if record["scaling"]:
        sections.append("## Scaling (train step ms)")
        for axis, curves in record["scaling"].items():
            points = next(iter(curves.values()))
            rows = [[p["value"], *(c[i]["step_s"] * 1e3 for c in curves.values())] for i, p in enumerate(points)]
            sections.append(table([axis, *curves], rows))
    if record["eval"]:
        sections += [
            "## Eval throughput (examples/s)",
            table(
                ["method", "greedy decode", "rank classification (4 labels)"],
                [
                    [m, r["greedy"]["examples_per_s"], r["rank_classification"]["examples_per_s"]]
                    for m, r in record["eval"].items()
                ],
            ),
        ]
    summary = {key: record[key] for key in SUMMARY if key in record}
    if summary:
        sections += ["## Summary", table(list(summary), [list(summary.values())])]
    return "\n\n".join(sections) + "\n"


def step_table(record: dict) -> str:
    rows = [
        [
            name,
            r["step_s"] * 1e3,
            r["examples_per_s"],
            r["tokens_per_s"],
            r["model_flops"] / 1e9,
            r["traced_matmul_flops"] / 1e9,
            r["mfu"],
            r["trainable_params"],
        ]
        for name, r in record["methods"].items()
    ]
    if peft := record["peft_prompt_tuning"]:
        # The same step as our PromptTuning's (records before the field existed: that method's count).
        flops = peft.get("model_flops") or record["methods"]["prompt_tuning/target"]["model_flops"]
        rows.append(
            [
                "PEFT prompt_tuning (torch)",
                peft["step_s"] * 1e3,
                peft["examples_per_s"],
                peft["tokens_per_s"],
                flops / 1e9,
                "-",
                flops / peft["step_s"] / record["peak_flops"]["float32"],
                peft["trainable_params"],
            ]
        )
    header = [
        "method",
        "step ms",
        "examples/s",
        "tokens/s",
        "model GFLOP",
        "traced matmul GFLOP",
        "MFU",
        "trainable params",
    ]
    return table(header, rows)


def unroll_table(methods: dict, unrolled: list[str]) -> str:
    rows = []
    for name in unrolled:
        scan, unroll = methods[name], methods[name + UNROLL]
        compile_s = [scan["compile_s"], unroll["compile_s"]]
        step_ms = [scan["step_s"] * 1e3, unroll["step_s"] * 1e3]
        rows.append([name, *compile_s, compile_s[1] / compile_s[0], *step_ms, step_ms[1] / step_ms[0]])
    ratio = "unroll / scan"
    return table(["method", "compile s scan", "compile s unroll", ratio, "step ms scan", "step ms unroll", ratio], rows)


def memory_table(methods: dict) -> str:
    header = [
        "method",
        "arguments",
        "outputs",
        "temp",
        "aliased",
        "trainable",
        "frozen",
        "Adam state",
        "Adam / trainable",
    ]
    rows = [
        [
            name,
            mib(r["argument_bytes"]),
            mib(r["output_bytes"]),
            mib(r["temp_bytes"]),
            mib(r["alias_bytes"]),
            mib(r["trainable_bytes"]),
            mib(r["frozen_bytes"]),
            mib(r["opt_state_bytes"]),
            r["opt_state_bytes"] / r["trainable_bytes"],
        ]
        for name, r in methods.items()
    ]
    return table(header, rows)


def plot_scaling(scaling: dict, out: Path) -> Path:
    """The scaling sweeps (step ms against each swept value), one panel per axis; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scaling), figsize=(4 * len(scaling), 3.5))
    for ax, (axis, curves) in zip(np.atleast_1d(axes), scaling.items(), strict=True):
        for label, points in curves.items():
            xs, ys = zip(*sorted((p["value"], p["step_s"] * 1e3) for p in points), strict=True)
            ax.plot(xs, ys, "o-", label=label)
        ax.set(xscale="log" if axis == "num_skills" else "linear", xlabel=axis, ylabel="train step (ms)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scaling.png"
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    print(report(json.loads(Path(sys.argv[1]).read_text())))
