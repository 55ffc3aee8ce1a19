"""Orbax checkpoints of the train state, with a JSON metadata record, under `WORKDIR/checkpoints/<step>`.

A checkpoint holds the train state the caller passes, the plain pytree {"trainable": nnx.State, "opt": optax
state, "step": int32 []}, and never the frozen backbone (its folder and `folder_checksum` go in the metadata
instead). It is written as three Orbax items:
  params/    state["trainable"]: kept in every checkpoint, since evaluation scores each one
  resume/    the rest of the state (optimizer state, step): only the last two checkpoints keep it, because only
             a resume reads it, and the one before the latest takes over when the latest cannot be read; once a
             save is complete, the resume/ of checkpoints older than the previous one is deleted (a ModelTuning
             run with Adam would otherwise store its optimizer state twice over at every save)
  metadata/  free-form JSON: the step, what resumes the data stream, the models' paths and checksums, the config

Saves are synchronous (the call returns once the step is on disk: simple, and the order of files on disk
follows the train loop) and atomic: Orbax writes into a temporary folder and renames it to `<step>` once
complete, so a crash mid-save leaves the earlier checkpoints intact (the previous one still with its resume
state) and no partial step is ever listed (the next `Checkpoints` on the folder deletes the leftover temporary
folder, at the latest before its first save). The save cadence is the caller's.

A checkpoint can still be damaged after it was listed: a file truncated by a full disk or an interrupted copy,
files deleted by hand. Every read of a checkpoint raises `DamagedCheckpoint`, with one line that names it and
the cause, when Orbax cannot read it; the trainer then resumes from the one before (`set_aside` moves the
damaged one out of the listing, so the resumed run can save that step again) and the eval mode skips it.
"""

import functools
import hashlib
import json
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from sharpt_jax import storage

PARAMS, RESUME, METADATA = "params", "resume", "metadata"
# The files that define a Hugging Face model: its config and weights (safetensors, Flax msgpack or torch).
MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "flax_model*.msgpack", "pytorch_model*.bin")
# Where `folder_checksum` keeps a model folder's digest, next to its files.
CHECKSUM_CACHE = ".sharpt_checksum.json"
_CHUNK = 1 << 20
KEEP_RESUME = 2  # Checkpoints that keep their resume state: the latest, and one to fall back on.
DAMAGED = "damaged_checkpoints"  # Beside checkpoints/: where `set_aside` moves a damaged checkpoint.


class DamagedCheckpoint(RuntimeError):
    """A listed checkpoint that cannot be read; the message is one line naming it and the cause."""


