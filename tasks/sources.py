"""Raw rows of every task, from TFDS or a data folder, cut into the splits of the evaluation protocol.

Where rows come from: `<data_dir>/<name>/<split>.jsonl` when that file exists (one JSON object per line
holding the raw fields of the canonical source under its split names, e.g. DROP's "dev"), else the pinned TFDS
builder(s). CxC and CR exist only as files (written by `tasks/prepare.py`).

The split protocol (ATTEMPT, DePT and Compacter use it; TASKS.md), with seed 42:
- fewer than 10K training rows: train is the official training split; the official held-out split is
  permuted and halved into validation (the first half, rounded down) and test (the rest);
- 10K rows or more: 1K training rows drawn by the permutation become validation, the other rows stay train,
  and the official held-out split is the test split (MNLI adds test_mismatched).
The held-out split is "validation" (DROP, RACE: "dev"; MNLI: "validation_matched"); Yelp and CR ship no
validation split, so their official test split plays that role (CR, small, halves its test split). CxC has no
training split: its official validation split (44K pairs) is the training pool, so 1K of it validates and its
official test split tests.

How the rows are chosen: a row's identity is its position in the canonical order of its split (the file's line
order; TFDS read with `shuffle_files=False`, which is deterministic, and builders concatenated in order). The
permutation of `range(num_rows)` by `np.random.default_rng(42)` picks positions, and a boolean mask over
positions filters a single streaming pass, so nothing but the mask (one byte per row: 1 MB for DocNLI's 942K
rows) is held in memory, the sizes are exact and every host picks the same rows. The price is that files are
never read in shuffled order; TFDS writes its examples already shuffled at preparation, and seqio's example
shuffle buffer mixes the rest. Row counts come from TFDS metadata or from one pass over the file, which also
checks every row (`split_origin`), so a bad row ends a run with `DataError` "PATH:LINE: ..." before training.

Rows of the validation and test splits whose label is hidden (label -1, or no gold answer) are dropped, so
they never reach a metric. Every row also carries `is_train` (true only in the train split) for the few
formats that differ in training (ReCoRD's one example per answer, WSC's correct referents only).
"""

import dataclasses
import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from sharpt_jax import storage
from tasks import row_files
from tasks.row_files import DataError, json_type

SEED = 42
# What every results file records as the split protocol (sharpt_jax.scoring.scoring_protocol).
SPLIT_PROTOCOL = (
    f"ATTEMPT/DePT/Compacter (seed {SEED}): under 10K train rows, the official validation split halved into "
    "validation and test; otherwise 1K train rows as validation and the official validation split as test"
)
SMALL_TRAIN = 10_000  # Below this many training rows, the official held-out split is halved.
VALIDATION_FROM_TRAIN = 1_000
SPLITS = ("train", "validation", "test")
# The command that writes the data folder of each task that is in no TFDS release (tasks/prepare.py).
PREPARE_COMMANDS = {
    "cxc": "python -m tasks.prepare cxc --src sts_val.csv sts_test.csv dataset_coco.json --out DATA_DIR",
    "cr": "python -m tasks.prepare cr --src SentEval-CR/ --out DATA_DIR",
}

Features = Mapping[str, "tf.TensorSpec | Features"]


