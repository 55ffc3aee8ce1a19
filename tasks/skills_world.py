"""The skills world: text-to-text tasks that share latent skills, for testing whether SharPT learns.

Every instance is a short list of English words (4-8, all distinct) from six categories of 16 words. A *skill*
turns the list into the target list (reverse, sort, ...). A task writes its instances as

    "<phrase>: w1 w2 ... wn"  ->  "skill(w1 ... wn)"

where the phrase names the task in plain English ("reverse the order"). The split of roles is deliberate: the
frozen T5 backbone is pretrained (scripts/make_skills_backbone.py) to do every skill after an instruction token
(`do_<skill>`) and to *ignore* these phrases (they appear there after random instructions), so without a prompt
it cannot tell which skill a task wants; the instance encoder (a real sentence encoder) reads the phrase and
the words. A soft prompt has to supply the skill, and SharPT's codebook has to find it from the instance.

Tasks (the world seed fixes every example; each example records its ground-truth `skill`):
- 8 sources, one per skill in `SOURCE_SKILLS`, on words of the categories animal, color, fruit and tool
  (words of an instance drawn from all four), 2,000 training examples each, mixed in `sharpt_skills_sources`;
- 4 targets on the held-out categories body and weather, each trainable at 16, 64 and 256 examples
  (`sharpt_skills_<target>_n<N>`: the first N of one stream, so the sizes are nested), with fixed validation
  (100) and test (200) sets:
    reverse_shift    a source skill (reverse) under a new phrase and new words;
    sort_shift       the same for sort, the slowest skill to learn;
    sort_or_reverse  the instance decides: body words are sorted, weather words reversed (one category per
                     instance), so one task-level prompt must cover two behaviours;
    swap             negative control: swapping neighbouring pairs, a skill the backbone knows but no source
                     uses.
Scoring: exact match of the whole word list and token accuracy (position-wise), both in percent.
"""

import dataclasses
import functools
import re
import unicodedata
import zlib

import numpy as np
import seqio
import tensorflow as tf
from absl import logging as absl_logging

from tasks import features, registry
from tasks.metrics import TaskEval

WORLD_SEED = 2026
# What every results file records as the split protocol (sharpt_jax.scoring.scoring_protocol).
SPLIT_PROTOCOL = f"skills world (seed {WORLD_SEED}): generated train, validation 100, test 200"
CATEGORIES = {
    "animal": "cat dog horse cow pig sheep goat lion tiger bear wolf fox deer mouse rabbit duck",
    "color": "red blue green yellow black white brown pink purple orange gray silver gold violet crimson amber",
    "fruit": "apple banana cherry grape lemon lime mango date peach pear plum nut fig coconut olive berry",
    "tool": "hammer saw drill knife axe shovel rake tape ladder rope nail screw brush needle scissors hook",
    "body": "hand foot head arm leg knee elbow nose ear eye mouth finger toe neck chest shoulder",
    "weather": "rain snow wind storm cloud sun fog ice thunder frost hail mist breeze flood heat dust",
}
WORDS = {category: tuple(words.split()) for category, words in CATEGORIES.items()}
ALL_WORDS = tuple(w for words in WORDS.values() for w in words)
MIN_WORDS, MAX_WORDS = 4, 8


def _mapped() -> dict[str, str]:
    """The fixed table of the `map` skill: a permutation of all 96 words drawn from the world seed."""
    order = np.random.default_rng(WORLD_SEED).permutation(len(ALL_WORDS))
    return {word: ALL_WORDS[i] for word, i in zip(ALL_WORDS, order, strict=True)}


MAP_TABLE = _mapped()