class Checkpoints:
    """The checkpoints of one run: `Checkpoints(workdir).save(step, state, metadata)`, `.restore(...)`."""

    def __init__(self, workdir: str | os.PathLike):
        self.directory = storage.absolute(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        # PyTree handlers (not the Standard ones) because they also restore a part of the tree.
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                PARAMS: ocp.PyTreeCheckpointHandler(),
                RESUME: ocp.PyTreeCheckpointHandler(),
                METADATA: ocp.JsonCheckpointHandler(),
            },
        )

    def save(self, step: int, state: dict, metadata: dict) -> None:
        """Writes `state` ({"trainable": ..., anything else a resume needs}) and `metadata` (JSON) as step `step`,
        then drops the resume state of the checkpoints before the last `KEEP_RESUME`."""
        items = {
            PARAMS: ocp.args.PyTreeSave(state["trainable"]),
            RESUME: ocp.args.PyTreeSave({k: v for k, v in state.items() if k != "trainable"}),
            METADATA: ocp.args.JsonSave(metadata),
        }
        if not self._manager.save(int(step), args=ocp.args.Composite(**items), force=True):
            raise RuntimeError(f"{self.directory}: checkpoint of step {step} was not written")
        # Every process has finished writing step `step` when save returns; one of them deletes.
        if jax.process_index() == 0:
            for earlier in self.resumable_steps()[:-KEEP_RESUME]:
                storage.rmtree(self.directory / str(earlier) / RESUME)

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The last complete checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    def resumable_steps(self) -> list[int]:
        """The steps of the checkpoints that keep their resume state (the last `KEEP_RESUME`), ascending."""
        return [step for step in self.all_steps() if (self.directory / str(step) / RESUME).is_dir()]

    def set_aside(self, step: int) -> storage.Path:
        """Moves damaged checkpoint `step` to WORKDIR/damaged_checkpoints/<step> (replacing an earlier one there),
        out of the listing; returns where it went. Every process calls it; the first moves."""
        target = self.directory.parent / DAMAGED / str(step)
        if jax.process_index() == 0:
            if target.exists():
                storage.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.move(self.directory / str(step), target)
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self._manager.reload()
        return target

    def metadata(self, step: int) -> dict:
        return self._restore(step, {METADATA: ocp.args.JsonRestore()})[METADATA]

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """The train state and metadata of checkpoint `step` (one of `resumable_steps()`).

        Args:
          step: one of `all_steps()`, with its resume state.
          abstract_state: the train state's structure with `jax.ShapeDtypeStruct` leaves carrying the
            shardings to restore onto (e.g. `jax.eval_shape` of the init, with the shardings set), or arrays.

        Returns:
          (state, metadata): state has the structure, dtypes and shardings of `abstract_state`.
        """
        if step in self.all_steps() and step not in self.resumable_steps():
            raise FileNotFoundError(
                f"{self.directory}: checkpoint {step} keeps only its parameters (the resume state lives in the "
                f"last {KEEP_RESUME} checkpoints, {self.resumable_steps()})"
            )
        rest = {k: v for k, v in abstract_state.items() if k != "trainable"}
        restored = self._restore(
            step,
            {
                PARAMS: _pytree_restore(abstract_state["trainable"], partial=False),
                RESUME: _pytree_restore(rest, partial=False),
                METADATA: ocp.args.JsonRestore(),
            },
        )
        return {"trainable": restored[PARAMS], **restored[RESUME]}, restored[METADATA]

    def restore_params(self, step: int, abstract_trainable):
        """Restores only trainable parameters of checkpoint `step` (e.g. the codebook of a source run).

        `abstract_trainable` (a state with ShapeDtypeStruct or array leaves) may hold any subset of the saved
        trainable parameters, under the same paths; the resume state is not read.
        """
        return self._restore(step, {PARAMS: _pytree_restore(abstract_trainable, partial=True)})[PARAMS]

    def _restore(self, step: int, args: dict) -> dict:
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint of step {step}; has {self.all_steps()}")
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as err:  # Orbax and TensorStore raise many types for missing and truncated files.
            cause = (str(err).strip().splitlines() or [""])[0][:300]
            raise DamagedCheckpoint(
                f"checkpoint {step} in {self.directory} cannot be read ({type(err).__name__}: {cause})"
            ) from err

    def close(self) -> None:
        self._manager.close()


def _pytree_restore(target, partial: bool) -> ocp.args.PyTreeRestore:
    # restore_args from the target carry its shardings and dtypes to the restored arrays.
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    return ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=partial
    )


# ---------------------------------------------------------------------------------------------
# Identity of the frozen models.
# ---------------------------------------------------------------------------------------------


def _update(digest, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)


def file_checksum(path: str | os.PathLike) -> str:
    """The sha256 hex digest of one file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    _update(digest, Path(path))
    return digest.hexdigest()


def folder_checksum(folder: str | os.PathLike) -> str:
    """The sha256 over a Hugging Face model folder's config and weights files (`MODEL_FILES`), in name order.

    Each file contributes its name, size and bytes, so renaming or changing any of them changes the digest;
    tokenizer files, READMEs and the like do not count. The digest is hashed once per folder, not by every
    process, run, resume and eval: it is kept in `CHECKSUM_CACHE` inside the folder with the files' names, sizes
    and modification times, and reused while they are unchanged (so a copy that keeps them, `rsync -a`, keeps
    it). A read-only folder without that file is hashed once per process.
    """
    folder = Path(folder)
    files = sorted({p for pattern in MODEL_FILES for p in folder.glob(pattern) if p.is_file()})
    if not any(p.name != "config.json" for p in files):
        raise FileNotFoundError(f"{folder}: no weights files ({', '.join(MODEL_FILES[1:])})")
    stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = folder / CHECKSUM_CACHE
    try:
        saved = json.loads(cache.read_text())
        if saved["files"] == stats:
            return saved["sha256"]
    except (OSError, ValueError, KeyError, TypeError):  # None yet, or unreadable: hash the files.
        pass
    digest = _files_checksum(tuple((str(p), size, mtime) for p, (_, size, mtime) in zip(files, stats, strict=True)))
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:  # Written whole, then renamed: a process reading it concurrently sees the old file or the new one.
        tmp.write_text(json.dumps({"files": stats, "sha256": digest}) + "\n")
        tmp.replace(cache)
    except OSError:  # A read-only folder: the digest is still kept for this process (`_files_checksum`).
        tmp.unlink(missing_ok=True)
    return digest


@functools.lru_cache(maxsize=16)
def _files_checksum(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, size, _ in files:
        digest.update(f"{Path(path).name}\0{size}\0".encode())
        _update(digest, Path(path))
    return digest.hexdigest()