@dataclasses.dataclass(frozen=True, eq=False)
class RawData:
    """Where the canonical rows of one task come from and which fields are read.

    Attributes:
      name: the short task name, also the data folder's subfolder.
      features: {field: tf.TensorSpec or nested dict}: the raw fields read from every row (other fields of
        a row are ignored). TFDS values are cast to these dtypes; ragged TFDS values become dense.
      tfds_names: pinned TFDS builders ("glue/rte:2.0.0") whose rows are concatenated in this order;
        empty for data that exists only as files.
      train_split: the official split the training rows come from.
      heldout_split: the official split the protocol halves (small data) or uses as test (large data).
      extra_test_splits: {protocol split: official split} of further test splits taken whole.
    """

    name: str
    features: Features
    tfds_names: tuple[str, ...] = ()
    train_split: str = "train"
    heldout_split: str = "validation"
    extra_test_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS + tuple(self.extra_test_splits)

    @property
    def official_splits(self) -> tuple[str, ...]:
        return (self.train_split, self.heldout_split, *self.extra_test_splits.values())

    def source_name(self, data_dir: str | None) -> str:
        """ "files:<folder>" when the data folder holds any of this task's files, else "tfds:<builders>"."""
        if any(_data_file(data_dir, self.name, s) for s in self.official_splits) or not self.tfds_names:
            return f"files:{storage.path(data_dir or '<data_dir>') / self.name}"
        return "tfds:" + "+".join(self.tfds_names)


# ---------------------------------------------------------------------------------------------
# Reading the rows of one official split, in canonical order.
# ---------------------------------------------------------------------------------------------


def _data_file(data_dir: str | None, name: str, split: str) -> Path | None:
    path = storage.path(data_dir) / name / f"{split}.jsonl" if data_dir else None
    return path if path is not None and path.is_file() else None


