"""Cached instance embeddings: each training example's e0, computed once by the frozen instance encoder.

The instance encoder never trains, so e0 = encoder(instance tokens) [m] is a fixed function of an example's
instance-token row. A target run of 100K steps at batch 32 on a 2.5K-example task would pass every example
through the encoder about 1,300 times. With `config.instance_embedding_cache` set to a folder, one pass of the
(jitted, sharded) encoder over the unique instance rows of the run's training split(s) makes a table

  tokens      int32 [N, I]     the distinct instance_input_tokens rows, sorted by their bytes
  embeddings  float32 [N, m]   e0 of each row

saved as `<folder>/<task>.<key>.npz` and read by every later run (and every resume) with the same key. The
trainer's batches then carry `instance_embedding` [B, m] instead of the instance tokens; it is looked up after the
input stream (which, with its shuffling, mixing and exact resume, is unchanged), on every host for the rows of
the global batch, before each host places its devices' rows. The jitted step never calls the encoder: it is not
traced, and jit drops the encoder weights, which no operation reads, from the compiled step's arguments, so the
step costs the generator plus T5, like PromptTuning's.

The key is a sha256 over what e0 depends on, the encoder's checksum (`build.build_model`'s identity), its
pooling and compute dtype, and over what chooses the rows: task or mixture, split, instance length, data folder
and encoder vocabulary. Another encoder never reads the table. Rows are found by their exact tokens (no hash),
so a table can lack a row (a data file changed since it was built) but never give a wrong e0: a missing row
stops the run and names the file to delete.

The cached e0 equals the in-step one up to float rounding (another batch layout), so a cached run's numbers
equal an uncached run's within float tolerance, and a cached run resumes bit-exactly (the table is read back
bit for bit). Host memory: N * (m + I) * 4 bytes, 3.3 MB for 1K rows at m = 768, I = 64.
"""

import functools
import hashlib
import json
import time

import jax
import ml_collections
import numpy as np
import seqio
from flax import nnx
from jax.experimental import multihost_utils

from sharpt_jax import data, sharding, storage
from tasks import registry
from tasks.features import SharPTFeatureConverter

SPLIT = "train"  # The trainer's split; evaluation runs the encoder.
INSTANCE_FEATURES = ("instance_input_tokens", "instance_input_mask")


class MissingRow(ValueError):
    """A batch holds an instance row that the table was not built with."""


def _row_keys(tokens: np.ndarray) -> np.ndarray:
    """int32 [n, I] -> [n] opaque byte strings of the rows, which numpy sorts and compares whole."""
    tokens = np.ascontiguousarray(tokens, np.int32)
    return tokens.view(np.dtype((np.void, tokens.shape[1] * tokens.itemsize)))[:, 0]


