"""File-backed tasks: a folder of train / validation / test files (JSONL, CSV or TSV) is a task, with no code.

    python run.py --config=configs/target.py:files:PATH --workdir=DIR      (docs/your_data.md)

The folder holds `train.EXT`, `test.EXT` and optionally `validation.EXT` (EXT: jsonl, csv or tsv, chosen per
split; `tasks.row_files` reads them) and optionally `task.json`, the task's settings (SPEC_KEYS):
  input                the input text: one field ("sentence") or a template over fields
                       ("premise: {premise} hypothesis: {hypothesis}"; "{{" and "}}" are literal braces);
  target               the field of the answer;
  labels               an optional closed label set ["negative", "positive"]: a target is one of these words or
                       its index (JSON 0 or 1, CSV "0" or "1"); it makes rank classification available;
  metric               exact_match | accuracy | f1 | macro_f1 | token_f1 | pearson | spearman (default: accuracy
                       with labels, exact_match without); see METRICS;
  validation_fraction  the share of train carved out as validation when there is no validation file (0.1).
The config group `config.files` (configs/common.py) has the same fields: a value set there overrides task.json,
for every `files:` folder of the run; an empty one leaves task.json's (or the default).

Splits are the user's, rows in file order. Without a validation file, validation is round(fraction x rows) (at
least 1) training rows drawn by the permutation seeded with 42 (`sources.permutation_masks`, as the paper's
protocol draws), the other rows stay train; the split protocol records it. Each split is counted, and every row
checked, in one streaming pass (cached per version of the file); rows are then read streaming in chunks, so no
file is ever held in memory (bench/file_rows.py measures it), and every host reads the same rows in the same
order. A bad row, a missing file or a bad setting is `DataError` with one line, "PATH:LINE: what is wrong".

Rows: a field's value is text, or a number or true/false written as JSON writes it; the template (a seqio
preprocessor, so serving formats rows exactly as training did) makes `inputs`, the target field `targets` (a
label index becomes its word). `register` gives the task the seqio name `sharpt_files_<folder>_<hash>`, the hash
of the folder's absolute path and the settings: stable across runs and hosts, and never shared by two folders or
two settings of one folder. `record` is what an adapter keeps of the task, `register_recorded` registers it again
from that record without the folder (serving), `checksums` is what a run records of its files (refused on resume
if they change).
"""

import dataclasses
import functools
import hashlib
import json
import math
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import seqio
import tensorflow as tf

from sharpt_jax import storage
from tasks import features, metrics, registry, row_files, sources
from tasks import postprocessors as pp
from tasks.metrics import TaskEval
from tasks.row_files import DataError

SCHEME = "files:"
SPEC_FILE = "task.json"
SPEC_KEYS = ("input", "target", "labels", "metric", "validation_fraction")
DEFAULT_VALIDATION_FRACTION = 0.1
# Metric name -> (what the postprocessor makes of a text, the seqio metric). Class metrics compare label ids (a
# string that is no label is wrong; f1 is the F1 of the second label, two labels only); number metrics parse the
# text (a target of -1 counts as hidden, as the paper's tasks write them); the others compare texts with
# whitespace collapsed, token_f1 after SQuAD's normalisation.
CLASS_METRICS = ("accuracy", "f1", "macro_f1")
NUMBER_METRICS = ("pearson", "spearman")
METRICS = ("exact_match", *CLASS_METRICS, "token_f1", *NUMBER_METRICS)
_CHUNK = 1024  # Rows per Python call of the reading generator.


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """The settings of a file-backed task (the module docstring); `make_spec` checks them."""

    input: str
    target: str
    labels: tuple[str, ...] | None
    metric: str
    validation_fraction: float

    @property
    def template(self) -> tuple[tuple[str, str | None], ...]:
        """(literal text, field or None) pieces of the input template; a bare field name is "{name}"."""
        text = self.input if "{" in self.input or "}" in self.input else "{" + self.input + "}"
        return tuple((literal, field) for literal, field, _, _ in string.Formatter().parse(text))

    @property
    def fields(self) -> tuple[str, ...]:
        """The input's fields, in order of first use."""
        return tuple(dict.fromkeys(field for _, field in self.template if field is not None))

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "labels": None if self.labels is None else list(self.labels)}


def make_spec(values: Mapping, where: str) -> FileSpec:
    """The FileSpec of `values` (SPEC_KEYS; missing ones take their defaults); DataError naming `where`."""
    if unknown := sorted(set(values) - set(SPEC_KEYS)):
        raise DataError(f"{where}: unknown setting(s) {', '.join(unknown)}; the settings are {', '.join(SPEC_KEYS)}")
    for key in ("input", "target"):
        if not isinstance(values.get(key), str) or not values[key].strip():
            raise DataError(f"{where}: no {key!r} field name; set it in {SPEC_FILE} or with --config.files.{key}")
    labels = values.get("labels")
    if labels is not None:
        if not isinstance(labels, list | tuple) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
            raise DataError(f"{where}: labels {labels!r} must be a list of two or more strings")
        if len(set(labels)) < len(labels):
            raise DataError(f"{where}: labels {list(labels)} repeat a label")
        labels = tuple(labels)
    metric = values.get("metric") or ("accuracy" if labels else "exact_match")
    if metric not in METRICS:
        raise DataError(f"{where}: metric {metric!r} is not one of {', '.join(METRICS)}")
    if metric in CLASS_METRICS and labels is None:
        raise DataError(f"{where}: metric {metric} compares labels; set the label set ('labels')")
    if metric == "f1" and len(labels) != 2:
        raise DataError(f"{where}: metric f1 is the F1 of the second of two labels; use macro_f1 with {len(labels)}")
    if metric in NUMBER_METRICS and labels is not None:
        raise DataError(f"{where}: metric {metric} compares numbers; a label set makes no sense with it")
    fraction = values.get("validation_fraction", DEFAULT_VALIDATION_FRACTION)
    if not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise DataError(f"{where}: validation_fraction {fraction!r} must be a number between 0 and 1")
    spec = FileSpec(values["input"], values["target"], labels, metric, float(fraction))
    try:
        pieces = [piece for piece in string.Formatter().parse(spec.input) if piece[1] is not None]
    except ValueError as err:
        raise DataError(
            f"{where}: input template {spec.input!r}: {err} (write a literal brace as {{{{ or }}}})"
        ) from None
    if any(not field or spec_ or conversion for _, field, spec_, conversion in pieces):
        raise DataError(f"{where}: input template {spec.input!r}: write fields as {{name}}, nothing else inside")
    return spec


def load_spec(folder: Path, overrides: Mapping) -> FileSpec:
    """The settings of `folder`: its task.json, with the set values of `overrides` (config.files) over them."""
    values, path = {}, folder / SPEC_FILE
    if path.is_file():
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from err
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text") from err
        if not isinstance(values, dict):
            raise DataError(f"{path}: {row_files.json_type(values)}, expected a JSON object of settings")
    set_values = {key: value for key, value in dict(overrides or {}).items() if value not in ("", (), [], 0, None)}
    if "labels" in set_values:
        set_values["labels"] = list(set_values["labels"])
    where = f"{SCHEME}{folder}" + (f" ({path} and config.files)" if path.is_file() else " (config.files)")
    return make_spec({**values, **set_values}, where)


# ---------------------------------------------------------------------------------------------
# Rows.
# ---------------------------------------------------------------------------------------------


class _Problem(ValueError):
    """What is wrong with one row (its file and line are added by the caller)."""


def _text(row: Mapping, field: str) -> str:
    if field not in row:
        raise _Problem(f"field {field!r} missing (the row has {', '.join(map(repr, row)) or 'no fields'})")
    value = row[field]
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    raise _Problem(f"field {field!r} is {row_files.json_type(value)}, expected text or a number")


def row_texts(row: Mapping, spec: FileSpec) -> dict[str, str]:
    """{field: text} of the input fields and the target of a raw row, the target as its label word; _Problem."""
    texts = {field: _text(row, field) for field in spec.fields}
    target = _text(row, spec.target)
    if spec.labels is not None and target not in spec.labels:
        value = row[spec.target]
        index = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and value.strip().isdigit():
            index = int(value)
        if index is None or not 0 <= index < len(spec.labels):
            raise _Problem(
                f"label {target!r} (field {spec.target!r}) is not one of the labels {', '.join(spec.labels)} "
                f"nor an index 0-{len(spec.labels) - 1}"
            )
        target = spec.labels[index]
    if spec.metric in NUMBER_METRICS:
        try:
            ok = math.isfinite(float(target))
        except ValueError:
            ok = False
        if not ok:
            raise _Problem(f"field {spec.target!r} is {target[:40]!r}, expected a number (metric {spec.metric})")
    texts[spec.target] = target
    return texts


@functools.cache
def _scan(path: str, spec: FileSpec, mtime_ns: int, size: int) -> int:
    """The number of rows of a split file, each checked in one streaming pass; DataError at the first bad row."""
    del mtime_ns, size  # Cache keys only: a rewritten file is scanned again.
    rows = 0
    for number, row in row_files.file_rows(path):
        try:
            row_texts(row, spec)
        except _Problem as err:
            raise DataError(f"{path}:{number}: {err}") from None
        rows += 1
    return rows


def count_rows(path: Path, spec: FileSpec) -> int:
    """Rows of the split file `path` after checking every one (once per version of the file)."""
    return _scan(str(path), spec, *storage.version(path))


def split_files(folder: Path) -> dict[str, Path]:
    """{split: its file} of a task folder; DataError for a missing train or test file, or two files of a split."""
    found = {}
    for split in sources.SPLITS:
        paths = [folder / f"{split}{suffix}" for suffix in row_files.FORMATS if (folder / f"{split}{suffix}").is_file()]
        if len(paths) > 1:
            raise DataError(f"{folder}: {' and '.join(p.name for p in paths)} are both the {split} split; keep one")
        if paths:
            found[split] = paths[0]
        elif split != "validation":
            *others, last = [f"{split}{suffix}" for suffix in row_files.FORMATS]
            names = f"{', '.join(others)} or {last}"
            raise DataError(f"{folder}: no {split} file ({names})")
    return found


# ---------------------------------------------------------------------------------------------
# The seqio source and task.
# ---------------------------------------------------------------------------------------------


class FilesSource(seqio.DataSource):
    """The rows of a task folder's splits (module docstring), as {field: string} of the input fields and target;
    `paths` {} (a task registered from an adapter's record) serves no rows."""

    def __init__(self, name: str, spec: FileSpec, paths: Mapping[str, Path]):
        super().__init__(splits=sources.SPLITS, caching_permitted=False)
        self._name, self._spec, self._paths = name, spec, dict(paths)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> list[str]:
        return [split]

    def plan(self) -> sources.SplitPlan:
        """Which file and rows make each split (after checking every row of every file)."""
        if not self._paths:
            raise DataError(f"task {self._name} was registered from an adapter: its files are not here")
        spec, paths = self._spec, self._paths
        counts = {split: count_rows(path, spec) for split, path in paths.items()}
        if "validation" in paths:
            parts = {split: (split, None) for split in sources.SPLITS}
            return sources.SplitPlan(parts, counts, protocol(spec, has_validation=True))
        n = counts["train"]
        carved = max(1, round(spec.validation_fraction * n))
        if carved >= n:
            raise DataError(f"{paths['train']}: {n} row(s), too few to carve a validation split; add a validation file")
        chosen, rest = sources.permutation_masks(n, carved)
        parts = {"train": ("train", rest), "validation": ("train", chosen), "test": ("test", None)}
        sizes = {"train": n - carved, "validation": carved, "test": counts["test"]}
        return sources.SplitPlan(parts, sizes, protocol(spec, has_validation=False))

    def origins(self) -> dict[str, str]:
        """{split: "PATH (N rows)"}, after checking every row (registry.check_data)."""
        plan = self.plan()
        return {
            split: f"{self._paths[official]} ({plan.sizes[split]} rows)" for split, (official, _) in plan.parts.items()
        }

    def num_input_examples(self, split: str) -> int:
        return self.plan().sizes[split]

    def get_dataset(
        self,
        split="train",
        shuffle=True,
        seed=None,
        shard_info=None,
        *,
        sequence_length=None,
        use_cached=False,
        num_epochs=1,
    ) -> tf.data.Dataset:
        del shuffle, seed, sequence_length, use_cached, num_epochs  # File order; the task shuffles examples.
        official, mask = self.plan().parts[split]
        path, spec = self._paths[official], self._spec
        keys = (*spec.fields, spec.target)

        def chunks():
            columns = {key: [] for key in keys}
            for index, (_, row) in enumerate(row_files.file_rows(path)):
                if mask is None or mask[index]:
                    for key, text in row_texts(row, spec).items():
                        columns[key].append(text)
                if len(columns[spec.target]) == _CHUNK:
                    yield {key: np.asarray(values, object) for key, values in columns.items()}
                    columns = {key: [] for key in keys}
            if columns[spec.target]:
                yield {key: np.asarray(values, object) for key, values in columns.items()}

        signature = {key: tf.TensorSpec([None], tf.string) for key in keys}
        ds = tf.data.Dataset.from_generator(chunks, output_signature=signature).unbatch()
        if shard_info is not None:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds


def protocol(spec: FileSpec, has_validation: bool) -> str:
    """The split protocol of a file-backed task, as its results record it."""
    if has_validation:
        return "file-backed task: the train, validation and test files as given"
    return (
        f"file-backed task: train and test files as given, validation {spec.validation_fraction:g} of the train "
        f"rows drawn by a permutation seeded with {sources.SEED}"
    )


