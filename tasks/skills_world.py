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
class SkillTask:
    """One task of the world.

    Attributes:
      name: the short name; the seqio task is `sharpt_skills_<name>` (plus `_n<N>` for target sizes).
      phrase: the words before the colon, which name the task to the instance encoder.
      skills: one skill applied to words drawn from all `categories`, or one skill per category (the instance
        draws its category, then its words from that category alone, and gets that category's skill).
      categories: where the words come from.
      num_train: training examples (the largest size for targets).
      num_validation, num_test: the fixed held-out splits.
    """

    name: str
    phrase: str
    skills: tuple[str, ...]
    categories: tuple[str, ...]
    num_train: int
    num_validation: int = 100
    num_test: int = 200

    def example(self, rng: np.random.Generator) -> dict[str, str]:
        """One raw example {"inputs", "targets", "skill", "category"} drawn with `rng`."""
        length = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
        if len(self.skills) == 1:
            skill, category = self.skills[0], "+".join(self.categories)
            pool = [w for c in self.categories for w in WORDS[c]]
        else:
            i = int(rng.integers(len(self.skills)))
            skill, category = self.skills[i], self.categories[i]
            pool = list(WORDS[category])
        words = [pool[i] for i in rng.choice(len(pool), length, replace=False)]
        return {
            "inputs": f"{self.phrase}: {' '.join(words)}",
            "targets": " ".join(SKILLS[skill](words)),
            "skill": skill,
            "category": category,
        }

    def examples(self, split: str, num: int | None = None) -> list[dict[str, str]]:
        """The first `num` examples of `split` (default: all of it); the same list on every call."""
        sizes = {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}
        if split not in sizes:
            raise ValueError(f"skills task {self.name} has splits {', '.join(sizes)}, not {split!r}")
        num = sizes[split] if num is None else num
        rng = np.random.default_rng([WORLD_SEED, zlib.crc32(f"{self.name}/{split}".encode())])
        return [self.example(rng) for _ in range(num)]


SOURCES = tuple(
    SkillTask(name, phrase, (name,), SOURCE_CATEGORIES, num_train=2000)
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
    SkillTask("reverse_shift", "say it backwards", ("reverse",), TARGET_CATEGORIES, num_train=256),
    SkillTask("sort_shift", "put in alphabetical order", ("sort",), TARGET_CATEGORIES, num_train=256),
    SkillTask("sort_or_reverse", "rearrange the words", ("sort", "reverse"), TARGET_CATEGORIES, num_train=256),
    SkillTask("swap", "swap neighbouring pairs", ("swap",), TARGET_CATEGORIES, num_train=256),
)
TARGET_SIZES = (16, 64, 256)
TASKS = {t.name: t for t in SOURCES + TARGETS}
PREFIX = registry.PREFIX + "skills_"
MIXTURE = PREFIX + "sources"
INSTRUCTION = "do_{}"  # The backbone's instruction word for a skill.


def task_name(target: str, num_train: int | None = None) -> str:
    """The seqio name of a task ("sharpt_skills_swap") or of a target at a training size ("..._n16")."""
    if target not in TASKS:
        raise KeyError(f"unknown skills task {target!r}; tasks are {', '.join(TASKS)}")
    return PREFIX + target + ("" if num_train is None else f"_n{num_train}")


def base_task(name: str) -> SkillTask:
    """The SkillTask of a seqio name (with or without prefix and size suffix)."""
    short = name.removeprefix(PREFIX).removeprefix("skills_")
    return TASKS[short.rsplit("_n", 1)[0] if short not in TASKS else short]


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
        parts.append(list(TASKS.values())[int(rng.integers(len(TASKS)))].phrase + ":")
    return {"inputs": " ".join(parts + words), "targets": " ".join(SKILLS[skill](words)), "skill": skill}


def vocabulary_words() -> list[str]:
    """Every whitespace-separated word the world writes (the T5 vocabulary is one piece per word)."""
    words = set(ALL_WORDS) | {INSTRUCTION.format(s) for s in SKILLS}
    for task in TASKS.values():
        *head, last = task.phrase.split()
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
