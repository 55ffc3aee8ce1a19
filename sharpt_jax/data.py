"""SeqIO tasks and mixtures -> global `jax.Array` batches on the device mesh.

Every host runs the same input pipeline and holds every row of each global batch; `to_global` hands JAX, for
each of the host's devices, the rows that the batch sharding assigns to that device. Which host owns which rows
is therefore read from the sharding itself (device order follows the topology, not the process index), and the
batches, hence a run's numbers, do not depend on how many hosts run it: 2 hosts x 4 devices train and score
exactly what 1 host x 8 devices does, and a run can resume on another number of hosts. The price is that each
host tokenises the whole global batch rather than its 1 / process_count of it: on this project's 2-core CPU
machine the pipeline makes 3,000-3,500 examples/s at lengths 512/128/128 (9 ms per batch of 32, 84 ms per 256,
measured under load), made by a thread while the devices run the step (`prefetch`), and a TPU VM host has
dozens of cores.

Training (`train_batches`): an index-based stream whose position is a few integers saved with each checkpoint, so a
resumed run starts where the saved run stopped without replaying anything. Each task's training split is read once
per process, through the task's formatting preprocessors (those before `tasks.features.tokenize`, which may make
several examples of one row, or none), into a list of untokenised examples in host memory: the task's index. Epoch e
of a task visits its index in the order of a permutation drawn from (seed, the task's place in the mixture, e), and
tokenises and pads just the examples it visits (in tf.data, prefetched); batch k of a mixture takes each of its rows
from the task drawn for it by a generator seeded with (seed, k). The position after batch k is k and, per task,
(epoch, index of the next example): `host_train_batches` yields it with every batch, and started from it yields
exactly the batches an uninterrupted stream yields next. The stream is a pure function of (task, lengths, batch
size, seed) and does not depend on the number of hosts, so a run resumes on another number.

Why not a checkpointed tf.data iterator (T5X's way): the task sources read files through Python generators,
which tf.data cannot save, and seqio shuffles tokenised examples in a buffer per task (1,000 each), which
would make every checkpoint carry 15 tasks' buffers, be saved by every host, and still only shuffle locally;
the iterator also runs ahead of the step by its prefetch. Making the index costs one read
and format of every training split (no tokenising) and host memory for the untokenised examples (about the
size of the raw text): 19K RTE examples took 6 s here, 10K RACE examples (5K articles) 6 s, mostly reading the
source's rows, on 2 cores under load (3,000 examples/s), so the paper's 15 source tasks (about 3M examples)
would take some 15 minutes, as long as a replay at step 80K. So a run keeps each task's index in its workdir
(`<workdir>/input_index/<task>.<key>.pkl`, written once by the first host through `storage.replacing`), and
every later start of the run, every resume on any number of hosts, reads it back instead (`indexed_examples`;
bench/resume_cost.py). The key (`index_key`) is a sha256 over what the examples depend on: the task name, the
seed, the task settings (data folder, vocabularies, mixture cap), a file-backed task's settings, the name, size
and modification time of every file the task's rows come from (its data-folder files, its TFDS builder
folders, a `files:` folder) and the source of the `tasks` package (its formats). Change any of them and the key
changes, so a stale index is never read; a data file rewritten in place with its old size and modification
time would not be noticed. Epochs are true permutations of the whole split rather than a 1,000-example shuffle
buffer.

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

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import pickle
import queue
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import jax
import numpy as np
import seqio
import tensorflow as tf

from sharpt_jax import sharding, storage
from tasks import features, files, registry, sources
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


def start_position(task_or_mixture: str) -> dict:
    """The position of a fresh stream: batch 0, every task at epoch 0, example 0."""
    return {"step": 0, "tasks": {task.name: [0, 0] for task in _tasks_and_rates(task_or_mixture)[0]}}


def host_train_batches(
    task_or_mixture: str,
    sequence_length: Lengths,
    batch_size: int,
    seed: int,
    position: dict | None = None,
    index_dir: str | os.PathLike | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
    """The endless, seeded stream of training batches on this host, from `position` on (see the module docstring).

    Args:
      task_or_mixture: a registered seqio task or mixture, e.g. "sharpt_source_category".
      sequence_length: {"inputs": T, "targets": S, "instance_inputs": I}.
      batch_size: rows per batch.
      seed: seeds every task's epoch permutations and the mixture's draws.
      position: where to start (`start_position` when None): what an earlier stream yielded with its last batch.
      index_dir: the folder where each task's index is kept and read back (`indexed_examples`); None = made
        anew in every process.

    Yields:
      (batch, position): dicts of int32 numpy arrays [batch_size, length] (the converter's features), and the
      position after the batch (a JSON-able dict; a stream started there yields the next batch).
    """
    keep_tensorflow_off_accelerators()
    tasks, rates = _tasks_and_rates(task_or_mixture)
    position = copy.deepcopy(position or start_position(task_or_mixture))
    if sorted(position["tasks"]) != sorted(task.name for task in tasks):
        raise ValueError(f"{task_or_mixture}: the position names tasks {sorted(position['tasks'])}")
    streams = [
        _task_examples(task, i, sequence_length, seed, position["tasks"][task.name], index_dir)
        for i, task in enumerate(tasks)
    ]
    while True:
        step = position["step"]
        # The mixture's draw for batch `step` is a function of (seed, step) alone, so a resumed stream makes it
        # without the draws of the batches before.
        choices = np.random.default_rng([seed, step]).choice(len(tasks), size=batch_size, p=rates)
        rows = []
        for choice in choices:
            example, (epoch, index) = next(streams[choice])
            rows.append(example)
            position["tasks"][tasks[choice].name] = [epoch, index + 1]
        position["step"] = step + 1
        yield {key: np.stack([r[key] for r in rows]) for key in rows[0]}, copy.deepcopy(position)


def _tasks_and_rates(task_or_mixture: str) -> tuple[list[seqio.Task], np.ndarray]:
    """The tasks of a mixture (or the one task) and their sampling probabilities, which sum to 1."""
    provider = seqio.get_mixture_or_task(task_or_mixture)
    if not isinstance(provider, seqio.Mixture):
        return [provider], np.ones(1)
    rates = np.array([provider.get_rate(task) for task in provider.tasks], np.float64)
    return list(provider.tasks), rates / rates.sum()


def _task_examples(
    task: seqio.Task, task_index: int, sequence_length: Lengths, seed: int, start: list[int], index_dir
) -> Iterator:
    """Endless (features, [epoch, index]) of one task's training examples from position `start` = [epoch,
    index]: epoch e visits the task's indexed examples (`_indexed_examples`) in the order of a permutation drawn
    from (seed, the task's index in its mixture, e), each then tokenised by the rest of the task's preprocessors
    and padded by the feature converter (the index kept in `index_dir`: `indexed_examples`). The index, not the
    name, seeds it: the same rows under another task name
    (a registered task and its rows as a `files:` task) are read in the same order."""
    examples = indexed_examples(task.name, seed, index_dir)
    if not examples:
        raise ValueError(f"{task.name}: the training split has no examples")

    def permuted():
        epoch, first = start
        while True:
            order = np.random.default_rng([seed, task_index, epoch]).permutation(len(examples))
            for index in range(first, len(examples)):
                yield examples[order[index]]
            epoch, first = epoch + 1, 0

    signature = jax.tree.map(lambda x: tf.TensorSpec(np.shape(x), tf.as_dtype(np.asarray(x).dtype)), examples[0])

    def permuted_dataset(split, shuffle_files, seed=None):
        del split, shuffle_files, seed  # The order is permuted() alone.
        return tf.data.Dataset.from_generator(permuted, output_signature=signature)

    # The rest of the task's preprocessors (the tokeniser, EOS after trimming) map one example to one, so the
    # k-th example out is the k-th one in, whose position the generator below counts alongside.
    tokenizing = seqio.Task(
        f"{task.name}_indexed",
        seqio.FunctionDataSource(permuted_dataset, splits=["train"]),
        output_features=task.output_features,
        preprocessors=task.preprocessors[_tokenizer_index(task) :],
    )
    ds = tokenizing.get_dataset(sequence_length, shuffle=False, seed=seed, try_in_mem_cache=False)
    ds = SharPTFeatureConverter()(ds, sequence_length).prefetch(tf.data.AUTOTUNE)
    positions = ((epoch, index) for epoch in itertools.count(start[0]) for index in range(len(examples)))
    return zip(ds.as_numpy_iterator(), itertools.islice(positions, start[1], None), strict=False)  # Both endless.


def _tokenizer_index(task: seqio.Task) -> int:
    """Where the task's preprocessors start tokenising: `tasks.features.tokenize` (every preprocessor when the
    task has none, so that its index holds finished examples)."""
    found = [i for i, p in enumerate(task.preprocessors) if p is features.tokenize]
    return found[0] if found else len(task.preprocessors)


def indexed_examples(task: str, seed: int, index_dir: str | os.PathLike | None = None) -> tuple:
    """The index of `task`'s training split (`_indexed_examples`), kept in host memory and, with `index_dir`, in
    `<index_dir>/<task>.<index_key>.pkl`: read from there when the file exists, else made and written there by
    the first host (atomically; the task's files of other keys are removed). Every host reads the same file, so
    the folder must be shared by the hosts like the workdir; a host that finds no file makes the index itself."""
    settings = dataclasses.astuple(registry.SETTINGS)
    if index_dir is None:
        return _indexed_examples(task, seed, settings)
    path = Path(index_dir) / f"{task}.{index_key(task, seed)}.pkl"
    return _index_file(str(path), task, seed, settings)


@functools.lru_cache(maxsize=32)
def _index_file(path: str, task: str, seed: int, settings: tuple) -> tuple:
    path = Path(path)
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    examples = _indexed_examples(task, seed, settings)
    if jax.process_index() == 0:
        with storage.replacing(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(examples, f, protocol=pickle.HIGHEST_PROTOCOL)
        for stale in path.parent.glob(f"{task}.*.pkl"):
            if stale != path:
                stale.unlink(missing_ok=True)
    return examples


def index_key(task: str, seed: int) -> str:
    """16 hex digits of a sha256 over what a task's index depends on (the module docstring lists it)."""
    fields = {
        "task": task,
        "seed": seed,
        "settings": dataclasses.asdict(registry.SETTINGS),
        "files_task": files.record(task),
        "data_files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in _source_files(task)],
        "tasks_code": _tasks_code_digest(),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _source_files(task: str) -> list[Path]:
    """Every file the rows of `task` may come from: a paper task's data-folder files and TFDS builder folders, a
    file-backed task's folder; none for tasks that make their rows in code (the skills world)."""
    name = task.removeprefix(registry.PREFIX)
    if (record := files.record(task)) is not None:
        folders = [Path(record["folder"])]
    elif name in registry.names():
        raw, data_dir = registry.raw_data(name), registry.SETTINGS.data_dir
        folders = [Path(data_dir, name)] if data_dir else []
        folders += [sources.tfds_folder(builder) for builder in raw.tfds_names]
    else:
        folders = []
    return sorted(p for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file())


@functools.cache
def _tasks_code_digest() -> str:
    """sha256 of the `tasks` package's Python files: a changed format or source makes other examples."""
    digest = hashlib.sha256()
    for path in sorted(Path(registry.__file__).parent.rglob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=32)
def _indexed_examples(task: str, seed: int, settings: tuple) -> tuple:
    """A task's training examples before tokenisation, in canonical order (numpy values, strings as bytes): the
    source's rows through the task's formatting preprocessors, which may turn a row into several examples (one
    per answer or choice) or none. Made once per (task, seed, task settings) and kept in host memory; epochs
    permute them.

    Reading the source's rows costs most of it (module docstring); tokenising happens in the stream, for the
    examples it yields only."""
    del settings  # Part of the cache key only: another data folder means other rows.
    task = seqio.get_mixture_or_task(task)
    formatting = seqio.Task(
        f"{task.name}_formatting",
        task.source,
        output_features={},
        preprocessors=task.preprocessors[: _tokenizer_index(task)],
    )
    ds = formatting.get_dataset(None, shuffle=False, seed=seed, try_in_mem_cache=False)
    return tuple(ds.as_numpy_iterator())


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """The items of `iterator`, made by a background thread that keeps up to `size` of them ready (as big_vision's
    prefetch of device batches): with `train_batches`, the next global batches are read, tokenised and placed on
    the devices while the current step runs. An exception of `iterator` is raised by the `next` that would have
    returned its item; closing the generator stops the thread and waits for it (at most the item in the making), so
    that no batch is being built by TensorFlow or placed by JAX while the interpreter shuts down (which aborts)."""
    ready = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((None, StopIteration()))
        except Exception as err:  # Raised again in the consumer's thread.
            ready.put((None, err))

    thread = threading.Thread(target=produce, daemon=True, name="prefetch")
    thread.start()
    try:
        while True:
            item, err = ready.get()
            if isinstance(err, StopIteration):
                return
            if err is not None:
                raise err
            yield item
    finally:
        stop.set()
        thread.join()


def train_batches(
    task_or_mixture: str,
    sequence_length: Lengths,
    global_batch_size: int,
    mesh: jax.sharding.Mesh,
    seed: int,
    position: dict | None = None,
    embeddings=None,
    index_dir: str | os.PathLike | None = None,
) -> Iterator[tuple[Batch, dict]]:
    """Endless (global training batch [global_batch_size, length] sharded over the mesh's 'data' axis, the
    position after it), from `position` on (`host_train_batches`). With `embeddings` (an
    `embedding_cache.EmbeddingTable`), the instance tokens and mask of every row are replaced by their cached
    e0, `instance_embedding` float32 [B, m]. `index_dir`: where the tasks' indexes are kept (`indexed_examples`)."""
    check_batch_size(global_batch_size, mesh)
    stream = host_train_batches(task_or_mixture, sequence_length, global_batch_size, seed, position, index_dir)
    for batch, after in stream:
        if embeddings is not None:
            batch = embeddings.replace_tokens(batch)
        yield to_global(batch, mesh), after


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
