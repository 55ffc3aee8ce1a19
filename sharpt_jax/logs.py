"""What a training run logs: device-side sums of the step's metrics over a window, their summary on the host,
the progress line, metrics.jsonl, and the TensorBoard writer (which the eval mode's scores reach too).

The jitted step adds each step's metrics to the window's sums (`accumulate`, no host sync); the loop fetches them
once per logging window (`summarize`), so logging costs one device-to-host transfer per window.
"""

import json
import math
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers

from sharpt_jax import storage

SUMMED = ("loss", "lm_loss", "codebook_loss", "grad_norm")


def zero_totals(num_skills: int = 0, restart_every: int = 0) -> dict:
    """The window's sums at zero; `num_skills` K > 0 adds the skill counts [K] (a method with a codebook)."""
    totals = {name: jnp.zeros((), jnp.float32) for name in SUMMED}
    totals["nonfinite_steps"] = jnp.zeros((), jnp.int32)
    if num_skills:
        totals["skill_counts"] = jnp.zeros((num_skills,), jnp.int32)
    if restart_every:
        totals["restarted_skills"] = jnp.zeros((), jnp.int32)
    return totals


def accumulate(totals: dict, metrics: dict) -> dict:
    """Adds one step's metrics to the window's sums (inside the jitted step: no host sync)."""
    out = {name: totals[name] + metrics[name] for name in SUMMED}
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    out["nonfinite_steps"] = totals["nonfinite_steps"] + (~finite).astype(jnp.int32)
    for name in ("skill_counts", "restarted_skills"):
        if name in totals:
            out[name] = totals[name] + metrics[name]
    return out


def summarize(totals: dict, num_steps: int, learning_rate: float) -> dict:
    """Window means, plus for SharPT how the batch used the codebook:
    skill_perplexity = exp(entropy of the skill frequencies) (1 = one skill for all, K = uniform use) and
    dead_skills = how many of the K skills no example chose in the window; with restarts, restarted_skills =
    how many dead skills were re-seated in the window."""
    out = {name: float(totals[name]) / num_steps for name in SUMMED}
    out["learning_rate"] = learning_rate
    out["nonfinite_steps"] = int(totals["nonfinite_steps"])
    if "skill_counts" in totals:
        counts = np.asarray(totals["skill_counts"], np.float64)
        p = counts[counts > 0] / counts.sum()
        out["skill_perplexity"] = float(np.exp(-np.sum(p * np.log(p))))
        out["dead_skills"] = int(np.sum(counts == 0))
    if "restarted_skills" in totals:
        out["restarted_skills"] = int(totals["restarted_skills"])
    return out


def progress_line(metrics: dict, num_steps: int, seconds_per_step: float) -> str:
    """One line of the window's numbers and the time left at `seconds_per_step`."""
    step = metrics["step"]
    left = int(seconds_per_step * (num_steps - step))
    line = (
        f"step {step}/{num_steps} ({100 * step / num_steps:.0f}%) loss {metrics['loss']:.4f} "
        f"lr {metrics['learning_rate']:.3g} {metrics['examples_per_sec']:.1f} ex/s"
    )
    if "skill_perplexity" in metrics:
        line += f" skills ppl {metrics['skill_perplexity']:.1f} dead {metrics['dead_skills']}"
    if "restarted_skills" in metrics:
        line += f" restarted {metrics['restarted_skills']}"
    return line + f" | {left // 3600}h{left // 60 % 60:02d}m{left % 60:02d}s left"


class MetricsFile:
    """metrics.jsonl, append-only; on resume, lines past the restored step (written after the checkpoint by the
    run that was killed) are dropped so the file reads as one uninterrupted run.

    An object store cannot append to an object: there the lines are kept here and the whole file is uploaded
    again at each write (one upload per logging window, of a few hundred bytes per window so far)."""

    def __init__(self, path: storage.Path, keep_until: int, enabled: bool):
        self.path, self.enabled, self.lines = path, enabled, []
        if enabled and path.exists():
            self.lines = [line + "\n" for line in path.read_text().splitlines() if _step_of(line) <= keep_until]
            storage.write_text(path, "".join(self.lines))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if storage.is_local(self.path):
            with open(self.path, "a") as f:
                f.write(line)
        else:
            self.lines.append(line)
            storage.write_text(self.path, "".join(self.lines))


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # A line cut by the kill.


def tensorboard_writer(workdir: storage.Path) -> metric_writers.SummaryWriter | None:
    """The writer of the run's TensorBoard events, workdir/tensorboard (`tensorboard --logdir workdir`), on the
    first host; None on the others. Training and the eval mode each add their own events file there."""
    if jax.process_index() != 0:
        return None
    folder = workdir / "tensorboard"
    return metric_writers.SummaryWriter(str(folder)) if storage.is_local(folder) else _UploadingWriter(folder)


class _UploadingWriter(metric_writers.SummaryWriter):
    """TensorBoard events for a folder on an object store: written to a local folder, and each events file
    uploaded whole to `folder` at every flush (the logging cadence), through the same layer as every other file
    (an events file grows by about a kilobyte per logging step: a paper run's stays near a megabyte).

    TensorFlow's own gs:// client could write there directly, but only to GCS, and it cannot be pointed at an
    emulator; through `storage`, events reach every store the rest of the run reaches, the tested one included."""

    def __init__(self, folder: storage.Path):
        self.folder, self.local = folder, pathlib.Path(tempfile.mkdtemp(prefix="tensorboard."))
        super().__init__(str(self.local))

    def flush(self) -> None:
        super().flush()
        for events in self.local.iterdir():  # One file per writer; its name is unique (time, host, pid).
            with storage.replacing(self.folder / events.name) as tmp:
                shutil.copyfile(events, tmp)

    def close(self) -> None:
        self.flush()
        super().close()
        shutil.rmtree(self.local, ignore_errors=True)
