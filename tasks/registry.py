"""The one helper that registers a task, the settings `tasks.configure` changes, and `tasks.info`.

Every task is registered as the seqio task `sharpt_<name>` with:
- a `sources.ProtocolSource` (TFDS or the data folder, cut into train/validation/test by the split protocol);
- its format (raw rows -> inputs/targets strings and the fields the postprocessors read), then tokenisation
  into `inputs`, `targets` and `instance_inputs` (tasks/features.py) and EOS after trimming;
- the postprocessor and metrics of `tasks.metrics.TASK_EVAL[name]`, used as they are.

Settings are read when a dataset is built, never at registration, so `import tasks` touches no file and no
network, and `configure` applies to every task already registered.
"""

import dataclasses

import seqio

from tasks import features, sources
from tasks.metrics import TASK_EVAL
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


_FAMILIES: dict[str, str] = {}


def add_task(raw: sources.RawData, family: str, format_fn: Format) -> seqio.Task:
    """Registers `sharpt_<raw.name>`: its source, `format_fn`, tokenisation, postprocessor and metrics."""
    task_eval = TASK_EVAL[raw.name]
    _FAMILIES[raw.name] = family
    return seqio.TaskRegistry.add(
        PREFIX + raw.name,
        source=sources.ProtocolSource(raw, lambda: SETTINGS.data_dir),
        preprocessors=[format_fn, features.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=OUTPUT_FEATURES,
        postprocess_fn=task_eval.postprocess_fn,
        metric_fns=list(task_eval.metric_fns),
    )


def raw_data(name: str) -> sources.RawData:
    """Where task `name` reads its rows (its RawData)."""
    return _source(name).raw


def _source(name: str) -> sources.ProtocolSource:
    name = name.removeprefix(PREFIX)
    if name not in _FAMILIES:
        raise KeyError(f"unknown task {name!r}; tasks are {names()}")
    return seqio.TaskRegistry.get(PREFIX + name).source


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