class EmbeddingTable:
    """The e0 of a set of instance-token rows, looked up by the rows' exact tokens."""

    def __init__(self, tokens: np.ndarray, embeddings: np.ndarray, path: storage.Path):
        """tokens: int32 [N, I] distinct rows sorted by `_row_keys`; embeddings: float32 [N, m], row-aligned;
        path: the file that holds them (named in errors)."""
        self.tokens, self.embeddings, self.path = tokens, embeddings, path
        self._keys = _row_keys(tokens)

    def lookup(self, tokens: np.ndarray) -> np.ndarray:
        """int32 [b, I] instance rows -> float32 [b, m] their e0 (a binary search per row, vectorised)."""
        keys = _row_keys(tokens)
        index = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        missing = self._keys[index] != keys
        if missing.any():
            raise MissingRow(
                f"{int(missing.sum())} of {len(keys)} instance rows are not in {self.path}: the training data "
                "changed since it was built; delete that file (the next run rebuilds it)"
            )
        return self.embeddings[index]

    def replace_tokens(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch with instance_input_tokens / instance_input_mask replaced by `instance_embedding` [b, m]."""
        out = {key: value for key, value in batch.items() if key not in INSTANCE_FEATURES}
        out["instance_embedding"] = self.lookup(batch["instance_input_tokens"])
        return out


# ---------------------------------------------------------------------------------------------
# Building the table: the distinct rows of the split, one encoder pass.
# ---------------------------------------------------------------------------------------------


def distinct_rows(task_or_mixture: str, sequence_length: data.Lengths) -> np.ndarray:
    """The distinct instance_input_tokens rows of the training split of a task or of every task of a mixture.

    They are made as the training stream makes them (the same tasks, lengths and feature converter), read in
    canonical order without shuffling, and returned sorted by `_row_keys`: int32 [N, I].
    """
    data.keep_tensorflow_off_accelerators()
    provider = seqio.get_mixture_or_task(task_or_mixture)
    parts = []
    for task in provider.tasks if isinstance(provider, seqio.Mixture) else [provider]:
        ds = task.get_dataset(sequence_length, split=SPLIT, shuffle=False, num_epochs=1)
        ds = SharPTFeatureConverter()(ds, sequence_length).map(lambda ex: ex["instance_input_tokens"])
        parts.extend(ds.batch(4096).as_numpy_iterator())
    rows = np.concatenate(parts).astype(np.int32)
    _, first = np.unique(_row_keys(rows), return_index=True)
    return rows[first]


@functools.partial(jax.jit, static_argnames="graphdef")
def instance_embeddings(graphdef: nnx.GraphDef, state: nnx.State, batch: dict) -> tuple[jax.Array, jax.Array | None]:
    """The frozen instance encoder's pass over a batch, and the codebook's choice: the one jitted function every
    caller outside the train step and the scorers uses (the cache below, the k-means start, the experiments).

    Args:
      graphdef, state: `nnx.split` of a `SharPT` model with an instance encoder.
      batch: at least instance_input_tokens / instance_input_mask [B, I].

    Returns:
      e0: float32 [B, m]; skill: int32 [B], the nearest skill vector of each instance, or None without a codebook.
    """
    model = nnx.merge(graphdef, state)
    e0 = model.instance_embedding(batch).astype(jax.numpy.float32)
    return e0, None if model.codebook is None else model.codebook(e0)[1]


def compute_embeddings(model: nnx.Module, rows: np.ndarray, batch_size: int, mesh: jax.sharding.Mesh) -> np.ndarray:
    """e0 of every row by the `SharPT` model's encoder: int32 [N, I] -> float32 [N, m], `batch_size` rows at a
    time in global batches split over 'data'.

    Every host holds all rows and places those of its devices (as evaluation does); each batch is padded with
    zero rows to `data.eval_rows(batch_size, mesh)` rows, whose outputs are dropped. The mask is the feature
    converter's: 1 where the token is not 0.
    """
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, sharding.state_shardings(state, mesh))
    padded_rows = data.eval_rows(batch_size, mesh)
    out = []
    for start in range(0, len(rows), batch_size):
        num_real = len(rows[start : start + batch_size])
        tokens = np.pad(rows[start : start + batch_size], [(0, padded_rows - num_real), (0, 0)])
        batch = {"instance_input_tokens": tokens, "instance_input_mask": (tokens != 0).astype(np.int32)}
        e0, _ = instance_embeddings(graphdef, state, data.to_global(batch, mesh))
        out.append(np.asarray(multihost_utils.process_allgather(e0, tiled=True), np.float32)[:num_real])
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# The cache folder.
# ---------------------------------------------------------------------------------------------


def cache_file(config: ml_collections.ConfigDict, task: str, identity: dict) -> tuple[storage.Path, dict]:
    """(path, key fields) of the table of `task`'s training split for the config's encoder. Call after
    `build.configure_tasks` (the data folder and encoder vocabulary are read from the configured tasks)."""
    fields = {
        "encoder_checksum": identity["encoder"]["checksum"],
        "encoder_pooling": config.encoder_pooling,
        "dtype": config.backbone_dtype,
        "task": task,
        "split": SPLIT,
        "instance_length": config.sequence_length.instance_inputs,
        "data_dir": registry.SETTINGS.data_dir,
        "encoder_vocab": registry.SETTINGS.encoder_vocab,
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return storage.path(config.instance_embedding_cache) / f"{task}.{key}.npz", fields


def save(path: storage.Path, table: EmbeddingTable, fields: dict) -> None:
    """Writes the table atomically (`storage.replacing`): a killed run leaves no partial table, and two runs
    building the same table at once both leave a whole one."""
    with storage.replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, tokens=table.tokens, embeddings=table.embeddings, fields=json.dumps(fields))


def load(path: storage.Path) -> EmbeddingTable:
    with path.open("rb") as f, np.load(f) as saved:
        return EmbeddingTable(saved["tokens"], saved["embeddings"], path)


def for_run(
    config: ml_collections.ConfigDict, task: str, model: nnx.Module, identity: dict, mesh: jax.sharding.Mesh
) -> EmbeddingTable | None:
    """The table of the run's training task or mixture: read from the cache folder, or built and saved there.

    Args:
      config: the run's config; `instance_embedding_cache` is the folder ("" = no cache: returns None).
      task: the seqio task or mixture the run trains on.
      model: the `SharPT` model; None is returned for a method without an instance encoder (nothing to cache).
      identity: `build.build_model`'s record of the frozen models (the encoder's checksum keys the table).
      mesh: the device mesh the encoder runs on when the table is built.

    Every host builds the table with the others (one collective encoder pass) or reads the same file, so the
    folder must be shared by the hosts, like the checkpoint folder; the first host writes it.
    """
    if not config.instance_embedding_cache or model.instance_encoder is None:
        return None
    path, fields = cache_file(config, task, identity)
    is_main = jax.process_index() == 0
    # The first host's view decides for all: a host that found the file just written would skip the collective
    # encoder pass that the others are in.
    if multihost_utils.broadcast_one_to_all(np.bool_(path.exists())):
        table = load(path)
        if is_main:
            print(f"instance embeddings: {len(table.tokens):,} rows read from {path}", flush=True)
        return table
    start = time.perf_counter()
    rows = distinct_rows(task, config.sequence_length.to_dict())
    embeddings = compute_embeddings(model, rows, config.eval.batch_size, mesh)
    table = EmbeddingTable(rows, embeddings, path)
    if is_main:
        save(path, table, fields)
        print(
            f"instance embeddings: {len(rows):,} rows encoded in {time.perf_counter() - start:.0f} s, saved to {path}",
            flush=True,
        )
    return table
