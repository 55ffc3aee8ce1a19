"""Bundled sample data: small, deterministic rows of all 25 tasks in their canonical raw schema.

`write_samples(out_dir)` writes `<out_dir>/<name>/<split>.jsonl` for every official split the registry
reads (DROP and RACE "dev", WinoGrande "train_xl", MNLI "validation_matched", ...), with the fields of the
TFDS features (class ids, `idx` records) or, for CxC and CR, of tasks/prepare.py. The labels follow from the
text by simple rules, so a model can learn them: sentiment from a positive or negative word, entailment from
word overlap, similarity from the number of shared words, answers that are spans of the passage, pronouns
resolved by gender. `train_sentencepiece` trains a small SentencePiece model on those files with T5's ids
(pad 0, eos 1, unk 2) for tests and the offline demo.

    python -m tasks.samples OUT_DIR    # writes the samples and OUT_DIR/spm.model
"""

import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import sentencepiece as spm

from tasks import registry

MEN = ("Bob", "Dave", "Frank", "Henry", "Jack", "Liam", "Noah", "Omar")
WOMEN = ("Alice", "Carol", "Erin", "Grace", "Ivy", "Kate", "Mia", "Nora")
NOUNS = ("camera", "garden", "laptop", "bicycle", "piano", "kitchen", "novel", "jacket", "boat", "tent")
COLOURS = ("red", "blue", "green", "white", "black", "yellow")
CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Rome", "Seoul")
VERBS = ("bought", "painted", "repaired", "sold", "borrowed", "cleaned")
POSITIVE = ("great", "wonderful", "excellent", "lovely", "superb")
NEGATIVE = ("awful", "terrible", "horrible", "dreadful", "poor")

Row = dict
Generator = Callable[[random.Random, int], Iterator[Row]]


def _person(rng: random.Random) -> str:
    return rng.choice(MEN + WOMEN)


def _fact(rng: random.Random, person: str | None = None) -> tuple[str, str, str, str, str]:
    """(sentence, person, verb, colour, noun) of a fact like "Alice bought the red camera in Rome."."""
    person, verb = person or _person(rng), rng.choice(VERBS)
    colour, noun, city = rng.choice(COLOURS), rng.choice(NOUNS), rng.choice(CITIES)
    return f"{person} {verb} the {colour} {noun} in {city}.", person, verb, colour, noun