# Skill name -> list of words -> list of words.
SKILLS = {
    "copy": lambda w: list(w),
    "reverse": lambda w: w[::-1],
    "sort": sorted,
    "first3": lambda w: w[:3],
    "last3": lambda w: w[-3:],
    "map": lambda w: [MAP_TABLE[x] for x in w],
    "even": lambda w: w[::2],  # Keeps the 1st, 3rd, 5th ... word.
    "rotate": lambda w: w[1:] + w[:1],
    "swap": lambda w: [x for i in range(0, len(w), 2) for x in w[i : i + 2][::-1]],
}
SOURCE_SKILLS = ("copy", "reverse", "sort", "first3", "last3", "map", "even", "rotate")
SOURCE_CATEGORIES = ("animal", "color", "fruit", "tool")
TARGET_CATEGORIES = ("body", "weather")


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """One behaviour of a task: instances written with `phrase`, their words drawn from the pooled `categories`,
    their targets made by `skill`."""

    skill: str
    phrase: str
    categories: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SkillTask:
    """One task of the world.

    Attributes:
      name: the short name; the seqio task is `sharpt_skills_<name>` (plus `_n<N>` for target sizes).
      behaviours: what its instances do. With one behaviour every instance uses it; with several (an
        instance-mixed task) each instance first draws its behaviour uniformly, then its words from that
        behaviour's categories, and is written with that behaviour's phrase.
      num_train: training examples (the largest size for targets).
      num_validation, num_test: the fixed held-out splits.
    """

    name: str
    behaviours: tuple[Behaviour, ...]
    num_train: int
    num_validation: int = 100
    num_test: int = 200

    @property
    def skills(self) -> tuple[str, ...]:
        return tuple(b.skill for b in self.behaviours)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for b in self.behaviours for c in b.categories))

    def example(self, rng: np.random.Generator) -> dict[str, str]:
        """One raw example {"inputs", "targets", "skill", "category"} drawn with `rng`."""
        length = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
        behaviour = self.behaviours[0 if len(self.behaviours) == 1 else int(rng.integers(len(self.behaviours)))]
        pool = [w for c in behaviour.categories for w in WORDS[c]]
        words = [pool[i] for i in rng.choice(len(pool), length, replace=False)]
        return {
            "inputs": f"{behaviour.phrase}: {' '.join(words)}",
            "targets": " ".join(SKILLS[behaviour.skill](words)),
            "skill": behaviour.skill,
            "category": "+".join(behaviour.categories),
        }

    def examples(self, split: str, num: int | None = None) -> list[dict[str, str]]:
        """The first `num` examples of `split` (default: all of it); the same list on every call."""
        sizes = {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}
        if split not in sizes:
            raise ValueError(f"skills task {self.name} has splits {', '.join(sizes)}, not {split!r}")
        num = sizes[split] if num is None else num
        rng = np.random.default_rng([WORLD_SEED, zlib.crc32(f"{self.name}/{split}".encode())])
        return [self.example(rng) for _ in range(num)]


def _task(name: str, phrase: str, skills: tuple[str, ...], categories: tuple[str, ...], num_train: int) -> SkillTask:
    """A task of the original world: one skill on words of all `categories`, or one skill per category."""
    if len(skills) == 1:
        return SkillTask(name, (Behaviour(skills[0], phrase, categories),), num_train)
    return SkillTask(
        name, tuple(Behaviour(s, phrase, (c,)) for s, c in zip(skills, categories, strict=True)), num_train
    )


SOURCES = tuple(
    _task(name, phrase, (name,), SOURCE_CATEGORIES, num_train=2000)
    for name, phrase in (
        ("copy", "repeat the words"),
        ("reverse", "reverse the order"),
        ("sort", "sort alphabetically"),
        ("first3", "keep the first three"),
        ("last3", "keep the last three"),
        ("map", "translate each word"),
        ("even", "drop every second word"),
        ("rotate", "move first to end"),
    )
)
TARGETS = (
    _task("reverse_shift", "say it backwards", ("reverse",), TARGET_CATEGORIES, num_train=256),
    _task("sort_shift", "put in alphabetical order", ("sort",), TARGET_CATEGORIES, num_train=256),
    _task("sort_or_reverse", "rearrange the words", ("sort", "reverse"), TARGET_CATEGORIES, num_train=256),
    _task("swap", "swap neighbouring pairs", ("swap",), TARGET_CATEGORIES, num_train=256),
)
TARGET_SIZES = (16, 64, 256)
TASKS = {t.name: t for t in SOURCES + TARGETS}
PREFIX = registry.PREFIX + "skills_"
MIXTURE = PREFIX + "sources"
INSTRUCTION = "do_{}"  # The backbone's instruction word for a skill.


def task_name(target: str, num_train: int | None = None) -> str:
    """The seqio name of a task ("sharpt_skills_swap") or of a target at a training size ("..._n16"); a task
    made from a spec has only its sizes (`register_spec`)."""
    if target not in TASKS and target not in SPEC_TASKS:
        raise KeyError(f"unknown skills task {target!r}; tasks are {', '.join(TASKS)} and registered specs")
    return PREFIX + target + ("" if num_train is None else f"_n{num_train}")


def base_task(name: str) -> SkillTask:
    """The SkillTask of a seqio name (with or without prefix and size suffix)."""
    short = name.removeprefix(PREFIX).removeprefix("skills_")
    known = {**TASKS, **SPEC_TASKS}
    return known[short.rsplit("_n", 1)[0] if short not in known else short]


# ---------------------------------------------------------------------------------------------
# Target specs: a task of the world written as one string (configs/skills.py, --config.skills.targets).
# ---------------------------------------------------------------------------------------------

SPEC_GRAMMAR = "[NAME=]SKILL:PHRASE:CAT[+CAT...][;SKILL:PHRASE:CAT[+CAT...]...][@N], or a world task's name[@N]"
SCHEME = "skills:"  # config.task = "skills:SPEC@N" names a spec target (`resolve`).
SPEC_TASKS: dict[str, SkillTask] = {}  # The tasks made from specs so far, by name (beside TASKS).
_NAME = re.compile(r"[A-Za-z0-9_]+")


class SpecError(ValueError):
    """A target spec that does not follow SPEC_GRAMMAR; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed target spec: the task, and its training size (None: the experiment's sizes)."""

    spec: str
    task: SkillTask
    num_train: int | None


def parse_spec(spec: str) -> Target:
    """A target spec -> Target (nothing registered).

    "A4=sort:sort alphabetically:body;reverse:reverse the order:weather@16" is the instance-mixed task A4 (body
    words sorted under one phrase, weather words reversed under another) with 16 training examples. Without
    NAME= the name is made from the behaviours. A world task's name ("reverse_shift", or a source such as
    "reverse") is that task, unchanged. Examples are drawn from the world seed and the name, so one name always
    means the same examples, and the sizes of a name are nested.
    """
    text, num_train = spec.strip(), None
    if "@" in text:
        text, _, size = text.rpartition("@")
        if not size.strip().isdigit() or int(size) <= 0:
            raise SpecError(
                f"target spec {spec!r}: the size after @ must be a positive integer; grammar {SPEC_GRAMMAR}"
            )
        num_train = int(size)
    name, eq, body = text.partition("=")
    name, body = (name.strip(), body.strip()) if eq else ("", text)
    if ":" not in body:  # A world task by name.
        if body not in TASKS or (name and name != body):
            raise SpecError(
                f"target spec {spec!r}: {body!r} is not a world task ({', '.join(TASKS)}); grammar {SPEC_GRAMMAR}"
            )
        return Target(spec, TASKS[body], num_train)
    behaviours = tuple(_behaviour(part, spec) for part in body.split(";"))
    name = name or _name_of(behaviours)
    if not _NAME.fullmatch(name) or re.search(r"_n\d+$", name):
        raise SpecError(f"target spec {spec!r}: name {name!r} must be letters, digits and _, not ending _n<N>")
    if name in TASKS and TASKS[name].behaviours != behaviours:
        raise SpecError(f"target spec {spec!r}: {name!r} is a world task with other behaviours; choose another NAME=")
    task = TASKS.get(name) or SkillTask(name, behaviours, num_train=max(num_train or 0, *TARGET_SIZES))
    return Target(spec, task, num_train)


def split_specs(text: str) -> list[str]:
    """Comma-separated target specs (`--config.skills.targets`) -> the specs. SpecError for a piece that ends in
    SKILL:PHRASE before another piece: a comma inside the phrase (the list cannot hold one) or missing categories."""
    specs = [piece.strip() for piece in text.split(",")]
    for i, piece in enumerate(specs[:-1]):
        if piece.split(";")[-1].count(":") == 1:
            raise SpecError(
                f"target list {text!r}: {piece!r} is followed by {specs[i + 1]!r}; commas separate the specs, so a "
                f"phrase cannot hold one (or its categories are missing); grammar {SPEC_GRAMMAR}"
            )
    return [piece for piece in specs if piece]


def _behaviour(part: str, spec: str) -> Behaviour:
    fields = [f.strip() for f in part.split(":")]
    if len(fields) != 3 or not all(fields):
        raise SpecError(f"target spec {spec!r}: {part!r} is not SKILL:PHRASE:CAT[+CAT]; grammar {SPEC_GRAMMAR}")
    skill, phrase, categories = fields[0], " ".join(fields[1].split()), tuple(c.strip() for c in fields[2].split("+"))
    if skill not in SKILLS:
        raise SpecError(f"target spec {spec!r}: unknown skill {skill!r}; skills are {', '.join(SKILLS)}")
    unknown = [c for c in categories if c not in WORDS]
    if unknown or len(set(categories)) < len(categories):
        raise SpecError(f"target spec {spec!r}: categories must be distinct, of {', '.join(WORDS)}; got {categories}")
    if len([w for c in categories for w in WORDS[c]]) < MAX_WORDS:
        raise SpecError(f"target spec {spec!r}: too few words")
    return Behaviour(skill, phrase, categories)


def _name_of(behaviours: tuple[Behaviour, ...]) -> str:
    """The name of a spec without NAME=: its skills, phrases and categories in ASCII letters, digits and _ (accents
    dropped, "déjà vu" -> "deja_vu"; other characters become _)."""
    label = " ".join(f"{b.skill} {b.phrase} {' '.join(b.categories)}" for b in behaviours).lower()
    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]", "_", ascii_label)).strip("_")


def register_spec(spec: str) -> Target:
    """Parses a target spec and remembers its task (an error if its name means another task); its seqio tasks
    are then registered size by size with `register_size`."""
    target = parse_spec(spec)
    known = SPEC_TASKS.get(target.task.name, TASKS.get(target.task.name))
    if known is not None and known.behaviours != target.task.behaviours:
        raise SpecError(f"target spec {spec!r}: the name {target.task.name!r} is taken by another spec; give NAME=")
    if known is None:
        SPEC_TASKS[target.task.name] = target.task
    return target


def register_size(task: SkillTask, num_train: int) -> str:
    """Registers (once) the seqio task of `task` with its first `num_train` training examples; returns its
    short name without the "sharpt_" prefix (what config.task takes), e.g. "skills_a1_n16"."""
    name = task_name(task.name, num_train)
    if name not in seqio.TaskRegistry.names():
        _register(name, task, num_train)
    return name.removeprefix(registry.PREFIX)


def resolve(name: str) -> str:
    """A task name as config.task gives it -> the registered task's name without the "sharpt_" prefix.

    "skills:SPEC@N" (SCHEME, then a spec with its size) registers the spec's task at size N on first use, so a run
    of a spec target can be named, resumed and scored again by any process from its config alone; any other name
    is returned as it is.
    """
    if not name.startswith(SCHEME):
        return name
    target = register_spec(name.removeprefix(SCHEME))
    if target.num_train is None:
        raise SpecError(f"task {name!r}: a {SCHEME} task name gives its training size, {SCHEME}SPEC@N")
    return register_size(target.task, target.num_train)