def tfds_data_dir() -> Path:
    """Where TFDS reads and writes prepared builders: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(tfds.core.constants.DATA_DIR).expanduser()


def tfds_folder(tfds_name: str, data_dir: Path | None = None) -> Path:
    """The folder of the pinned builder "glue/rte:2.0.0" under `data_dir` (default `tfds_data_dir()`)."""
    return (data_dir or tfds_data_dir()) / tfds_name.replace(":", "/")


def tfds_prepared(tfds_name: str, data_dir: Path | None = None) -> Path | None:
    """`tfds_folder` when the builder is prepared there, else None: looks for the `dataset_info.json` of a finished
    `download_and_prepare`, without building the builder (which logs a warning for each one not prepared)."""
    folder = tfds_folder(tfds_name, data_dir)
    return folder if (folder / "dataset_info.json").is_file() else None


def _missing(raw: RawData, split: str, data_dir: str | None) -> DataError:
    where = storage.path(data_dir or "<data_dir>") / raw.name / f"{split}.jsonl"
    if raw.tfds_names:
        missing = [n for n in raw.tfds_names if tfds_prepared(n) is None] or list(raw.tfds_names)
        return DataError(
            f"{raw.name}: no rows for split {split!r}: no file {where}, and TFDS {' and '.join(missing)} is not "
            f"prepared in {tfds_data_dir()} ($TFDS_DATA_DIR); run `python -m tasks.prepare tfds --tasks {raw.name}` "
            "on a machine with network access"
        )
    return DataError(
        f"{raw.name}: no file {where} ({raw.name} is not in TFDS); write it with "
        f"`{PREPARE_COMMANDS[raw.name]}` and run with --config.data_dir=DATA_DIR"
    )


_CHUNK = 1024  # Rows parsed per Python call; tf.data unbatches them.


def _batched_spec(spec: tf.TensorSpec) -> tf.TypeSpec:
    if spec.shape.rank == 0:
        return tf.TensorSpec([None], spec.dtype)
    return tf.RaggedTensorSpec([None] * (spec.shape.rank + 1), spec.dtype, ragged_rank=spec.shape.rank)


def _column(values: list, spec: tf.TensorSpec):
    """The values of one field in a chunk of rows: [rows] for scalars, ragged [rows, ...] for lists."""
    if spec.shape.rank == 0:
        return np.asarray(values, dtype=object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)
    return tf.ragged.constant(values, dtype=spec.dtype, ragged_rank=spec.shape.rank)


def _columns(rows: list[dict], features: Features) -> dict:
    return {
        k: (_columns([r[k] for r in rows], spec) if isinstance(spec, Mapping) else _column([r[k] for r in rows], spec))
        for k, spec in features.items()
    }


def _read_jsonl(path: Path, features: Features) -> tf.data.Dataset:
    """The rows of a JSONL file, parsed in chunks of rows (one Python call per chunk keeps this fast)."""

    def parse(chunk: list[tuple[int, str]]) -> dict:
        try:
            return _columns([json.loads(line) for _, line in chunk], features)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(
                f"{path}, lines {chunk[0][0]}-{chunk[-1][0]}: bad or missing field ({err!r}); "
                f"rows need the fields {dict(features)}"
            ) from err

    def chunks():
        chunk = []
        with path.open("r", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    chunk.append((number, line))
                if len(chunk) == _CHUNK:
                    yield parse(chunk)
                    chunk = []
        if chunk:
            yield parse(chunk)

    return _chunks_dataset(chunks, features)


def _chunks_dataset(chunks: Callable[[], Iterator[dict]], features: Features) -> tf.data.Dataset:
    """The rows of the chunks of columns (`_columns`) that `chunks()` yields, each time the dataset is read."""
    signature = tf.nest.map_structure(_batched_spec, dict(features))
    ds = tf.data.Dataset.from_generator(chunks, output_signature=signature).unbatch()
    return ds.map(functools.partial(_conform, features=features), num_parallel_calls=tf.data.AUTOTUNE)


def _conform(example: Mapping, features: Features) -> dict:
    """Keeps the fields of `features` and casts them to its dtypes (ragged TFDS values become dense)."""
    out = {}
    for key, spec in features.items():
        value = example[key]
        if isinstance(spec, Mapping):
            out[key] = _conform(value, spec)
            continue
        if isinstance(value, tf.RaggedTensor):
            value = value.to_tensor()
        out[key] = tf.cast(value, spec.dtype)
    return out


def _tfds_builders(raw: RawData) -> list:
    return [tfds.builder(name) for name in raw.tfds_names]


def _read_tfds(raw: RawData, split: str, data_dir: str | None) -> tf.data.Dataset:
    try:
        datasets = [b.as_dataset(split=split, shuffle_files=False) for b in _tfds_builders(raw)]
    except Exception as err:  # Not prepared, unknown split: one message naming both ways to provide data.
        raise _missing(raw, split, data_dir) from err
    ds = functools.reduce(lambda a, b: a.concatenate(b), datasets)
    return ds.map(functools.partial(_conform, features=raw.features), num_parallel_calls=tf.data.AUTOTUNE)


def split_origin(raw: RawData, split: str, data_dir: str | None) -> str:
    """Where official split `split` of `raw` is read from: "PATH (N rows)" for a data file, after checking its
    every row, else "TFDS <builder> (<folder>)" for prepared builders; DataError (the missing file or builder and
    the command that prepares it, or the file and line of a bad row) when it cannot be read."""
    path = _data_file(data_dir, raw.name, split)
    if path is not None:
        return f"{path} ({_file_rows(path, raw)} rows)"
    folders = [tfds_prepared(name) for name in raw.tfds_names]
    if not folders or None in folders:
        raise _missing(raw, split, data_dir)
    return "TFDS " + " + ".join(f"{name} ({folder})" for name, folder in zip(raw.tfds_names, folders, strict=True))


def read_split(raw: RawData, split: str, data_dir: str | None) -> tf.data.Dataset:
    """The rows of official split `split` in canonical order, holding the fields of `raw.features`."""
    path = _data_file(data_dir, raw.name, split)
    if path is not None:
        return _read_jsonl(path, raw.features)
    if not raw.tfds_names:
        raise _missing(raw, split, data_dir)
    return _read_tfds(raw, split, data_dir)


def rows_dataset(rows_fn: Callable[[], Sequence[Mapping]], features: Features) -> tf.data.Dataset:
    """In-memory raw rows, as a data file's JSON objects hold them, read as `read_split` reads that file.

    `rows_fn()` gives the rows each time the dataset is read, so one dataset (traced once) serves many batches
    of rows. They come marked as held-out rows (`is_train` false), as the protocol's splits other than train
    give them, and rows of hidden labels are kept (sharpt_jax.serving.predict answers every row).
    """
    ds = _chunks_dataset(lambda: iter([_columns(list(rows_fn()), features)]), features)
    return ds.map(lambda ex: {**ex, "is_train": tf.constant(False)})


def _value_problem(value, spec: "tf.TensorSpec | Features", field: str, rank: int | None = None) -> str | None:
    """Why `value` (parsed JSON) cannot be read as `spec` (lists nest `rank` deep), or None when it can."""
    if isinstance(spec, Mapping):
        if not isinstance(value, dict):
            return f"field {field!r} is {json_type(value)}, expected an object"
        return _row_problem(value, spec, f"{field}.")
    rank = spec.shape.rank if rank is None else rank
    if rank:
        if not isinstance(value, list):
            return f"field {field!r} is {json_type(value)}, expected a list"
        return next(filter(None, (_value_problem(v, spec, field, rank - 1) for v in value)), None)
    if spec.dtype == tf.string:
        ok, expected = isinstance(value, str), "a string"
    elif spec.dtype.is_floating:
        ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    return None if ok else f"field {field!r} is {json_type(value)} ({json.dumps(value)[:40]}), expected {expected}"


def _row_problem(row: dict, features: Features, prefix: str = "") -> str | None:
    for key, spec in features.items():
        if key not in row:
            return f"field {prefix + key!r} missing"
        problem = _value_problem(row[key], spec, prefix + key)
        if problem:
            return problem
    return None


@functools.cache
def _scan_file(path: str, raw: RawData, mtime_ns: int, size: int) -> int:
    """The number of rows of a data file of `raw`, each checked against `raw.features` in one streaming pass
    (`row_files.json_rows`); DataError "PATH:LINE: what is wrong" at the first bad row."""
    del mtime_ns, size  # Cache keys only: a rewritten file is scanned again.
    rows = 0
    for number, row in row_files.json_rows(path):
        if problem := _row_problem(row, raw.features):
            raise DataError(f"{path}:{number}: {problem}")
        rows += 1
    return rows


def _file_rows(path: Path, raw: RawData) -> int:
    return _scan_file(str(path), raw, *storage.version(path))


def count_rows(raw: RawData, split: str, data_dir: str | None) -> int:
    """Number of rows of official split `split` (file lines, TFDS metadata, or one pass when it has none).

    A data file's rows are all checked as they are counted (`_scan_file`, once per version of the file), so a bad
    row ends a run with DataError before any tf.data pipeline reads it."""
    path = _data_file(data_dir, raw.name, split)
    if path is not None:
        return _file_rows(path, raw)
    if not raw.tfds_names:
        raise _missing(raw, split, data_dir)
    try:
        infos = [b.info.splits[split] for b in _tfds_builders(raw)]
        return sum(info.num_examples for info in infos)
    except (KeyError, ValueError):  # No split metadata (e.g. under tfds.testing.mock_data): count them.
        return int(read_split(raw, split, data_dir).reduce(np.int64(0), lambda n, _: n + 1))


# ---------------------------------------------------------------------------------------------
# The split protocol.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """Which rows make each protocol split.

    Attributes:
      parts: {protocol split: (official split, mask [num_rows] bool, or None for every row)}.
      sizes: {protocol split: number of rows} (before hidden-label rows are dropped).
      description: the protocol in words, with its seed and sizes.
    """

    parts: Mapping[str, tuple[str, np.ndarray | None]]
    sizes: Mapping[str, int]
    description: str


def permutation_masks(num_rows: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks [num_rows] of the `first` positions of the permutation seeded with SEED and of the other positions."""
    chosen = np.zeros(num_rows, bool)
    chosen[np.random.default_rng(SEED).permutation(num_rows)[:first]] = True
    return chosen, ~chosen