def _format(spec: FileSpec):
    """The preprocessor: raw fields -> {"inputs": the template filled, "targets": the target ("" if absent)}."""

    @seqio.map_over_dataset
    def fn(ex: Mapping[str, tf.Tensor]) -> dict:
        parts = []
        for literal, field in spec.template:
            parts += [literal] if literal else []
            parts += [ex[field]] if field is not None else []
        inputs = parts[0] if len(parts) == 1 else tf.strings.join(parts)
        return {"inputs": inputs, "targets": ex[spec.target] if spec.target in ex else tf.constant("")}

    return fn


def task_eval(spec: FileSpec) -> TaskEval:
    """How a file-backed task is scored: its metric (METRICS) and, with labels, rank classification's labels."""
    if spec.metric in CLASS_METRICS:
        postprocess = functools.partial(pp.class_id, label_names=spec.labels)
        metric = {
            "accuracy": metrics.accuracy,
            "f1": metrics.f1_with_invalid,
            "macro_f1": metrics.mean_class_f1(len(spec.labels or ())),
        }[spec.metric]
    elif spec.metric in NUMBER_METRICS:
        postprocess = pp.number
        metric = metrics.pearson_corrcoef if spec.metric == "pearson" else metrics.spearman_corrcoef
    else:
        postprocess, metric = pp.words, metrics.exact_match if spec.metric == "exact_match" else metrics.token_f1
    return TaskEval(postprocess, (metric,), spec.labels, always_decode=spec.labels is None)


_RECORDS: dict[str, dict] = {}  # {seqio name: `record`} of every file-backed task registered here.


def _register(name: str, spec: FileSpec, paths: Mapping[str, Path], record: dict) -> str:
    if registry.seqio_name(name) not in seqio.TaskRegistry.names():
        source = FilesSource(name, spec, paths)
        row_features = {field: tf.TensorSpec([], tf.string) for field in spec.fields}
        check = source.origins if paths else None
        split_protocol = protocol(spec, has_validation="validation" in paths or not paths)
        registry.register(
            name, source, [_format(spec), features.tokenize], task_eval(spec), split_protocol, row_features, check
        )
        _RECORDS[registry.seqio_name(name)] = record
    return registry.seqio_name(name)


def register(path: str, overrides: Mapping | None = None) -> str:
    """Registers the task of folder `path` (settings: its task.json under `overrides`); returns its seqio name.
    Reads only task.json and the folder's listing; DataError for a missing folder or file, or a bad setting."""
    folder = storage.absolute(path)  # "a/../b" and "./b" name one folder, one task.
    if not folder.is_dir():
        raise DataError(f"{SCHEME}{path}: no folder {folder}")
    spec = load_spec(folder, overrides or {})
    paths = split_files(folder)
    digest = hashlib.sha256(json.dumps({"folder": str(folder), **spec.to_json()}, sort_keys=True).encode())
    slug = re.sub(r"[^a-z0-9]+", "_", folder.name.lower()).strip("_") or "data"
    name = f"files_{slug}_{digest.hexdigest()[:8]}"
    return _register(name, spec, paths, {"folder": str(folder), **spec.to_json()})


def resolve(task: str, overrides: Mapping | None = None) -> list[str]:
    """The comma-separated names of `config.task`, each `files:PATH` registered and replaced by its seqio name."""
    names = [name.strip() for name in task.split(",")]
    return [register(name.removeprefix(SCHEME), overrides) if name.startswith(SCHEME) else name for name in names]


def record(task: str) -> dict | None:
    """What an adapter keeps of a file-backed task ({"folder", settings}), None for other tasks."""
    return _RECORDS.get(registry.seqio_name(task))


def register_recorded(task: str, recorded: Mapping) -> str:
    """Registers task `task` from its `record` without its folder, so that rows are formatted and scored as in
    training (serving); returns its seqio name."""
    spec = make_spec({key: recorded[key] for key in SPEC_KEYS}, f"the record of task {task}")
    return _register(task.removeprefix(registry.PREFIX), spec, {}, dict(recorded))


def checksums(task_names: Iterable[str]) -> dict[str, str]:
    """{path: sha256} of every file (splits and task.json) of the file-backed tasks among `task_names`."""
    found = {}
    for name in task_names:
        if (recorded := record(name)) is not None:
            folder = storage.path(recorded["folder"])
            for path in [*split_files(folder).values(), folder / SPEC_FILE]:
                if path.is_file():
                    found[str(path)] = storage.sha256(path)
    return found
