"""SeqIO tasks and mixtures -> global `jax.Array` batches on the device mesh.

Every host runs the same input pipeline and holds every row of each global batch; `to_global` hands JAX, for
each of the host's devices, the rows that the batch sharding assigns to that device. Which host owns which rows
is therefore read from the sharding itself (device order follows the topology, not the process index), and the
batches, hence a run's numbers, do not depend on how many hosts run it: 2 hosts x 4 devices train and score
exactly what 1 host x 8 devices does, and a run can resume on another number of hosts. The price is that each
host tokenises the whole global batch rather than its 1 / process_count of it: on this project's 2-core CPU
machine the pipeline makes 3,000-3,500 examples/s at lengths 512/128/128 (9 ms per batch of 32, 84 ms per 256,
measured under load), prefetched while the devices run the step, and a TPU VM host has dozens of cores.

Training (`train_batches`): the training rows are shuffled with the run's seed, repeated forever and cut into
batches of global_batch_size rows (remainder dropped). The stream is a pure function of (task, lengths, batch
size, seed), so a resumed run rebuilds it and skips the batches already consumed.

Evaluation (`eval_batches`): the whole split in its canonical order (no shuffle), in batches of up to
batch_size examples, each padded with all-zero rows (so every mask and loss weight is 0 there) to
`eval_rows(batch_size, mesh)` rows, a multiple of the mesh's data axis: any eval batch size runs on any mesh, and
the scores do not depend on either. Each batch comes with its task examples (the `*_pretokenized` strings and
raw fields) for the postprocessors and metrics.

Batches hold the features of `tasks.features.SharPTFeatureConverter` as int32 arrays:
encoder_input_tokens / encoder_input_mask [B, T], decoder_input_tokens / decoder_target_tokens /
decoder_loss_weights [B, S], instance_input_tokens / instance_input_mask [B, I]; training batches with cached
instance embeddings carry instance_embedding float32 [B, m] instead of the last two (`sharpt_jax.embedding_cache`).
"""

import dataclasses
import functools
from collections.abc import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf

from sharpt_jax import sharding
from tasks import registry
from tasks.features import SharPTFeatureConverter

Batch = dict[str, jax.Array]
Lengths = Mapping[str, int]  # {"inputs": T, "targets": S, "instance_inputs": I}


@functools.cache
def keep_tensorflow_off_accelerators() -> None:
    """Hides GPUs from TensorFlow so that tf.data never takes accelerator memory that JAX needs."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as err:  # The TF runtime already started: fine only if it sees no GPU.
        if tf.config.get_visible_devices("GPU"):
            raise RuntimeError(
                "TensorFlow started with GPUs visible before sharpt_jax.data could hide them; "
                "build datasets through sharpt_jax.data first"
            ) from err


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
    """ValueError unless `batch_size` is positive and splits evenly over the mesh's 'data' axis."""
    if batch_size <= 0:
        raise ValueError(f"batch size {batch_size} is not positive")
    if batch_size % mesh.shape["data"]:
        raise ValueError(f"batch size {batch_size} does not divide over the data axis of size {mesh.shape['data']}")