def split_plan(raw: RawData, data_dir: str | None) -> SplitPlan:
    """Applies the protocol of this module's docstring to the row counts of `raw`'s official splits."""
    n_train = count_rows(raw, raw.train_split, data_dir)
    n_heldout = count_rows(raw, raw.heldout_split, data_dir)
    train, held = f"official {raw.train_split} ({n_train})", f"official {raw.heldout_split} ({n_heldout})"
    if n_train < SMALL_TRAIN:
        first_half, second_half = permutation_masks(n_heldout, n_heldout // 2)
        parts = {
            "train": (raw.train_split, None),
            "validation": (raw.heldout_split, first_half),
            "test": (raw.heldout_split, second_half),
        }
        sizes = {"train": n_train, "validation": n_heldout // 2, "test": n_heldout - n_heldout // 2}
        description = (
            f"train = {train}; {held} permuted with seed {SEED} and halved: "
            f"validation {sizes['validation']}, test {sizes['test']} (train < {SMALL_TRAIN})"
        )
    else:
        validation, rest = permutation_masks(n_train, VALIDATION_FROM_TRAIN)
        parts = {
            "train": (raw.train_split, rest),
            "validation": (raw.train_split, validation),
            "test": (raw.heldout_split, None),
        }
        sizes = {"train": n_train - VALIDATION_FROM_TRAIN, "validation": VALIDATION_FROM_TRAIN, "test": n_heldout}
        description = (
            f"{train} permuted with seed {SEED}: validation {VALIDATION_FROM_TRAIN}, "
            f"train {sizes['train']}; test = {held} (train >= {SMALL_TRAIN})"
        )
    for split, official in raw.extra_test_splits.items():
        parts[split] = (official, None)
        sizes[split] = count_rows(raw, official, data_dir)
        description += f"; {split} = official {official} ({sizes[split]})"
    return SplitPlan(parts, sizes, description)


def _labelled(example: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """False for a row whose label is hidden: label -1, or an empty list of gold answers."""
    if "label" in example:
        return tf.not_equal(example["label"], tf.cast(-1, example["label"].dtype))
    if "answers" in example and example["answers"].shape.rank == 1:
        return tf.size(example["answers"]) > 0
    return tf.constant(True)


class ProtocolSource(seqio.DataSource):
    """A seqio data source giving the rows of the protocol splits of one task (see the module docstring).

    `data_dir_fn` returns the data folder at the time of reading, so `tasks.configure` applies to tasks that
    are already registered. The order of the rows is canonical whatever `shuffle` says (the task shuffles
    examples); shards take every `num_shards`-th row after the protocol's selection.
    """

    def __init__(self, raw: RawData, data_dir_fn: Callable[[], str | None]):
        super().__init__(splits=raw.splits, caching_permitted=False)
        self._raw, self._data_dir_fn = raw, data_dir_fn

    @property
    def raw(self) -> RawData:
        return self._raw

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> list[str]:
        return [split]

    def plan(self) -> SplitPlan:
        return split_plan(self._raw, self._data_dir_fn())

    def num_input_examples(self, split: str) -> int:
        return self.plan().sizes[split]

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length=None,
        use_cached=False,
        num_epochs=1,
    ) -> tf.data.Dataset:
        del shuffle, seed, sequence_length, use_cached, num_epochs  # Canonical order; see the docstring.
        if split not in self.splits:
            raise ValueError(f"{self._raw.name}: unknown split {split!r}; splits are {self.splits}")
        official, mask = self.plan().parts[split]
        ds = read_split(self._raw, official, self._data_dir_fn())
        if mask is not None:
            keep = tf.constant(mask)
            ds = ds.enumerate().filter(lambda i, _: tf.gather(keep, i)).map(lambda _, ex: ex)
        if split != "train":
            ds = ds.filter(_labelled)
        ds = ds.map(lambda ex: {**ex, "is_train": tf.constant(split == "train")})
        if shard_info is not None:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds
