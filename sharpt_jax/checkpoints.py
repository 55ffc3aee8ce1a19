"""Orbax checkpoints of the train state, with a JSON metadata record, under `WORKDIR/checkpoints/<step>`.

A checkpoint holds the train state the caller passes, the plain pytree {"trainable": nnx.State, "opt": optax
state, "step": int32 []}, and never the frozen backbone (its folder and `folder_checksum` go in the metadata
instead). The metadata dict is free-form JSON: the step, what resumes the data stream, the backbone and
encoder paths and checksums, the config.

Saves are synchronous (the call returns once the step is on disk: simple, and the order of files on disk
follows the train loop) and atomic: Orbax writes into a temporary folder and renames it to `<step>` once
complete, so a crash mid-save leaves the earlier checkpoints intact and no partial step is ever listed (the
next `Checkpoints` on the folder deletes the leftover temporary folder, at the latest before its first save).
Every checkpoint is kept: evaluation scores each one. The save cadence is the caller's.
"""

import functools
import hashlib
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp

STATE, METADATA = "state", "metadata"
# The files that define a Hugging Face model: its config and weights (sharded or not, safetensors or torch).
MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
_CHUNK = 1 << 20


class Checkpoints:
    """The checkpoints of one run: `Checkpoints(workdir).save(step, state, metadata)`, `.restore(...)`."""

    def __init__(self, workdir: str | os.PathLike):
        self.directory = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        # PyTree handlers (not the Standard ones) because they also restore a part of the tree.
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={STATE: ocp.PyTreeCheckpointHandler(), METADATA: ocp.JsonCheckpointHandler()},
        )

    def save(self, step: int, state, metadata: dict) -> None:
        """Writes `state` (any pytree of arrays, nnx.State included) and `metadata` (JSON) as step `step`."""
        saved = self._manager.save(
            int(step),
            args=ocp.args.Composite(**{STATE: ocp.args.PyTreeSave(state), METADATA: ocp.args.JsonSave(metadata)}),
            force=True,
        )
        if not saved:
            raise RuntimeError(f"{self.directory}: checkpoint of step {step} was not written")

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The last complete checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    def metadata(self, step: int) -> dict:
        return self._restore(step, {METADATA: ocp.args.JsonRestore()})[METADATA]

    def restore(self, step: int, abstract_state) -> tuple[object, dict]:
        """The train state and metadata of checkpoint `step`.

        Args:
          step: one of `all_steps()`.
          abstract_state: the train state's structure with `jax.ShapeDtypeStruct` leaves carrying the
            shardings to restore onto (e.g. `jax.eval_shape` of the init, with the shardings set), or arrays.

        Returns:
          (state, metadata): state has the structure, dtypes and shardings of `abstract_state`.
        """
        restored = self._restore(
            step, {STATE: _pytree_restore(abstract_state, partial=False), METADATA: ocp.args.JsonRestore()}
        )
        return restored[STATE], restored[METADATA]

    def restore_params(self, step: int, abstract_trainable):
        """Restores only trainable parameters of checkpoint `step` (e.g. the codebook of a source run).

        `abstract_trainable` (a state with ShapeDtypeStruct or array leaves) may hold any subset of the saved
        trainable parameters, under the same paths; the optimizer state is not read.
        """
        item = _pytree_restore({"trainable": abstract_trainable}, partial=True)
        return self._restore(step, {STATE: item})[STATE]["trainable"]

    def _restore(self, step: int, args: dict) -> dict:
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint of step {step}; has {self.all_steps()}")
        return self._manager.restore(step, args=ocp.args.Composite(**args))

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
    tokenizer files, READMEs and the like do not count. The digest of an unchanged folder (same files, sizes and
    modification times) is computed once per process: experiments build the same frozen models many times.
    """
    folder = Path(folder)
    files = sorted({p for pattern in MODEL_FILES for p in folder.glob(pattern) if p.is_file()})
    if not any(p.name != "config.json" for p in files):
        raise FileNotFoundError(f"{folder}: no weights files ({', '.join(MODEL_FILES[1:])})")
    return _files_checksum(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.lru_cache(maxsize=16)
def _files_checksum(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, size, _ in files:
        digest.update(f"{Path(path).name}\0{size}\0".encode())
        _update(digest, Path(path))
    return digest.hexdigest()
