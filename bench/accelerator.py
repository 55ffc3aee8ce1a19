"""The accelerator benchmark in one command: SharPT's train step at the paper's point and at the T5-XL shape.

    python bench/accelerator.py            # on a GPU or TPU VM: at most ~9 minutes, compiles included
    python bench/accelerator.py --dry-run  # the same script at toy shapes, to test it (2-2.5 min on 2 CPU cores)

Three parts, each in its own process under its own time limit, so that one slow compile cannot eat the others'
time, an out-of-memory error ends only its own part, and each process's peak device memory is its own:
  (a) the paper's point: `bench/run.py --dtype bfloat16 --no-scaling --no-eval --methods ...`, i.e. the T5 v1.1-base
      shape and a BERT-base instance encoder with random weights, B = 32, T = 256, S = 32, L = 64, K = 100, a
      bfloat16 backbone: step times, examples/s, MFU against the measured bfloat16 matmul peak, and the SharPT /
      PromptTuning ratios. The scaling sweeps (two dozen more compiles) and eval throughput do not fit the time, and
      PEFT is left out: `bench/run.py` runs it on the CPU even on a GPU machine, which would put minutes of host
      PyTorch beside device steps.
  (b) one train step of the T5-XL shape (`shapes.T5_SHAPES["xl"]`: d_model 2048, d_ff 5120, 24 + 24 layers, 32
      heads of 64, gated GELU, vocab 32128) at the same point, for SharPT's target stage and for PromptTuning,
      at B = 32, or at B = 16 where 32 runs out of memory: step time, examples/s, compile time, peak device
      memory, and MFU against (a)'s bfloat16 matmul peak. The model is initialised inside one jitted program
      (its ~3B weights are drawn on the device) and stores its frozen weights in the compute dtype, as the
      trainer does (`sharpt_jax.build.build_model`; `bench/run.py` keeps them in float32).
  (c) a markdown table to stdout and to `<out>/<device-kind>.md`, every number (and each part's command and
      status) to the `.json` beside it. `--out` defaults to bench/results/accelerator, with `--dry-run` to
      bench/out/accelerator (not committed).

The parent process never touches a device itself (a TPU is owned by one process at a time); a first child
reports the device kind and versions, and the full run stops there if JAX found no GPU or TPU.
"""

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
from flax import nnx  # noqa: E402

from bench import flops, run, run_report, shapes  # noqa: E402
from sharpt_jax import optim, train  # noqa: E402
from sharpt_jax.models.sharpt import SharPT  # noqa: E402

