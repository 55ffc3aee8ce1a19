"""Train-step, memory, scaling and eval benchmarks of SharPT against its baselines and Hugging Face PEFT.

    python bench/run.py --quick --json /tmp/bench.json     # small T5 shape, < 3 minutes on 2 CPU cores
    python bench/run.py --dtype bfloat16                    # T5-base shape + BERT-base encoder (accelerators)
    python bench/run.py --batch 8 --input-len 128 --steps 5 # the same shapes, sized for a CPU (47 min on 2 cores)
    python bench/run.py --batch 8 --input-len 128 --steps 5 --no-scaling --no-eval \
        --methods sharpt/target,sharpt/target+cache,prompt_tuning/target   # only the SharPT / PromptTuning ratios
    python bench/run.py --batch 8 --input-len 128 --steps 3 --no-scaling --no-eval \
        --methods sharpt/target,prompt_tuning/target --layers scan,unroll  # compile and step time, scan vs unrolled

Everything runs in one process on one shape, batch and set of lengths, with random weights. Our steps are the
project's real `optim.make_train_step`, jitted with `donate_argnums=(0,)`; `sharpt/target+cache` is the SharPT
target step on batches that carry cached instance embeddings (`config.instance_embedding_cache`: the step never
runs the encoder). T5 scans its layers (`jax.lax.scan`) unless `--layers` also or only asks for unrolled ones: the
program `<method>+unroll` is the same step with the layers unrolled, and with both a table compares their compile
times (tracing, lowering and compiling the jitted step) and step times. PEFT's is PromptTuningConfig on a PyTorch
`T5ForConditionalGeneration` of the same shape with the same prompt (encoder input only), Adam and learning rate.
The methods (`--methods`: all by default) and PEFT are compiled first and then timed in turn, one step each,
`--steps` times (the median reported), so that load changes on a shared machine fall on all of them alike; each
point of the scaling sweeps, the base point included, is the median of `--steps` consecutive steps of its program
alone. tokens/s counts input plus target tokens (B * (T + S)).
Model FLOPs are counted analytically (`bench/flops.py`, cross-checked against the dot_generals JAX traced);
MFU divides them by the measured throughput of one large jitted matmul in the same dtype. Markdown tables go
to stdout, the scaling plot to `--out` (default bench/out), all numbers to `--json`.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench import flops, shapes  # noqa: E402
from sharpt_jax import evaluate, optim  # noqa: E402
from sharpt_jax.models.encoder import BertConfig  # noqa: E402

LEARNING_RATE = 0.3
# The programs timed on the base point: name -> the fields of `shapes.Point` that make it.
METHODS = {
    "sharpt/source": dict(method="sharpt", stage="source"),
    "sharpt/target": dict(method="sharpt", stage="target"),
    "sharpt/target+cache": dict(method="sharpt", stage="target", cached_embeddings=True),
    "prompt_tuning/target": dict(method="prompt_tuning", stage="target"),
    "model_tuning/target": dict(method="model_tuning", stage="target"),
}
PEFT = "peft"  # The same PromptTuning step in PyTorch with Hugging Face PEFT.
# --layers: how T5 runs its layers -> the suffix of the program's name.
LAYERS = {"scan": "", "unroll": "+unroll"}
# Summary ratios of step times over our PromptTuning step's: program -> key.
OVER_PROMPT_TUNING = {
    "sharpt/target": "sharpt_over_prompt_tuning",
    "sharpt/target+cache": "sharpt_cached_over_prompt_tuning",
    "sharpt/source": "sharpt_source_over_prompt_tuning",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one invocation measures: shapes, the base point, scaling axes and repetitions."""

    t5: object
    encoder: object
    base: shapes.Point
    axes: dict  # Point field -> values swept (with the base point's other fields).
    curves: dict  # Point field -> the (method, stage) pairs swept along it.
    steps: int  # Timed steps per measurement, after a warm-up step.
    matmul_size: int
    dtype: jnp.dtype
    eval_methods: tuple[str, ...]