def pretraining_example(rng: np.random.Generator) -> dict[str, str]:
    """A backbone pretraining example: "do_<skill> [<phrase of any task>:] words" -> skill(words).

    Skills and words are drawn from all 9 skills and all 96 words. Half the examples carry a task phrase drawn
    independently of the skill, so the backbone learns that phrases say nothing about what to do.
    """
    skill = list(SKILLS)[int(rng.integers(len(SKILLS)))]
    length = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
    words = [ALL_WORDS[i] for i in rng.choice(len(ALL_WORDS), length, replace=False)]
    parts = [INSTRUCTION.format(skill)]
    if rng.random() < 0.5:
        parts.append(list(TASKS.values())[int(rng.integers(len(TASKS)))].behaviours[0].phrase + ":")
    return {"inputs": " ".join(parts + words), "targets": " ".join(SKILLS[skill](words)), "skill": skill}


def vocabulary_words() -> list[str]:
    """Every whitespace-separated word the world writes (the T5 vocabulary is one piece per word)."""
    words = set(ALL_WORDS) | {INSTRUCTION.format(s) for s in SKILLS}
    for phrase in {b.phrase for task in TASKS.values() for b in task.behaviours}:
        *head, last = phrase.split()
        words.update(head + [last + ":"])
    return sorted(words)


# ---------------------------------------------------------------------------------------------
# Scoring.
# ---------------------------------------------------------------------------------------------


def normalize(text, example=None, is_target=False) -> str:
    """seqio postprocessor: the words separated by single spaces."""
    del example, is_target
    return " ".join((text.decode("utf-8") if isinstance(text, bytes) else text).split())


def exact_match(targets: list[str], predictions: list[str]) -> dict[str, float]:
    """Percent of predictions equal to their target word list."""
    return {"exact_match": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions, strict=True)]))}


def token_accuracy(targets: list[str], predictions: list[str]) -> dict[str, float]:
    """Percent of positions right, per example over max(len(target), len(prediction)) positions, averaged."""
    scores = []
    for target, prediction in zip(targets, predictions, strict=True):
        t, p = target.split(), prediction.split()
        scores.append(sum(a == b for a, b in zip(t, p, strict=False)) / max(len(t), len(p), 1))
    return {"token_accuracy": 100.0 * float(np.mean(scores))}


EVAL = TaskEval(normalize, (exact_match, token_accuracy), always_decode=True)


# ---------------------------------------------------------------------------------------------
# Registration.
# ---------------------------------------------------------------------------------------------


def _dataset_fn(task: SkillTask, num_train: int):
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # One file-less shard; the order is the stream's.
        rows = task.examples(split, num_train if split == "train" else None)
        return tf.data.Dataset.from_tensor_slices({key: [r[key] for r in rows] for key in rows[0]})

    return dataset_fn


# The raw fields of a row that the tasks read (serving passes rows like these; the generator writes more).
ROW_FEATURES = {"inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string)}


def _register(name: str, task: SkillTask, num_train: int) -> None:
    source = seqio.FunctionDataSource(
        _dataset_fn(task, num_train),
        splits=("train", "validation", "test"),
        num_input_examples={"train": num_train, "validation": task.num_validation, "test": task.num_test},
    )
    registry.register(name, source, [features.tokenize], EVAL, SPLIT_PROTOCOL, ROW_FEATURES)


@functools.cache
def register() -> None:
    """Registers every skills task, each target at every size, and the source mixture (once)."""
    # seqio warns for every training stream of a FunctionDataSource that restarts may shuffle differently; the
    # trainer replays its stream exactly on resume, so for these generated tasks the warning is noise.
    absl_logging.get_absl_logger().addFilter(lambda record: "uncached FunctionDataset" not in record.getMessage())
    for task in SOURCES:
        _register(task_name(task.name), task, task.num_train)
    for task in TARGETS:
        _register(task_name(task.name), task, task.num_train)
        for size in TARGET_SIZES:
            _register(task_name(task.name, size), task, size)
    seqio.MixtureRegistry.add(MIXTURE, [task_name(t.name) for t in SOURCES], default_rate=1.0)


register()