def _sentiment(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(2)
    word = rng.choice(POSITIVE if label else NEGATIVE)
    return f"The {rng.choice(NOUNS)} from {rng.choice(CITIES)} was {word}.", label


def _sentiment_rows(text_key: str, with_idx: bool) -> Generator:
    def rows(rng, n):
        for i in range(n):
            text, label = _sentiment(rng)
            yield {text_key: text, "label": label, **({"idx": i} if with_idx else {})}

    return rows


def _pair(rng: random.Random, related: bool) -> tuple[str, str]:
    """Two sentences: the second restates the first when `related`, else it is an unrelated fact."""
    first, person, verb, colour, noun = _fact(rng)
    if related:
        return first, f"The {colour} {noun} was {verb} by {person}."
    return first, _fact(rng)[0]


def _pair_rows(task: str, keys: tuple[str, str], with_idx: bool = True) -> Generator:
    """Sentence pairs of an NLI or paraphrase task: the entailment / equivalent / duplicate class restates
    the first sentence, contradiction negates it with "never", any other class is an unrelated fact."""
    label_names = registry.label_names(task)

    def rows(rng, n):
        for i in range(n):
            label = rng.randrange(len(label_names))
            related = label_names[label] in ("entailment", "equivalent", "duplicate")
            first, second = _pair(rng, related)
            if label_names[label] == "contradiction":
                second = first.replace(" the ", " never the ", 1)
            yield {keys[0]: first, keys[1]: second, "label": label, **({"idx": i} if with_idx else {})}

    return rows


def _similarity_rows(score_key: str, with_idx: bool) -> Generator:
    """Pairs sharing k of their 5 content words; the score is k (0-5) with noise on a 0.1 grid."""

    def rows(rng, n):
        for i in range(n):
            words, other = ([_person(rng)] + [rng.choice(c) for c in (VERBS, COLOURS, NOUNS, CITIES)] for _ in range(2))
            shared = rng.randrange(6)
            second = words[:shared] + other[shared:]
            score = min(5.0, shared + rng.choice((0.0, 0.1, 0.3)))
            row = {
                "sentence1": "{} {} the {} {} in {}.".format(*words),
                "sentence2": "{} {} the {} {} in {}.".format(*second),
                score_key: score,
            }
            yield {**row, **({"idx": i} if with_idx else {})}

    return rows


def _cola(rng, n):
    for i in range(n):
        sentence, label = _fact(rng)[0], rng.randrange(2)
        if not label:  # Unacceptable: the words of the sentence in reverse order.
            sentence = " ".join(reversed(sentence.rstrip(".").split())) + "."
        yield {"sentence": sentence, "label": label, "idx": i}


def _boolq(rng, n):
    for i in range(n):
        sentence, person, verb, colour, noun = _fact(rng)
        label = rng.randrange(2)
        asked = colour if label else rng.choice([c for c in COLOURS if c != colour])
        yield {"question": f"did {person.lower()} buy a {asked} {noun}", "passage": sentence, "label": label, "idx": i}


def _copa(rng, n):
    for i in range(n):
        person, noun = _person(rng), rng.choice(NOUNS)
        question = rng.choice(("cause", "effect"))
        right = f"{person} wanted a new {noun}." if question == "cause" else f"{person} used the {noun}."
        wrong = f"The {rng.choice([x for x in NOUNS if x != noun])} was in {rng.choice(CITIES)}."
        label = rng.randrange(2)
        choices = (wrong, right) if label else (right, wrong)
        yield {
            "premise": f"{person} bought a {noun}.",
            "choice1": choices[0],
            "choice2": choices[1],
            "question": question,
            "label": label,
            "idx": i,
        }


def _wic(rng, n):
    for i in range(n):
        word, label = rng.choice(NOUNS), rng.randrange(2)
        place = rng.choice(CITIES)
        first = f"The {word} stayed in {place}."
        second = f"The {word} stayed in {place if label else 'the ' + rng.choice(COLOURS) + ' box'}."
        start = len("The ")
        yield {
            "word": word,
            "sentence1": first,
            "sentence2": second,
            "start1": start,
            "start2": start,
            "end1": start + len(word),
            "end2": start + len(word),
            "idx": i,
            "label": label,
        }


def _wsc(rng, n):
    for i in range(n):
        man, woman = rng.choice(MEN), rng.choice(WOMEN)
        first, second = (man, woman) if rng.randrange(2) else (woman, man)
        pronoun_of = rng.choice((man, woman))
        pronoun = "he" if pronoun_of == man else "she"
        text = f"{first} called {second} because {pronoun} needed the {rng.choice(NOUNS)} ."
        candidate, candidate_index = rng.choice(((first, 0), (second, 2)))
        yield {
            "text": text,
            "span1_index": candidate_index,
            "span2_index": 4,
            "span1_text": candidate,
            "span2_text": pronoun,
            "idx": i,
            "label": int(candidate == pronoun_of),
        }


def _multirc(rng, n):
    paragraph_idx = question_idx = answer_idx = 0
    while answer_idx < n:
        facts = [_fact(rng) for _ in range(3)]
        paragraph = "<br>".join(f"<b>Sent {j + 1}: </b>{f[0]}" for j, f in enumerate(facts))
        for _, person, verb, colour, noun in facts[:2]:
            question = f"What did {person} do with the {noun}?"
            wrong_verb = rng.choice([v for v in VERBS if v != verb])
            options = [(f"{person} {verb} it", 1), (f"{person} {wrong_verb} a {colour} boat", 0)]
            for answer, label in options:
                yield {
                    "paragraph": paragraph,
                    "question": question,
                    "answer": answer,
                    "label": label,
                    "idx": {"paragraph": paragraph_idx, "question": question_idx, "answer": answer_idx},
                }
                answer_idx += 1
            question_idx += 1
        paragraph_idx += 1


def _record(rng, n):
    for i in range(n):
        facts = [_fact(rng) for _ in range(2)]
        entities = sorted({f[1] for f in facts} | {_person(rng)})
        passage = f"{facts[0][0]} {facts[1][0]}\n@highlight\n{facts[0][1]} is happy\n@highlight\nA new day."
        _, person, verb, colour, noun = facts[1]
        yield {
            "passage": passage,
            "query": f"@placeholder {verb} the {colour} {noun} .",
            "entities": entities,
            "answers": [person],
            "idx": {"passage": i, "query": i},
        }


def _squad(rng, n):
    for i in range(n):
        facts = [_fact(rng) for _ in range(2)]
        _, person, verb, colour, noun = facts[i % 2]
        yield {
            "qid": f"q{i}",
            "question": f"Who {verb} the {colour} {noun}?",
            "context": " ".join(f[0] for f in facts),
            "answers": [person, f"{person}."],
        }


def _drop(rng, n):
    for i in range(n):
        person, noun = _person(rng), rng.choice(NOUNS)
        a, b = rng.randrange(1, 10), rng.randrange(1, 10)
        passage = f"{person} bought {a} {noun}s on Monday and {b} {noun}s on Tuesday."
        yield {
            "query_id": f"d{i}",
            "passage": passage,
            "question": f"How many {noun}s did {person} buy?",
            "answer": str(a + b),
            "validated_answers": [str(a + b)],
        }


def _winogrande(rng, n):
    for _ in range(n):
        man, woman = rng.choice(MEN), rng.choice(WOMEN)
        options = (man, woman) if rng.randrange(2) else (woman, man)
        referent = rng.choice(options)
        pronoun = "his" if referent == man else "her"
        yield {
            "sentence": f"_ lost {pronoun} {rng.choice(NOUNS)} in {rng.choice(CITIES)}.",
            "option1": options[0],
            "option2": options[1],
            "label": options.index(referent),
        }


def _endings(rng: random.Random, noun: str, label: int) -> list[str]:
    others = [x for x in NOUNS if x != noun]
    return [
        f"then the {noun} was {rng.choice(COLOURS)}." if j == label else f"then a {rng.choice(others)} fell."
        for j in range(4)
    ]


def _hellaswag(rng, n):
    for i in range(n):
        noun, label = rng.choice(NOUNS), rng.randrange(4)
        yield {
            "context": f"{_person(rng)} picked up the {noun},",
            "endings": _endings(rng, noun, label),
            "activity_label": "Sample",
            "label": label,
            "split_type": "indomain",
            "source_id": f"s{i}",
        }


def _cosmosqa(rng, n):
    for i in range(n):
        noun, label = rng.choice(NOUNS), rng.randrange(4)
        answers = _endings(rng, noun, label)
        yield {
            "id": f"c{i}",
            "context": f"{_person(rng)} found a {noun} in {rng.choice(CITIES)}.",
            "question": "What happened next?",
            **{f"answer{j}": a for j, a in enumerate(answers)},
            "label": label,
        }


def _race(rng, n):
    for i in range(n):
        facts = [_fact(rng) for _ in range(3)]
        questions, options, answers = [], [], []
        for _, person, verb, colour, noun in facts[:2]:
            choices = rng.sample([p for p in MEN + WOMEN if p != person], 3)
            position = rng.randrange(4)
            choices.insert(position, person)
            questions.append(f"Who {verb} the {colour} {noun}?")
            options.append(choices)
            answers.append("ABCD"[position])
        yield {
            "example_id": f"r{i}.txt",
            "article": " ".join(f[0] for f in facts),
            "questions": questions,
            "options": options,
            "answers": answers,
        }


GENERATORS: dict[str, Generator] = {
    "docnli": _pair_rows("docnli", ("premise", "hypothesis"), with_idx=False),
    "yelp_polarity": _sentiment_rows("text", with_idx=False),
    "mnli": _pair_rows("mnli", ("premise", "hypothesis")),
    "qqp": _pair_rows("qqp", ("question1", "question2")),
    "qnli": _pair_rows("qnli", ("question", "sentence")),
    "record": _record,
    "cxc": _similarity_rows("score", with_idx=False),
    "squad": _squad,
    "drop": _drop,
    "sst2": _sentiment_rows("sentence", with_idx=True),
    "winogrande": _winogrande,
    "hellaswag": _hellaswag,
    "multirc": _multirc,
    "cosmosqa": _cosmosqa,
    "race": _race,
    "boolq": _boolq,
    "cb": _pair_rows("cb", ("premise", "hypothesis")),
    "cola": _cola,
    "copa": _copa,
    "cr": _sentiment_rows("sentence", with_idx=False),
    "mrpc": _pair_rows("mrpc", ("sentence1", "sentence2")),
    "rte": _pair_rows("rte", ("sentence1", "sentence2")),
    "stsb": _similarity_rows("label", with_idx=True),
    "wic": _wic,
    "wsc": _wsc,
}


def write_samples(out_dir: str | Path, num_per_split: int = 32, seed: int = 0) -> Path:
    """Writes `<out_dir>/<name>/<split>.jsonl` for every task and official split the registry reads.

    Args:
      out_dir: the data folder to write (created if needed).
      num_per_split: rows per split file (RACE rows are articles of two questions each).
      seed: the same seed always writes the same files.

    Returns:
      out_dir as a Path.
    """
    out_dir = Path(out_dir)
    for name in registry.names():
        for split in registry.raw_data(name).official_splits:
            rng = random.Random(f"{seed}:{name}:{split}")
            path = out_dir / name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = list(GENERATORS[name](rng, num_per_split))[:num_per_split]
            path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return out_dir


def _texts(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)


def train_sentencepiece(data_dir: str | Path, model_prefix: str | Path, vocab_size: int = 1000) -> Path:
    """Trains a unigram SentencePiece model on the text of `data_dir/*/*.jsonl`.

    The corpus is every string and field name of the rows, the task names and their label names (targets
    such as "not_entailment" are not in the raw rows). T5's special ids: pad 0, eos 1, unk 2, no bos. The
    model has at most `vocab_size` pieces (fewer on a small corpus). Training is single-threaded on an
    unshuffled corpus, so the same files give the same model.

    Returns:
      The model file, `<model_prefix>.model`.
    """
    words = {"<unk>"}
    for name in registry.names():
        words.update([name, *(registry.label_names(name) or ())])
    lines = []
    for path in sorted(Path(data_dir).glob("*/*.jsonl")):
        for row in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
            words.update(f"{key}:" for key in row)
            lines.extend(t.replace("\n", " ") for t in _texts(row))
    lines.append(" ".join(sorted(words)))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return Path(f"{model_prefix}.model")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tasks.samples OUT_DIR")
    print(train_sentencepiece(write_samples(sys.argv[1]), Path(sys.argv[1]) / "spm"))