SCRIPT = str(Path(__file__).resolve())  # The parts' processes run it again, from ROOT.
# (b): the target-stage step of SharPT and of its baseline.
STEP_METHODS = ("sharpt", "prompt_tuning")
# The shapes of (b) besides B: the real one and the dry run's CPU-sized stand-in.
STEP_SHAPES = {
    "xl": dict(t5="xl", encoder="base", input_len=256, target_len=32),
    "quick": dict(t5="quick", encoder="quick", input_len=64, target_len=16),
}
PROMPT_LEN, NUM_SKILLS, INSTANCE_LEN = 64, 100, 64  # As at bench/run.py's base point.
OUT_OF_MEMORY = ("resource_exhausted", "out of memory")  # What XLA's errors say on GPU and TPU (lower-cased).
PROBE_LIMIT_S = 120  # Device start-up alone; generous, it is one call.


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one invocation runs and how long each part may take (seconds)."""

    run_args: tuple[str, ...]  # bench/run.py's arguments for (a).
    step_shape: str  # A key of STEP_SHAPES.
    batches: tuple[int, ...]  # (b)'s batch sizes, tried in turn while the step runs out of memory.
    steps: int  # Timed steps of (b), after a warm-up step.
    paper_limit_s: int
    step_limit_s: int  # Per (method, batch) process.
    budget_s: int  # All parts together; a part gets what is left when it starts, at most its own limit.
    out: Path


# (a) times the programs whose ratios the paper's efficiency claim rests on (ModelTuning would add a compile and
# answers a different question); the dry run only two of them, to save compiles on a CPU.
BENCH = ("--dtype", "bfloat16", "--no-scaling", "--no-eval", "--methods")
# Guesses for one H200 (nothing here has been timed on an accelerator yet): 10-20 s to start a process, well under
# a minute per T5-base compile, one to two minutes per XL compile if its layers are unrolled. The limits leave
# each part slack; the budget keeps the whole under 9 minutes.
FULL = Plan(
    run_args=(*BENCH, "sharpt/source,sharpt/target,sharpt/target+cache,prompt_tuning/target"),
    step_shape="xl",
    batches=(32, 16),
    steps=10,
    paper_limit_s=300,
    step_limit_s=180,
    budget_s=525,
    out=ROOT / "bench" / "results" / "accelerator",
)
DRY = Plan(
    run_args=(*BENCH, "sharpt/target,prompt_tuning/target", "--quick", "--steps", "2"),
    step_shape="quick",
    batches=(8, 4),
    steps=2,
    paper_limit_s=240,
    step_limit_s=120,
    budget_s=480,
    out=ROOT / "bench" / "out" / "accelerator",
)


# ---------------------------------------------------------------------------------------------
# Children: the device probe and one train step of (b).
# ---------------------------------------------------------------------------------------------


def device_info() -> dict:
    """The backend, device kind and count, and the versions that produced the numbers."""
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
    }


def build_on_device(t5_config, encoder_config, point: shapes.Point, dtype) -> SharPT:
    """`shapes.build`'s model with the trainer's storage policy (frozen T5 and encoder weights in the compute
    dtype), its random initialisers run by nnx.jit on the device, so the weights never pass through host memory."""
    return nnx.jit(lambda: shapes.build(t5_config, encoder_config, point, dtype, param_dtype=dtype))()


def measure_step(method: str, shape: str, batch: int, dtype: str, steps: int) -> dict:
    """Compiles and times one target-stage train step (`train.make_train_step`, jitted with donation, as in
    `bench/run.py`); returns its times, model FLOPs, compiled memory and the device's peak memory."""
    t5_config = shapes.T5_SHAPES[STEP_SHAPES[shape]["t5"]]
    encoder_config = shapes.BERT_SHAPES[STEP_SHAPES[shape]["encoder"]]
    point = shapes.Point(
        method,
        "target",
        batch,
        input_len=STEP_SHAPES[shape]["input_len"],
        target_len=STEP_SHAPES[shape]["target_len"],
        prompt_len=PROMPT_LEN,
        num_skills=NUM_SKILLS,
        instance_len=INSTANCE_LEN,
    )
    start = time.perf_counter()
    model = build_on_device(t5_config, encoder_config, point, jnp.dtype(dtype))
    graphdef, trainable, frozen = optim.split_model(model, point.method, point.stage)
    del model
    optimizer = optim.make_optimizer("adam", run.LEARNING_RATE, warmup_steps=0)
    step_fn = train.make_train_step(graphdef, optimizer, optim.learning_rate_schedule(run.LEARNING_RATE, 0))
    state = train.init_train_state(trainable, optimizer)
    batch_arrays = jax.device_put(run.make_batch(point, t5_config.vocab_size, encoder_config))
    key = train.dropout_key(0)
    jax.block_until_ready((state, frozen, batch_arrays))
    init_s = time.perf_counter() - start

    start = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=(0,)).lower(state, frozen, batch_arrays, key).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()

    def one_step():
        nonlocal state
        state, metrics = compiled(state, frozen, batch_arrays, key)
        jax.block_until_ready((state, metrics))

    one_step()  # Warm-up: the first call also transfers and allocates.
    step_s = run.median_seconds(one_step, steps)
    stats = jax.devices()[0].memory_stats() or {}  # None on a CPU.
    return {
        "method": f"{method}/target",
        "point": dataclasses.asdict(point),
        "t5": dataclasses.asdict(t5_config),
        "dtype": dtype,
        "init_s": init_s,
        "compile_s": compile_s,
        "step_s": step_s,
        "examples_per_s": batch / step_s,
        "tokens_per_s": batch * (point.input_len + point.target_len) / step_s,
        "model_flops": flops.train_step_flops(t5_config, encoder_config, point)["total"],
        "trainable_params": optim.count_params(trainable),
        "frozen_bytes": flops.tree_bytes(frozen),
        "argument_bytes": memory.argument_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "bytes_limit": stats.get("bytes_limit"),
    }


# ---------------------------------------------------------------------------------------------
# The parent: run the parts, then the report.
# ---------------------------------------------------------------------------------------------


def run_child(args: list[str], limit_s: float, stderr_path: Path) -> tuple[str, float]:
    """Runs `python ARGS` in the repository root, its stdout passed through and its stderr kept in
    `stderr_path`; returns (status, seconds). Status is "ok", "out of memory", "timed out after N s" or
    "failed (exit N): last stderr line"; the child is killed at the limit."""
    start = time.perf_counter()
    with stderr_path.open("w") as stderr:
        try:
            code = subprocess.run([sys.executable, *args], cwd=ROOT, stderr=stderr, timeout=limit_s).returncode
        except subprocess.TimeoutExpired:
            return f"timed out after {limit_s:.0f} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if code == 0:
        return "ok", seconds
    lines = [line for line in stderr_path.read_text(errors="replace").splitlines() if line.strip()]
    print("\n".join(["  stderr (last lines):", *lines[-15:]]), flush=True)
    if any(word in line.lower() for line in lines for word in OUT_OF_MEMORY):
        return "out of memory", seconds
    return f"failed (exit {code}): {lines[-1][:160] if lines else ''}", seconds


