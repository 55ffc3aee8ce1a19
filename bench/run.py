"""Train-step, memory, scaling and eval benchmarks of SharPT against its baselines and Hugging Face PEFT.

    python bench/run.py --quick --json /tmp/bench.json     # small T5 shape, < 3 minutes on 2 CPU cores
    python bench/run.py --dtype bfloat16                    # T5-base shape + BERT-base encoder (accelerators)
    python bench/run.py --batch 8 --input-len 128 --steps 5 # the same shapes, sized for a CPU (47 min on 2 cores)
    python bench/run.py --batch 8 --input-len 128 --steps 5 --no-scaling --no-eval \
        --methods sharpt/target,sharpt/target+cache,prompt_tuning/target   # only the SharPT / PromptTuning ratios
    python bench/run.py --batch 8 --input-len 128 --steps 3 --no-scaling --no-eval \
        --methods sharpt/target,prompt_tuning/target --layers scan,unroll  # compile and step time, scan vs unrolled

Everything runs in one process on one shape, batch and set of lengths, with random weights. Our steps are the
project's real `train.make_train_step`, jitted with `donate_argnums=(0,)`; `sharpt/target+cache` is the SharPT
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
MFU divides them by the measured throughput of one large jitted matmul in the same dtype. Markdown tables
(`bench/run_report.py`) go to stdout, the scaling plot to `--out` (default bench/out), all numbers to `--json`.
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

from bench import flops, run_report, shapes  # noqa: E402
from sharpt_jax import optim, scoring, train  # noqa: E402
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
    """Compiles `train.make_train_step` for `point`; returns a function running one step (blocking) and the
    step's compile time, FLOPs and compiled memory."""
    model = shapes.build(s.t5, s.encoder, point, s.dtype)
    graphdef, trainable, frozen = optim.split_model(model, point.method, point.stage)
    optimizer = optim.make_optimizer("adam", LEARNING_RATE, warmup_steps=0)
    step_fn = train.make_train_step(graphdef, optimizer, optim.learning_rate_schedule(LEARNING_RATE, 0))
    state = train.init_train_state(trainable, optimizer)
    batch = jax.tree_util.tree_map(jnp.asarray, make_batch(point, s.t5.vocab_size, s.encoder))
    key = train.dropout_key(0)

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
    """Examples/s of the evaluator's jitted functions (`sharpt_jax.scoring`): greedy decoding with the KV cache
    (`point.target_len` steps, no early stop on random weights) and rank classification (encode once, one
    teacher-forced decoder pass over all `num_labels` labels)."""
    model = shapes.build(s.t5, s.encoder, point, s.dtype)
    graphdef, state = nnx.split(model)
    batch = jax.tree_util.tree_map(jnp.asarray, make_batch(point, s.t5.vocab_size, s.encoder))
    labels = jnp.asarray(np.random.default_rng(1).integers(2, s.t5.vocab_size, (num_labels, label_len)), jnp.int32)
    weights = jnp.ones_like(labels)
    runs = {
        "greedy": lambda: scoring.greedy_tokens(graphdef, state, batch, max_decode_len=point.target_len),
        "rank_classification": lambda: scoring.label_log_likelihoods(graphdef, state, batch, labels, weights),
    }
    results = {}
    for name, fn in runs.items():
        jax.block_until_ready(fn())
        seconds = median_seconds(lambda fn=fn: jax.block_until_ready(fn()), s.steps)
        results[name] = {"batch_s": seconds, "examples_per_s": point.batch / seconds}
    return results


def parse_args() -> argparse.Namespace:
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
    args.methods, args.layers = args.methods.split(","), args.layers.split(",")
    if unknown := [name for name in args.methods if name not in programs]:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(programs)}")
    if unknown := [mode for mode in args.layers if mode not in LAYERS]:
        parser.error(f"--layers: unknown {', '.join(unknown)}; choose from {', '.join(LAYERS)}")
    return args


def measure_base_point(s: Settings, chosen: list[str], layers: list[str], peak: float) -> tuple[dict, dict | None]:
    """The chosen programs (and PEFT) on the base point, compiled first, then timed in turn: the ratios are the
    figures that matter. Returns ({program: numbers}, PEFT's numbers or None)."""
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
    for name, r in methods.items():
        print(f"  {name}: {r['step_s'] * 1e3:.1f} ms (compiled in {r['compile_s']:.0f} s)", flush=True)
    if PEFT not in chosen:
        return methods, None
    peft = {
        **peft_info,
        "step_s": seconds[PEFT],
        "examples_per_s": s.base.batch / seconds[PEFT],
        "tokens_per_s": s.base.batch * (s.base.input_len + s.base.target_len) / seconds[PEFT],
        "model_flops": flops.train_step_flops(s.t5, s.encoder, prompt_tuning)["total"],
    }
    print(f"  PEFT prompt_tuning: {peft['step_s'] * 1e3:.1f} ms", flush=True)
    return methods, peft


def measure_scaling(s: Settings, peak: float) -> dict:
    """{axis: {program: [points]}}. Each sweep point, the base point included, is timed alone (consecutive steps of
    one program): taking turns with four other programs and PyTorch makes every step slower on a CPU, so the base
    table's times would not line up with their neighbours on the curves."""
    cache = {}

    def timed(point):
        if point not in cache:
            run, info = prepare_train(s, point)
            cache[point] = with_timing(info, point, median_seconds(run, s.steps), peak)
            print(f"  {point.method}/{point.stage} {dataclasses.asdict(point)}: {cache[point]['step_s'] * 1e3:.1f} ms")
        return cache[point]

    return {
        axis: {
            f"{m}/{st}": [
                {"value": v, **timed(dataclasses.replace(s.base, method=m, stage=st, **{axis: v}))} for v in values
            ]
            for m, st in s.curves[axis]
        }
        for axis, values in s.axes.items()
    }


def main():
    args = parse_args()
    s = settings(args.quick, args.dtype, args.steps, not args.no_scaling, args.batch, args.input_len)
    print(f"# devices: {jax.devices()}  T5 {s.t5}\n# encoder {s.encoder}\n# base point {s.base}", flush=True)
    peaks = {d: matmul_peak(s.matmul_size, jnp.dtype(d), s.steps) for d in ("float32", "bfloat16")}
    methods, peft = measure_base_point(s, args.methods, args.layers, peaks[s.dtype.name])
    scaling = measure_scaling(s, peaks[s.dtype.name])
    evals = {} if args.no_eval else {m: measure_eval(s, dataclasses.replace(s.base, method=m)) for m in s.eval_methods}

    summary = {}  # Each ratio whose two programs ran.
    if ours_pt := methods.get("prompt_tuning/target"):
        summary = {
            key: methods[name]["step_s"] / ours_pt["step_s"]
            for name, key in OVER_PROMPT_TUNING.items()
            if name in methods
        }
        if peft:
            summary["ours_over_peft"] = ours_pt["step_s"] / peft["step_s"]
        summary["mfu"] = ours_pt["mfu"]
    record = {
        **summary,
        "settings": {
            "t5": dataclasses.asdict(s.t5),
            "encoder": dataclasses.asdict(s.encoder),
            "base": dataclasses.asdict(s.base),
            "dtype": s.dtype.name,
        },
        "matmul_size": s.matmul_size,
        "peak_flops": peaks,
        "methods": methods,
        "peft_prompt_tuning": peft,
        "scaling": scaling,
        "eval": evals,
    }
    print("\n" + run_report.report(record))
    if scaling:
        print(f"scaling plot: {run_report.plot_scaling(scaling, args.out)}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