def eval_rows(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """Rows of an evaluation batch of `batch_size` examples: batch_size rounded up to a multiple of the mesh's
    'data' axis (every device holds the same number of rows; the extra rows are zero padding, whose outputs
    are dropped). ValueError unless batch_size is positive."""
    if batch_size <= 0:
        raise ValueError(f"batch size {batch_size} is not positive")
    return -(-batch_size // mesh.shape["data"]) * mesh.shape["data"]


def to_global(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> Batch:
    """The rows [B, ...] of a global batch, held by every host -> global arrays [B, ...] split over 'data'.

    Each host builds only the shards of its own devices, each from the rows that the sharding assigns to it.
    """
    batch_sharding = sharding.batch_sharding(mesh)
    return {
        key: jax.make_array_from_callback(value.shape, batch_sharding, lambda index, value=value: value[index])
        for key, value in batch.items()
    }


# ---------------------------------------------------------------------------------------------
# Training stream.
# ---------------------------------------------------------------------------------------------


def train_dataset(
    task_or_mixture: str, sequence_length: Lengths, batch_size: int, seed: int, start_step: int = 0
) -> tf.data.Dataset:
    """The endless, seeded stream of training batches, from batch `start_step` on.

    Args:
      task_or_mixture: a registered seqio task or mixture, e.g. "sharpt_source_category".
      sequence_length: {"inputs": T, "targets": S, "instance_inputs": I}.
      batch_size: rows per batch.
      seed: seeds the example shuffle of every task and the mixture's sampling.
      start_step: the number of batches to leave out at the start (those a resumed run already trained on).

    Returns:
      A tf.data.Dataset of dicts of int32 arrays [batch_size, length] (the converter's features).
    """
    keep_tensorflow_off_accelerators()
    ds = seqio.get_mixture_or_task(task_or_mixture).get_dataset(
        sequence_length, split="train", shuffle=True, seed=seed, num_epochs=None
    )
    # Exact resume replays the stream: seqio tokenises before it shuffles (the shuffle buffer holds tokenised
    # examples), so the skipped examples are read and tokenised once more; skipping them here, before the
    # feature converter and batching, saves only that later work. The cost is one pass of the input pipeline
    # over start_step * batch_size examples, at tokenisation speed (thousands of examples/s per
    # core). Checkpointing the tf.data iterator instead would save that time, but a shuffle buffer of
    # tokenised examples per task makes large checkpoints, and file-reading generators cannot be saved.
    ds = ds.skip(start_step * batch_size)
    ds = SharPTFeatureConverter()(ds, sequence_length)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def train_batches(
    task_or_mixture: str,
    sequence_length: Lengths,
    global_batch_size: int,
    mesh: jax.sharding.Mesh,
    seed: int,
    start_step: int = 0,
    embeddings=None,
) -> Iterator[Batch]:
    """Endless global training batches [global_batch_size, length], sharded over the mesh's 'data' axis.

    Starting at `start_step` yields exactly the batches an uninterrupted stream yields from that step on (it
    replays the skipped part of the input pipeline: see `host_train_dataset`). With `embeddings` (an
    `embedding_cache.EmbeddingTable`), the instance tokens and mask of every row are replaced by their cached
    e0, `instance_embedding` float32 [B, m].
    """
    check_batch_size(global_batch_size, mesh)
    ds = train_dataset(task_or_mixture, sequence_length, global_batch_size, seed, start_step)
    for batch in ds.as_numpy_iterator():
        if embeddings is not None:
            batch = embeddings.replace_tokens(batch)
        yield to_global(batch, mesh)


# ---------------------------------------------------------------------------------------------
# Evaluation batches.
# ---------------------------------------------------------------------------------------------


def eval_batches(
    task: str, split: str, sequence_length: Lengths, batch_size: int, mesh: jax.sharding.Mesh
) -> Iterator[tuple[Batch, int, list[dict]]]:
    """The examples of one split in canonical order, batch_size at a time, as padded global batches.

    Every host reads the whole split (evaluation splits are small) and places the rows of its devices, so all
    hosts agree on the order and on the examples of every batch. The tokenised batches of the
    last few (task, split, lengths, batch size, task settings) are kept in host memory, so scoring the next
    checkpoint of a run (or the next run on the same split) does not rebuild the input pipeline.

    Args:
      task: a registered seqio task, e.g. "sharpt_rte".
      split: "validation", "test", ...
      sequence_length: {"inputs": T, "targets": S, "instance_inputs": I}.
      batch_size: examples per batch (the last batch may hold fewer); any positive number.
      mesh: the device mesh; batches are split over its 'data' axis.

    Yields:
      (batch, num_real_rows, examples): the global batch (dict of int32 [R, length], R = `eval_rows(batch_size,
      mesh)`) whose rows from num_real_rows on are zero padding, and the num_real_rows task examples of its real
      rows (numpy values, strings as bytes).
    """
    rows = eval_rows(batch_size, mesh)
    settings = dataclasses.astuple(registry.SETTINGS)  # A new vocabulary or data folder means other batches.
    for padded, num_real, examples in _padded_eval_batches(
        task, split, tuple(sorted(sequence_length.items())), batch_size, rows, settings
    ):
        yield to_global(padded, mesh), num_real, examples


@functools.lru_cache(maxsize=8)
def _padded_eval_batches(task: str, split: str, lengths: tuple, batch_size: int, rows: int, settings: tuple) -> tuple:
    """((global batch of numpy arrays: batch_size examples zero-padded to `rows` rows), num_real_rows, examples),
    ...)."""
    del settings  # Part of the cache key only.
    keep_tensorflow_off_accelerators()
    lengths = dict(lengths)
    ds = seqio.get_mixture_or_task(task).get_dataset(lengths, split=split, shuffle=False, num_epochs=1).cache()
    examples = list(ds.as_numpy_iterator())  # Fills the cache that the converter reads next.
    converted = SharPTFeatureConverter()(ds, lengths).batch(batch_size)
    out = []
    for start, batch in zip(range(0, len(examples), batch_size), converted.as_numpy_iterator(), strict=True):
        real = examples[start : start + batch_size]
        pad = rows - len(real)
        out.append(({k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}, len(real), real))
    return tuple(out)