def git_commit() -> str | None:
    """The checked-out commit, with "+changes" when the work tree differs from it; None outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def paper_point_rows(result: dict) -> tuple[list[list], list[str], list[float]]:
    """(a)'s method rows and its ratio columns from bench/run.py's JSON."""
    rows = [
        [name, r["step_s"] * 1e3, r["examples_per_s"], r["tokens_per_s"], r["mfu"], r["compile_s"]]
        for name, r in result["methods"].items()
    ]
    ratios = [key for key in run.OVER_PROMPT_TUNING.values() if key in result]
    return rows, ratios, [result[key] for key in ratios]


def step_row(record: dict, peak_flops: float | None) -> list:
    """One row of (b)'s table; "-" where the step did not run or the device keeps no memory statistics."""
    r = record.get("result")
    if r is None:
        return [record["method"], record["batch"], record["status"], *["-"] * 7]

    def gib(n):
        return n / 2**30 if n is not None else "-"

    mfu = r["model_flops"] / r["step_s"] / peak_flops if peak_flops else "-"
    return [
        record["method"],
        record["batch"],
        record["status"],
        r["step_s"] * 1e3,
        r["examples_per_s"],
        r["tokens_per_s"],
        r["compile_s"],
        gib(r["peak_bytes"]),
        gib(r["temp_bytes"]),
        mfu,
    ]


def report(record: dict) -> str:
    """The markdown of the whole run (see the module docstring, part (c))."""
    device, paper, step = record["device"], record["paper_point"], record["step"]
    lines = [
        f"# Accelerator benchmark: {device['device_kind']}",
        "",
        f"`{record['command']}` on {record['date']} at commit {record['commit']}: "
        f"{device['device_count']} x {device['device_kind']} "
        f"({device['backend']}; one device used), jax {device['jax']}, jaxlib {device['jaxlib']}, "
        f"flax {device['flax']}; {record['wall_s']:.0f} s in all.",
        "",
        "## (a) The paper's point",
        "",
        f"`{paper['command']}`: {paper['status']} ({paper['seconds']:.0f} s).",
    ]
    peak_flops = None
    if result := paper.get("result"):
        peak_flops = result["peak_flops"]["bfloat16"]
        base = result["settings"]["base"]
        lines += [
            f"T5 d_model {result['settings']['t5']['d_model']}, {result['settings']['t5']['num_layers']}+"
            f"{result['settings']['t5']['num_decoder_layers']} layers; instance encoder hidden "
            f"{result['settings']['encoder']['hidden_size']}; B={base['batch']}, T={base['input_len']}, "
            f"S={base['target_len']}, L={base['prompt_len']}, K={base['num_skills']}, {result['settings']['dtype']} "
            f"backbone; measured bfloat16 matmul peak {peak_flops / 1e12:.4g} TFLOP/s (the MFU denominator).",
            "",
        ]
        rows, ratio_names, ratios = paper_point_rows(result)
        lines.append(run_report.table(["method", "step ms", "examples/s", "tokens/s", "MFU", "compile s"], rows))
        if ratios:
            lines += ["", run_report.table(ratio_names, [ratios])]
    s = step["shape"]
    lines += [
        "",
        f"## (b) One train step at the {step['shape_name']} shape",
        "",
        f"T5 d_model {s['t5']['d_model']}, d_ff {s['t5']['d_ff']}, {s['t5']['num_layers']}+"
        f"{s['t5']['num_decoder_layers']} layers, {s['t5']['num_heads']} heads of {s['t5']['d_kv']}, vocab "
        f"{s['t5']['vocab_size']}; instance encoder hidden {s['encoder']['hidden_size']}; T={s['input_len']}, "
        f"S={s['target_len']}, L={PROMPT_LEN}, K={NUM_SKILLS}; bfloat16, frozen weights stored in bfloat16; "
        f"median of {step['steps']} steps; MFU against (a)'s bfloat16 matmul peak. Peak device memory is the "
        "process's (weights, optimizer state, batch and the step's temporaries); compiled temp is XLA's count for "
        "the step.",
        "",
        run_report.table(
            [
                "method",
                "batch",
                "status",
                "step ms",
                "examples/s",
                "tokens/s",
                "compile s",
                "peak device GiB",
                "compiled temp GiB",
                "MFU",
            ],
            [step_row(r, peak_flops) for r in step["runs"]],
        ),
    ]
    done = {(r["method"], r["batch"]): r["result"]["step_s"] for r in step["runs"] if r["result"]}
    for batch in sorted({b for _, b in done}):
        if ("sharpt/target", batch) in done and ("prompt_tuning/target", batch) in done:
            ratio = done["sharpt/target", batch] / done["prompt_tuning/target", batch]
            lines += ["", f"sharpt/target over prompt_tuning/target at B={batch}: {ratio:.4g}"]
    return "\n".join(lines) + "\n"


