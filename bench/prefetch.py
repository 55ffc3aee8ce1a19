"""A slow input pipeline hidden behind the step by `sharpt_jax.data.prefetch`, on CPU.

    python bench/prefetch.py                     # ~1 minute
    python bench/prefetch.py --json bench/results/prefetch/prefetch.json

The step is a jitted chain of matmuls over a [B, D] batch on 8 CPU devices (mesh 8x1, batch split over 'data'),
sized to take about `--step-ms`; the input is an iterator that sleeps `--input-ms` per batch (standing for
reading and tokenising it, which holds the Python thread for the Python part of the work) and then places the
batch on the devices (`data.to_global`). The loop is the trainer's: one step per batch, the metrics fetched to
the host every `log_every` steps (1: every step, as a loop that reads each loss; 10: the trainer's windows).
Each cell is milliseconds per step over `--steps` steps after a warm-up; "ideal" is max(input, step).
Without prefetch the loop waits for the input whenever it has to wait for the device anyway (at a log, or when
the dispatch of the next step blocks); with prefetch a thread keeps two placed batches ready.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sharpt_jax import data, sharding  # noqa: E402

BATCH, WIDTH = 64, 512


def slow_batches(mesh, input_ms: float):
    """Endless global batches [BATCH, WIDTH], each after `input_ms` of sleep."""
    rng = np.random.default_rng(0)
    while True:
        time.sleep(input_ms / 1000)
        yield data.to_global({"x": rng.standard_normal((BATCH, WIDTH), np.float32)}, mesh)


def make_step(repeats: int):
    @jax.jit
    def step(w, batch):
        x = batch["x"]
        for _ in range(repeats):
            x = jnp.tanh(x @ w)
        return w + 1e-6 * jnp.mean(x), jnp.mean(x)

    return step


def calibrate(mesh, step_ms: float) -> int:
    """The number of matmuls that makes one step take about `step_ms` milliseconds."""
    w = jnp.eye(WIDTH)
    batch = next(slow_batches(mesh, 0))
    for repeats in (8, 16, 32, 64, 128, 256, 512, 1024):
        step = make_step(repeats)
        jax.block_until_ready(step(w, batch))
        start = time.perf_counter()
        for _ in range(5):
            w2, _ = step(w, batch)
        jax.block_until_ready(w2)
        if (time.perf_counter() - start) / 5 * 1000 >= step_ms:
            return repeats
    return repeats


def time_loop(mesh, step, input_ms: float, log_every: int, steps: int, prefetch: bool) -> float:
    """Milliseconds per step of the trainer's loop shape."""
    batches = slow_batches(mesh, input_ms)
    if prefetch:
        batches = data.prefetch(batches)
    w = jnp.eye(WIDTH)
    for _ in range(3):  # Warm-up: compiled, queue filled.
        w, loss = step(w, next(batches))
    jax.block_until_ready(w)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        w, loss = step(w, next(batches))
        if i % log_every == 0:
            jax.device_get(loss)
    jax.block_until_ready(w)
    elapsed = (time.perf_counter() - start) / steps * 1000
    batches.close()
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-ms", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    mesh = sharding.make_mesh("8,1")
    repeats = calibrate(mesh, args.step_ms)
    step = make_step(repeats)
    step_ms = time_loop(mesh, step, 0.0, 1, args.steps, prefetch=False)
    rows = []
    print(f"step alone: {step_ms:.0f} ms ({repeats} matmuls of [{BATCH}, {WIDTH}] on mesh 8x1)")
    print(f"{'input ms':>8}  {'bound':>6}  {'log every':>9}  {'no prefetch':>11}  {'prefetch':>8}  {'ideal':>5}")
    for input_ms in (0.5 * step_ms, 1.5 * step_ms):
        for log_every in (1, 10):
            cells = [time_loop(mesh, step, input_ms, log_every, args.steps, p) for p in (False, True)]
            bound = "input" if input_ms > step_ms else "step"
            ideal = max(input_ms, step_ms)
            rows.append(dict(input_ms=input_ms, bound=bound, log_every=log_every, step_ms=step_ms,
                             no_prefetch_ms=cells[0], prefetch_ms=cells[1], ideal_ms=ideal))  # fmt: skip
            print(f"{input_ms:8.0f}  {bound:>6}  {log_every:9d}  {cells[0]:11.0f}  {cells[1]:8.0f}  {ideal:5.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"command": " ".join(["python", *sys.argv]), "devices": str(jax.devices()[0].platform), "rows": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