def settings(
    quick: bool,
    dtype: str,
    steps: int | None = None,
    scaling: bool = True,
    batch: int | None = None,
    input_len: int | None = None,
) -> Settings:
    """The run's shapes and points. The batch and input-length sweeps span a quarter to twice the base point, so
    that `--batch` / `--input-len` size the whole run to the machine (a T5-base step at B = 8, T = 128 takes
    about 8 s on 2 CPU cores)."""
    size = "quick" if quick else "base"
    base = shapes.Point(
        "sharpt",
        "target",
        batch=batch or (8 if quick else 32),
        input_len=input_len or (128 if quick else 256),
        target_len=16 if quick else 32,
        prompt_len=64,
        num_skills=100,
        instance_len=64,
    )
    if not scaling:
        axes = {}
    elif quick:
        axes = {
            "num_skills": [100, 10000],
            "prompt_len": [16, 64],
            "batch": [base.batch // 2, base.batch],
            "input_len": [base.input_len // 2, base.input_len],
        }
    else:
        axes = {
            "num_skills": [10, 100, 1000, 10000],
            "prompt_len": [16, 32, 64, 128],
            "batch": [max(1, base.batch * f // 4) for f in (1, 2, 4, 8)],
            "input_len": [max(1, base.input_len * f // 4) for f in (1, 2, 4, 8)],
        }
    # Compilation dominates a quick run on CPU, so it compares against PromptTuning on the base point only.
    compared = [("sharpt", "target")] + ([] if quick else [("prompt_tuning", "target")])
    curves = {axis: [("sharpt", "source")] if axis == "num_skills" else compared for axis in axes}
    # The peak needs a matmul big enough to fill the machine: 8192^3 for an accelerator; a CPU reaches its peak
    # well below that, where 8192^3 would take seconds per call.
    on_cpu = jax.default_backend() == "cpu"
    return Settings(
        shapes.T5_SHAPES[size],
        shapes.BERT_SHAPES[size],
        base,
        axes,
        curves,
        steps=steps or (6 if quick else 20),
        matmul_size=1024 if quick else (2048 if on_cpu else 8192),
        dtype=jnp.dtype(dtype),
        eval_methods=("sharpt",) if quick else ("sharpt", "prompt_tuning"),
    )


def median_seconds(fn, steps: int) -> float:
    """Median wall time of `fn()` (which must block until its results are ready) over `steps` calls."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_batch(point: shapes.Point, vocab_size: int, encoder: BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids in the layout `SharPT` reads (see its docstring); every position is real. With
    `point.cached_embeddings` the instance tokens are replaced by random embeddings [B, m] (what the trainer's
    cache feeds)."""
    rng = np.random.default_rng(seed)
    b = point.batch

    def ids(n, v):
        return rng.integers(2, v, (b, n), dtype=np.int32)

    targets = ids(point.target_len, vocab_size)
    batch = {
        "encoder_input_tokens": ids(point.input_len, vocab_size),
        "encoder_input_mask": np.ones((b, point.input_len), np.int32),
        "decoder_input_tokens": np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((b, point.target_len), np.int32),
    }
    if point.cached_embeddings:
        batch["instance_embedding"] = rng.standard_normal((b, encoder.hidden_size), np.float32)
    else:
        batch["instance_input_tokens"] = ids(point.instance_len, encoder.vocab_size)
        batch["instance_input_mask"] = np.ones((b, point.instance_len), np.int32)
    return batch


# ---------------------------------------------------------------------------------------------
# Peak matmul throughput.
# ---------------------------------------------------------------------------------------------


def matmul_peak(n: int, dtype: jnp.dtype, steps: int) -> float:
    """FLOP/s of one jitted [n, n] x [n, n] matmul in `dtype` (the MFU denominator)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dtype))
    matmul(a, a).block_until_ready()
    return 2 * n**3 / median_seconds(lambda: matmul(a, a).block_until_ready(), max(steps, 3))


# ---------------------------------------------------------------------------------------------
# Our train step: time, FLOPs, memory.
# ---------------------------------------------------------------------------------------------


def prepare_train(s: Settings, point: shapes.Point) -> tuple[Callable[[], None], dict]:
    """Compiles `optim.make_train_step` for `point`; returns a function running one step (blocking) and the
    step's compile time, FLOPs and compiled memory."""
    model = shapes.build(s.t5, s.encoder, point, s.dtype)
    graphdef, trainable, frozen = optim.split_model(model, point.method, point.stage)
    optimizer = optim.make_optimizer("adam", LEARNING_RATE, warmup_steps=0)
    step_fn = optim.make_train_step(graphdef, optimizer, optim.learning_rate_schedule(LEARNING_RATE, 0))
    state = optim.init_train_state(trainable, optimizer)
    batch = jax.tree_util.tree_map(jnp.asarray, make_batch(point, s.t5.vocab_size, s.encoder))
    key = optim.dropout_key(0)

    start = time.perf_counter()
    # As in the trainer, `frozen` holds the instance encoder even when the batch carries cached embeddings; jit
    # drops arguments that no operation reads (keep_unused=False), so the memory table shows what the step reads.
    traced = jax.jit(step_fn, donate_argnums=(0,)).trace(state, frozen, batch, key)
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    model_flops = flops.train_step_flops(s.t5, s.encoder, point)
    info = {
        "compile_s": compile_s,
        "model_flops": model_flops["total"],
        "forward_flops": model_flops["forward"],
        "traced_matmul_flops": flops.jaxpr_matmul_flops(traced.jaxpr),
        "trainable_params": optim.count_params(trainable),
        "trainable_bytes": flops.tree_bytes(trainable),
        "frozen_bytes": flops.tree_bytes(frozen),
        "opt_state_bytes": flops.tree_bytes(state["opt"]) - flops.tree_bytes(state["step"]),
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
    }

    def run():
        nonlocal state
        state, metrics = compiled(state, frozen, batch, key)
        jax.block_until_ready((state, metrics))

    run()  # warm-up
    return run, info


def with_timing(info: dict, point: shapes.Point, step_s: float, peak: float) -> dict:
    """`info` plus the step time and what follows from it: examples/s, tokens/s and MFU."""
    return {
        **info,
        "step_s": step_s,
        "examples_per_s": point.batch / step_s,
        "tokens_per_s": point.batch * (point.input_len + point.target_len) / step_s,
        "mfu": info["model_flops"] / step_s / peak,
    }


def interleaved_seconds(runs: dict[str, Callable[[], None]], steps: int) -> dict[str, float]:
    """Median step time of every run over `steps` steps taken in turn (A, B, C, A, B, C, ...), so that a change
    of load on a shared machine during the measurement falls on all of them alike."""
    times = {name: [] for name in runs}
    for _ in range(steps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------
# The same PromptTuning step in PyTorch with Hugging Face PEFT.
# ---------------------------------------------------------------------------------------------


def prepare_peft(s: Settings, point: shapes.Point) -> tuple[Callable[[], None], dict]:
    """PEFT PromptTuning on a randomly initialised HF T5 of the same shape: same prompt, Adam, lr, batch, lengths.
    Returns a function running one step and the trainable-parameter count."""
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    hf_config = shapes.hf_t5_config(s.t5, dropout_rate=s.t5.dropout_rate, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(hf_config)
    # One transformer submodule: the prompt goes in front of the encoder input only, as in ours (Lester et al.).
    # PEFT's seq2seq default (2) also prepends L tokens to the decoder input, which is more work per step.
    config = peft.PromptTuningConfig(
        task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=point.prompt_len, num_transformer_submodules=1
    )
    model = peft.get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    batch = make_batch(point, s.t5.vocab_size, s.encoder)
    inputs = {
        "input_ids": torch.from_numpy(batch["encoder_input_tokens"]).long(),
        "attention_mask": torch.from_numpy(batch["encoder_input_mask"]).long(),
        "labels": torch.from_numpy(batch["decoder_target_tokens"]).long(),
    }

    def run():
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    run()  # warm-up
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return run, {"trainable_params": trainable, "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------
# Eval throughput: greedy decoding and rank classification.
# ---------------------------------------------------------------------------------------------


def measure_eval(s: Settings, point: shapes.Point, num_labels: int = 4, label_len: int = 4) -> dict:
    """Examples/s of the evaluator's jitted functions (`sharpt_jax.evaluate`): greedy decoding with the KV cache
    (`point.target_len` steps, no early stop on random weights) and rank classification (encode once, one
    teacher-forced decoder pass over all `num_labels` labels)."""
    model = shapes.build(s.t5, s.encoder, point, s.dtype)
    graphdef, state = nnx.split(model)
    batch = jax.tree_util.tree_map(jnp.asarray, make_batch(point, s.t5.vocab_size, s.encoder))
    labels = jnp.asarray(np.random.default_rng(1).integers(2, s.t5.vocab_size, (num_labels, label_len)), jnp.int32)
    weights = jnp.ones_like(labels)
    runs = {
        "greedy": lambda: evaluate.greedy_tokens(graphdef, state, batch, max_decode_len=point.target_len),
        "rank_classification": lambda: evaluate.label_log_likelihoods(graphdef, state, batch, labels, weights),
    }
    results = {}
    for name, fn in runs.items():
        jax.block_until_ready(fn())
        seconds = median_seconds(lambda fn=fn: jax.block_until_ready(fn()), s.steps)
        results[name] = {"batch_s": seconds, "examples_per_s": point.batch / seconds}
    return results


# ---------------------------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows])


def plot_scaling(scaling: dict, out: Path) -> Path:
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


def mib(n: int) -> float:
    return n / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small T5 shape, 2-3 points per scaling axis")
    parser.add_argument("--json", type=Path, help="write every measured number here")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out", help="folder for the PNGs")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="backbone compute dtype (trainable params and optimizer state stay float32)",
    )
    parser.add_argument("--steps", type=int, help="timed steps per measurement (default 6 with --quick, else 20)")
    parser.add_argument(
        "--no-scaling", action="store_true", help="skip the K, L, batch and length sweeps (hours at T5-base on a CPU)"
    )
    parser.add_argument("--batch", type=int, help="base point's batch size (default 8 with --quick, else 32)")
    parser.add_argument("--input-len", type=int, help="base point's input length (default 128 with --quick, else 256)")
    programs = [*METHODS, PEFT]
    parser.add_argument(
        "--methods",
        default=",".join(programs),
        help=f"comma-separated programs timed on the base point (default all): {', '.join(programs)}",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the eval-throughput measurement")
    parser.add_argument(
        "--layers",
        default="scan",
        help="comma-separated: scan (T5's layers under jax.lax.scan) and/or unroll (programs named <method>+unroll)",
    )
    args = parser.parse_args()
    chosen = args.methods.split(",")
    if unknown := [name for name in chosen if name not in programs]:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(programs)}")
    layers = args.layers.split(",")
    if unknown := [mode for mode in layers if mode not in LAYERS]:
        parser.error(f"--layers: unknown {', '.join(unknown)}; choose from {', '.join(LAYERS)}")
    s = settings(args.quick, args.dtype, args.steps, not args.no_scaling, args.batch, args.input_len)
    print(f"# devices: {jax.devices()}  T5 {s.t5}\n# encoder {s.encoder}\n# base point {s.base}", flush=True)

    # --- Peak matmul throughput ---------------------------------------------------------------
    peaks = {d: matmul_peak(s.matmul_size, jnp.dtype(d), s.steps) for d in ("float32", "bfloat16")}
    peak = peaks[s.dtype.name]

    # --- Methods on the base point ------------------------------------------------------------
    # Compiled first, then timed in turn: the ratios are the figures that matter.
    points = {
        name + LAYERS[mode]: dataclasses.replace(s.base, **fields, scan_layers=mode == "scan")
        for name, fields in METHODS.items()
        if name in chosen
        for mode in layers
    }
    prepared = {name: prepare_train(s, point) for name, point in points.items()}
    runs = {name: run for name, (run, _) in prepared.items()}
    prompt_tuning = dataclasses.replace(s.base, **METHODS["prompt_tuning/target"])
    if PEFT in chosen:
        runs[PEFT], peft_info = prepare_peft(s, prompt_tuning)
    seconds = interleaved_seconds(runs, s.steps)
    methods = {name: with_timing(info, points[name], seconds[name], peak) for name, (_, info) in prepared.items()}
    peft_result = None
    if PEFT in chosen:
        peft_result = {
            **peft_info,
            "step_s": seconds[PEFT],
            "examples_per_s": s.base.batch / seconds[PEFT],
            "tokens_per_s": s.base.batch * (s.base.input_len + s.base.target_len) / seconds[PEFT],
        }
    del prepared, runs
    for name, r in methods.items():
        print(f"  {name}: {r['step_s'] * 1e3:.1f} ms (compiled in {r['compile_s']:.0f} s)", flush=True)
    if peft_result:
        print(f"  PEFT prompt_tuning: {peft_result['step_s'] * 1e3:.1f} ms", flush=True)

    # Each sweep point, the base point included, is timed alone (consecutive steps of one program): taking turns
    # with four other programs and PyTorch makes every step slower on a CPU, so the base table's times would not
    # line up with their neighbours on the curves.
    cache = {}

    def train(point):
        if point not in cache:
            run, info = prepare_train(s, point)
            cache[point] = with_timing(info, point, median_seconds(run, s.steps), peak)
            print(
                f"  {point.method}/{point.stage} {dataclasses.asdict(point)}: {cache[point]['step_s'] * 1e3:.1f} ms",
                flush=True,
            )
        return cache[point]

    # --- Scaling ------------------------------------------------------------------------------
    scaling = {}
    for axis, values in s.axes.items():
        scaling[axis] = {
            f"{m}/{st}": [
                {"value": v, **train(dataclasses.replace(s.base, method=m, stage=st, **{axis: v}))} for v in values
            ]
            for m, st in s.curves[axis]
        }

    # --- Eval ---------------------------------------------------------------------------------
    evals = {} if args.no_eval else {m: measure_eval(s, dataclasses.replace(s.base, method=m)) for m in s.eval_methods}

    # --- Report -------------------------------------------------------------------------------
    summary = {}  # Each ratio whose two programs ran.
    if ours_pt := methods.get("prompt_tuning/target"):
        summary = {
            key: methods[name]["step_s"] / ours_pt["step_s"]
            for name, key in OVER_PROMPT_TUNING.items()
            if name in methods
        }
        if peft_result:
            summary["ours_over_peft"] = ours_pt["step_s"] / peft_result["step_s"]
        summary["mfu"] = ours_pt["mfu"]
    prompt_tuning_flops = flops.train_step_flops(s.t5, s.encoder, prompt_tuning)["total"]
    print(f"\n## Peak matmul ({s.matmul_size}^3)\n")
    print(table(["dtype", "TFLOP/s"], [[d, p / 1e12] for d, p in peaks.items()]))
    print(
        f"\n## Train step ({s.dtype.name} backbone, B={s.base.batch}, T={s.base.input_len}, "
        f"S={s.base.target_len}, L={s.base.prompt_len}, K={s.base.num_skills})\n"
    )
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
        for name, r in methods.items()
    ]
    if peft_result:
        rows.append(
            [
                "PEFT prompt_tuning (torch)",
                peft_result["step_s"] * 1e3,
                peft_result["examples_per_s"],
                peft_result["tokens_per_s"],
                prompt_tuning_flops / 1e9,
                "-",
                prompt_tuning_flops / peft_result["step_s"] / peaks["float32"],
                peft_result["trainable_params"],
            ]
        )
    print(
        table(
            [
                "method",
                "step ms",
                "examples/s",
                "tokens/s",
                "model GFLOP",
                "traced matmul GFLOP",
                "MFU",
                "trainable params",
            ],
            rows,
        )
    )
    if unrolled := [name for name in methods if name + LAYERS["unroll"] in methods]:
        print("\n## Scanned against unrolled layers (compile: trace, lower and compile the jitted step)\n")
        rows = []
        for name in unrolled:
            scan, unroll = methods[name], methods[name + LAYERS["unroll"]]
            compile_s = [scan["compile_s"], unroll["compile_s"]]
            step_ms = [scan["step_s"] * 1e3, unroll["step_s"] * 1e3]
            rows.append([name, *compile_s, compile_s[1] / compile_s[0], *step_ms, step_ms[1] / step_ms[0]])
        ratio = "unroll / scan"
        header = ["method", "compile s scan", "compile s unroll", ratio, "step ms scan", "step ms unroll", ratio]
        print(table(header, rows))
    print("\n## Memory of the compiled step (MiB)\n")
    print(
        table(
            [
                "method",
                "arguments",
                "outputs",
                "temp",
                "aliased",
                "trainable",
                "frozen",
                "Adam state",
                "Adam / trainable",
            ],
            [
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
            ],
        )
    )
    print("\n## Scaling (train step ms)\n" if scaling else "")
    for axis, curves in scaling.items():
        print(
            table(
                [axis, *curves],
                [
                    [p["value"], *(c[i]["step_s"] * 1e3 for c in curves.values())]
                    for i, p in enumerate(next(iter(curves.values())))
                ],
            )
            + "\n"
        )
    if evals:
        print("## Eval throughput (examples/s)\n")
        print(
            table(
                ["method", "greedy decode", "rank classification (4 labels)"],
                [
                    [m, r["greedy"]["examples_per_s"], r["rank_classification"]["examples_per_s"]]
                    for m, r in evals.items()
                ],
            )
        )
    if summary:
        print("\n## Summary\n")
        print(table(list(summary), [list(summary.values())]))
    if scaling:
        print(f"\nscaling plot: {plot_scaling(scaling, args.out)}")
    if args.json:
        record = {
            **summary,
            "settings": {
                "t5": dataclasses.asdict(s.t5),
                "encoder": dataclasses.asdict(s.encoder),
                "base": dataclasses.asdict(s.base),
                "dtype": s.dtype.name,
            },
            "peak_flops": peaks,
            "methods": methods,
            "peft_prompt_tuning": peft_result,
            "scaling": scaling,
            "eval": evals,
        }
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