def measure_steps(plan: Plan, limit, tmp: Path) -> dict:
    """Part (b): one train step per method at the plan's shape, each in its own process, from the largest batch
    down while it runs out of memory; `limit(cap)` is the time left for a part."""
    shape = STEP_SHAPES[plan.step_shape]
    runs = []
    for method in STEP_METHODS:
        for batch in plan.batches:
            entry = {"method": f"{method}/target", "batch": batch, "result": None}
            runs.append(entry)
            if limit(plan.step_limit_s) < 20:
                entry.update(status="skipped: out of time", seconds=0.0)
                break
            step_args = [SCRIPT, "--child", "step", "--method", method, "--shape", plan.step_shape]
            step_args += ["--batch", str(batch), "--steps", str(plan.steps), "--json", str(tmp / "step.json")]
            print(f"# (b) {method}/target at {plan.step_shape}, B={batch}", flush=True)
            status, seconds = run_child(step_args, limit(plan.step_limit_s), tmp / "err")
            entry.update(status=status, seconds=seconds)
            if status == "ok":
                entry["result"] = json.loads((tmp / "step.json").read_text())
            if status != "out of memory":
                break
    return {
        "shape_name": {"xl": "T5-XL", "quick": "quick (dry-run stand-in)"}[plan.step_shape],
        "shape": {
            **shape,
            "t5": dataclasses.asdict(shapes.T5_SHAPES[shape["t5"]]),
            "encoder": dataclasses.asdict(shapes.BERT_SHAPES[shape["encoder"]]),
        },
        "steps": plan.steps,
        "runs": runs,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="toy shapes on any machine, CPU included (~2 min)")
    parser.add_argument("--out", type=Path, help="folder for <device-kind>.md and .json (default: see above)")
    # The parts' own processes call this script again with these.
    parser.add_argument("--child", choices=["probe", "step"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=STEP_METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=list(STEP_SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "probe":
        args.json.write_text(json.dumps(device_info()))
        return
    if args.child == "step":
        result = measure_step(args.method, args.shape, args.batch, "bfloat16", args.steps)
        print(f"  {result['method']} B={args.batch}: {result['step_s'] * 1e3:.1f} ms", flush=True)
        args.json.write_text(json.dumps(result))
        return

    plan = DRY if args.dry_run else FULL
    out = args.out or plan.out
    start = time.perf_counter()
    deadline = start + plan.budget_s

    def limit(cap: float) -> float:
        return min(cap, deadline - time.perf_counter())

    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "dry_run": args.dry_run,
        "budget_s": plan.budget_s,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # --- Probe: which device, which versions --------------------------------------------
        status, _ = run_child(
            [SCRIPT, "--child", "probe", "--json", str(tmp / "probe.json")], PROBE_LIMIT_S, tmp / "err"
        )
        if status != "ok":
            sys.exit(f"the device probe {status}")
        record["device"] = json.loads((tmp / "probe.json").read_text())
        print(f"# {record['device']}", flush=True)
        if record["device"]["backend"] == "cpu" and not args.dry_run:
            sys.exit(
                "JAX found no GPU or TPU (backend cpu): the full shapes take hours here; --dry-run tests the script"
            )

        # --- (a) The paper's point ------------------------------------------------------------
        command = shlex.join(["python", "bench/run.py", *plan.run_args])
        print(f"# (a) {command}", flush=True)
        run_args = ["bench/run.py", *plan.run_args, "--json", str(tmp / "paper.json")]
        status, seconds = run_child(run_args, limit(plan.paper_limit_s), tmp / "err")
        record["paper_point"] = {
            "command": command,
            "status": status,
            "seconds": seconds,
            "result": json.loads((tmp / "paper.json").read_text()) if status == "ok" else None,
        }

        # --- (b) One train step at the XL shape, per method, the largest batch that fits -------
        record["step"] = measure_steps(plan, limit, tmp)
    record["wall_s"] = time.perf_counter() - start

    # --- (c) Report ---------------------------------------------------------------------------
    markdown = report(record)
    print("\n" + markdown)
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^a-z0-9]+", "-", record["device"]["device_kind"].lower()).strip("-")
    (out / f"{name}.md").write_text(markdown)
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    print(f"written: {out / name}.md and .json")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
