"""The one helper that registers a task, the settings `tasks.configure` changes, and `tasks.info`.

Every task, of every family (the paper's 25, the skills world), is registered by `register` as the seqio task
`sharpt_<name>` with its source, its preprocessors followed by EOS after trimming, the project's output features
and the postprocessor and metrics of its `TaskEval`; `register` also records how the task is scored (its
`TaskEval` and split protocol) and the raw fields of a row, which the evaluator and the server read through
`task_eval`, `split_protocol` and `row_features` whatever the family. The paper's tasks come through `add_task`:
- a `sources.ProtocolSource` (TFDS or the data folder, cut into train/validation/test by the split protocol);
- its format (raw rows -> inputs/targets strings and the fields the postprocessors read), then tokenisation
  into `inputs`, `targets` and `instance_inputs` (tasks/features.py) and EOS after trimming;
- the postprocessor and metrics of `tasks.metrics.TASK_EVAL[name]`, used as they are.

Settings are read when a dataset is built, never at registration, so `import tasks` touches no file and no
network, and `configure` applies to every task already registered.
"""

import dataclasses
from collections.abc import Callable, Iterable

import seqio

from tasks import features, sources
from tasks.metrics import TASK_EVAL, TaskEval
from tasks.preprocessors import Format

PREFIX = "sharpt_"
DEFAULT_MIXTURE_CAP = 2**19  # Examples-proportional mixing limit K of T5 (Raffel et al., 2020, Sec. 3.5.2).


@dataclasses.dataclass
class Settings:
    """What `tasks.configure` sets (see its docstring)."""

    data_dir: str | None = None
    t5_vocab: str | None = None
    encoder_vocab: str | None = None
    mixture_cap: int = DEFAULT_MIXTURE_CAP


SETTINGS = Settings()

OUTPUT_FEATURES = features.output_features(
    features.LazyVocabulary("t5", lambda: SETTINGS.t5_vocab),
    features.LazyVocabulary("encoder", lambda: SETTINGS.encoder_vocab),
)


def configure(
    data_dir: str | None = None,
    t5_vocab: str | None = None,
    encoder_vocab: str | None = None,
    mixture_cap: int = DEFAULT_MIXTURE_CAP,
) -> None:
    """Sets the files every registered task reads; call it before building datasets (run.py does).

    Args:
      data_dir: a folder of `<name>/<split>.jsonl` files holding the raw fields and split names of each
        task's canonical source; a task reads such a file instead of TFDS wherever it exists. CxC and CR
        are read only from here.
      t5_vocab: the T5 SentencePiece model file (e.g. `spiece.model` of a Hugging Face T5 folder).
      encoder_vocab: the instance encoder's WordPiece `vocab.txt` (tokenised lower-cased, as uncased BERT).
      mixture_cap: the examples-proportional mixtures count at most this many examples of one task.
    """
    if mixture_cap < 1:
        raise ValueError(f"mixture_cap must be positive, got {mixture_cap}")
    SETTINGS.data_dir = None if data_dir is None else str(data_dir)
    SETTINGS.t5_vocab = None if t5_vocab is None else str(t5_vocab)
    SETTINGS.encoder_vocab = None if encoder_vocab is None else str(encoder_vocab)
    SETTINGS.mixture_cap = int(mixture_cap)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a results file records about a task.

    Attributes:
      name: the short task name (the seqio task is `sharpt_<name>`).
      family: the registry module that defines it (glue, super_glue, qa, multiple_choice, classification).
      source: "tfds:<builder>:<version>" (builders joined with "+"), or "files:<folder>" when it is read from
        the data folder.
      split_protocol: how train/validation/test were made, with the seed and the sizes.
      label_names: the label strings in class-id order (rank classification scores them), else None.
      always_decode: True where the answer is free text (squad, drop, record, wsc).
    """

    name: str
    family: str
    source: str
    split_protocol: str
    label_names: tuple[str, ...] | None
    always_decode: bool


@dataclasses.dataclass(frozen=True)
class Scoring:
    """How a registered task is scored and served (what `register` records beside the seqio task)."""

    task_eval: TaskEval
    split_protocol: str  # What every results file records about how the task's splits were made.
    row_features: sources.Features  # The raw fields of one row, as serving receives it.
    # Checks every row of the task's files: {split: where its rows come from} or DataError (file-backed tasks).
    check_data: Callable[[], dict[str, str]] | None = None


_FAMILIES: dict[str, str] = {}  # The paper's tasks (names()), by short name.
_SCORING: dict[str, Scoring] = {}  # Every registered task, by seqio name.


def seqio_name(task: str) -> str:
    """ "rte" or "sharpt_rte" -> "sharpt_rte"."""
    return PREFIX + task.removeprefix(PREFIX)


def register(
    name: str,
    source: seqio.DataSource,
    preprocessors: list,
    task_eval: TaskEval,
    split_protocol: str,
    row_features: sources.Features,
    check: Callable[[], dict[str, str]] | None = None,
) -> seqio.Task:
    """Registers the seqio task `sharpt_<name>`: `source`, `preprocessors` (raw rows -> tokenised features), EOS
    after trimming, and `task_eval`'s postprocessor and metrics; records how it is scored and served, and `check`,
    which `check_data` calls (a task that reads files of its own)."""
    _SCORING[seqio_name(name)] = Scoring(task_eval, split_protocol, row_features, check)
    return seqio.TaskRegistry.add(
        seqio_name(name),
        source=source,
        preprocessors=[*preprocessors, seqio.preprocessors.append_eos_after_trim],
        output_features=OUTPUT_FEATURES,
        postprocess_fn=task_eval.postprocess_fn,
        metric_fns=list(task_eval.metric_fns),
    )


def add_task(raw: sources.RawData, family: str, format_fn: Format) -> seqio.Task:
    """Registers one of the paper's tasks, `sharpt_<raw.name>`: its protocol source, `format_fn` and tokenisation,
    scored by `tasks.metrics.TASK_EVAL[raw.name]`."""
    _FAMILIES[raw.name] = family
    source = sources.ProtocolSource(raw, lambda: SETTINGS.data_dir)
    preprocessors = [format_fn, features.tokenize]
    return register(raw.name, source, preprocessors, TASK_EVAL[raw.name], sources.SPLIT_PROTOCOL, raw.features)


def _scoring(task: str) -> Scoring:
    if seqio_name(task) not in _SCORING:
        raise KeyError(f"unknown task {task!r}; tasks are {', '.join(names())}")
    return _SCORING[seqio_name(task)]


def task_eval(task: str) -> TaskEval:
    """The TaskEval of a registered task ("rte", "sharpt_rte", "skills_swap_n16")."""
    return _scoring(task).task_eval


def split_protocol(task: str) -> str:
    """How the splits of a registered task were made (recorded with every score)."""
    return _scoring(task).split_protocol


def row_features(task: str) -> sources.Features:
    """The raw fields of a row of a registered task (what `sharpt_jax.serving.predict` reads); KeyError for an
    unknown task."""
    return _scoring(task).row_features


def targets_vocabulary(task: str) -> seqio.Vocabulary:
    """The vocabulary of a registered task's "targets" feature (decodes its predictions)."""
    return seqio.get_mixture_or_task(seqio_name(task)).output_features["targets"].vocabulary


def raw_data(name: str) -> sources.RawData:
    """Where task `name` reads its rows (its RawData)."""
    return _source(name).raw


def _source(name: str) -> sources.ProtocolSource:
    name = name.removeprefix(PREFIX)
    if name not in _FAMILIES:
        raise KeyError(f"unknown task {name!r}; tasks are {names()}")
    return seqio.TaskRegistry.get(PREFIX + name).source


def check_data(task_names: Iterable[str]) -> dict[str, dict[str, str]]:
    """{task: {official split: where its rows come from (`sources.split_origin`)}} for the paper's tasks among
    `task_names` (short or seqio names), and {split: ...} of the tasks registered with a `check` (file-backed
    tasks); other tasks, such as the skills world's, make their rows.

    Every row of every data file is checked on the way, once per version of the file. Raises
    `sources.DataError` at the first split that cannot be read, naming the file and line of a bad row, or the
    missing file or TFDS builder and the command that prepares it. Runs call it before building models.
    """
    origins = {}
    for name in task_names:
        name = name.removeprefix(PREFIX)
        if name in _FAMILIES:
            raw = raw_data(name)
            origins[name] = {s: sources.split_origin(raw, s, SETTINGS.data_dir) for s in raw.official_splits}
        elif seqio_name(name) in _SCORING and _SCORING[seqio_name(name)].check_data is not None:
            origins[name] = _SCORING[seqio_name(name)].check_data()
    return origins


def label_names(name: str) -> tuple[str, ...] | None:
    """The label strings of task `name` in class-id order (tasks.metrics defines them), or None."""
    return TASK_EVAL[name].label_names


def names() -> list[str]:
    """The short names of the registered tasks, in registration order."""
    return list(_FAMILIES)


def info(name: str) -> TaskInfo:
    """The TaskInfo of task `name` ("rte" or "sharpt_rte"); reads row counts to describe the splits."""
    source = _source(name)
    name = name.removeprefix(PREFIX)
    task_eval = TASK_EVAL[name]
    return TaskInfo(
        name=name,
        family=_FAMILIES[name],
        source=source.raw.source_name(SETTINGS.data_dir),
        split_protocol=source.plan().description,
        label_names=task_eval.label_names,
        always_decode=task_eval.always_decode,
    )
