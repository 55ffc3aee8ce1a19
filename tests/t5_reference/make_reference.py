"""Writes t5_outputs.json: what Google's official t5 (0.9.4) and SPoT code make of hand-written raw rows.

tests/test_t5_reference.py checks the project's formats, postprocessors and metrics against this file, so the
file is the reference and this script is how it is made. It runs the official functions themselves:
- formats: t5.data.glue_utils.get_glue_text_preprocessor (GLUE and SuperGLUE, as T5's and SPoT's tasks use
  it), t5.data.preprocessors.wsc_simple (WSC, training and evaluation variants), SPoT's `mrqa` (SQuAD,
  prompt_tuning/data/preprocessors.py) and `preprocess_text_classification` (DocNLI,
  prompt_tuning/spot/data/preprocessors.py), loaded from a prompt-tuning checkout (SPoT is not a package);
- postprocessors: t5.data.glue_utils.get_glue_postprocess_fn, t5.data.postprocessors.{qa, wsc_simple};
- metrics: t5.data.glue_utils.get_{glue,super_glue}_metric and t5.evaluation.metrics.squad.
Each raw row goes through the preprocessor alone, so a row the official code rejects (an assertion) is
recorded as {"error": ...} instead of stopping the run. NaN and infinite results are written as the strings
"nan", "inf" and "-inf" (JSON has no such numbers).

It needs t5 0.9.4 with its TensorFlow 2.11, which has no wheel for the project's Python, hence a separate
environment. Regenerate from the repository root:

    bash ../shared/t5lib/venv.sh /tmp/t5venv
    git clone -q https://github.com/google-research/prompt-tuning /tmp/prompt-tuning
    git -C /tmp/prompt-tuning checkout -q 72285ee
    TF_CPP_MIN_LOG_LEVEL=3 /tmp/t5venv/bin/python tests/t5_reference/make_reference.py /tmp/prompt-tuning
"""

import argparse
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import t5
import tensorflow as tf
import tensorflow_datasets as tfds
from t5.data import glue_utils
from t5.data import postprocessors as t5_postprocessors
from t5.data import preprocessors as t5_preprocessors
from t5.evaluation import metrics as t5_metrics

OUT = Path(__file__).with_name("t5_outputs.json")

# Text with the edge cases of the formats: non-ASCII letters and punctuation, underscores, digits, runs of
# spaces, tabs and newlines, surrounding whitespace, ASCII punctuation of every kind.
ODD = "  Beyoncé's café_au_lait (costs) $3.50, naïve—“ok”?\tYes!\n\nNo: 1,000 ó_o  "
CJK = "東京は 大きい 。 Zoë  e\u0301 ü"

GLUE = {
    "cola": [
        {"sentence": ODD, "label": 1, "idx": 0},
        {"sentence": "", "label": 0, "idx": 1},
        {"sentence": CJK, "label": -1, "idx": 2},
    ],
    "sst2": [{"sentence": ODD, "label": 0, "idx": 0}, {"sentence": " a gorgeous film ", "label": 1, "idx": 1}],
    "mrpc": [
        {"sentence1": ODD, "sentence2": CJK, "label": 1, "idx": 0},
        {"sentence1": "", "sentence2": "", "label": 0, "idx": 1},
    ],
    "qqp": [{"question1": ODD, "question2": "What is   rice?\n", "label": 0, "idx": 0}],
    "stsb": [
        {"sentence1": ODD, "sentence2": CJK, "label": score, "idx": i}
        for i, score in enumerate([3.43, 2.5, 1.7, 0.1, 4.99, 5.0, 0.0, 3.3, -1.0])
    ],
    "mnli": [{"premise": ODD, "hypothesis": CJK, "label": label, "idx": i} for i, label in enumerate([0, 1, 2, -1])],
    "qnli": [{"question": "Where is  Zoë?", "sentence": ODD, "label": 1, "idx": 0}],
    "rte": [{"sentence1": ODD, "sentence2": "\tTabbed\tsentence ", "label": 0, "idx": 0}],
}

SUPER_GLUE = {
    "boolq": [{"question": "is it  blue", "passage": ODD, "label": 1, "idx": 0}],
    "cb": [{"premise": ODD, "hypothesis": CJK, "label": label, "idx": i} for i, label in enumerate([0, 1, 2, -1])],
    "copa": [
        {"premise": ODD, "choice1": "It fell.", "choice2": " It was  new. ", "question": "cause", "label": 1, "idx": 0}
    ],
    "wic": [
        {
            "word": "bank",
            "sentence1": ODD,
            "sentence2": "The bank  closed.",
            "start1": 0,
            "start2": 4,
            "end1": 4,
            "end2": 8,
            "label": 0,
            "idx": 0,
        }
    ],
    "multirc": [
        {
            "paragraph": "<b>Sent 1: </b>Zoë ran  fast.<br><b>Sent 2: </b>She <i>won</i>.<br>\n<B>x</B>",
            "question": "Who <b>won</b>?",
            "answer": " Zoë<br>",
            "label": 1,
            "idx": {"paragraph": 3, "question": 7, "answer": 12},
        },
        {
            "paragraph": ODD,
            "question": "",
            "answer": "",
            "label": -1,
            "idx": {"paragraph": 4, "question": 8, "answer": 13},
        },
    ],
    "record": [
        {
            "passage": (
                'Tom won the cup.\n@highlight\nTom is happy\n@highlight\nFans cheered!\n@highlight\nZoë said "yes"'
            ),
            "query": "@placeholder lifted the  cup",
            "entities": ["Tom", "Zoë", "The_Cup"],
            "answers": ["Tom", "Tommy"],
            "idx": {"passage": 0, "query": 5},
        },
        {
            "passage": "A? \n@highlight\nB'\n@highlight\n\n@highlight\nC\n@highlight\n",
            "query": "@placeholder ran",
            "entities": ["A"],
            "answers": [],
            "idx": {"passage": 1, "query": 6},
        },
    ],
}

_WSC_TEXT = (
    "Mark told Pete many lies about himself, which Pete included in his book. He should have been more truthful."
)
# The two texts T5's `_wsc_inputs` hard-codes (their pronoun is not the word at span2_index), as in the data.
_WSC_GOOD_FOR_HIM = (
    "The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite loud. "
    '"Good for him," he said. '
)
_WSC_MAGIC_PEBBLE = (
    "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble in an iron "
    "safe . Some day they might want to use it , but really for now, what more could they wish for?"
)


def _wsc_row(idx, text, span1, span2, span2_index, label, span1_index=0):
    return {
        "text": text,
        "span1_index": span1_index,
        "span1_text": span1,
        "span2_index": span2_index,
        "span2_text": span2,
        "label": label,
        "idx": idx,
    }


WSC = [
    _wsc_row(0, _WSC_TEXT, "Mark", "He", 13, 1),
    _wsc_row(1, _WSC_TEXT, "Pete", "He", 13, 0, span1_index=2),
    _wsc_row(2, _WSC_GOOD_FOR_HIM, "The boy", "him", 22, 1),
    _wsc_row(3, _WSC_MAGIC_PEBBLE, "the magic pebble", "it", 30, 1, span1_index=16),
    # Runs of spaces and a non-ASCII name: the text is split on single spaces and rebuilt as it was.
    _wsc_row(4, "Zoë  called  Ann because she was late .", "Zoë", "she", 6, 1),
    # A standalone word "X" elsewhere in the text: T5 marks it as well (it marks every " X ").
    _wsc_row(5, "Agent X told Bob that he was late .", "Bob", "he", 5, 1, span1_index=3),
    # The pronoun is the last word: T5 leaves its placeholder "X" in the text.
    _wsc_row(6, "Ann called Bob and thanked him", "Bob", "him", 5, 1, span1_index=2),
    # The word at span2_index is not the pronoun: T5 fails an assertion.
    _wsc_row(7, "Ann said Bob would call her back .", "Ann", "her", 4, 1),
    # The pronoun is the first word: T5 fails an assertion.
    _wsc_row(8, "He said Ann was late .", "Ann", "He", 0, 0, span1_index=2),
]

DOCNLI = [
    {"premise": ODD, "hypothesis": "A  claim.\n", "label": 1},
    {"premise": "The\tdoc.  \n\n Next   para. ", "hypothesis": CJK, "label": 0},
    {"premise": "", "hypothesis": "", "label": -1},
]

SQUAD = [
    {
        "qid": "q1",
        "question": "Who is Beyoncé's co_star (in 2003)?",
        "context": ODD + CJK,
        "answers": ["Beyoncé", "café_au_lait.", " 1,000 ", "“ok”"],
    },
    {"qid": "q2", "question": "\tWho?\n", "context": "Tom  (b. 1603) wrote it.", "answers": ["Tom"]},
]

# Decoded strings that probe the postprocessors: exact, wrong case, surrounding whitespace, empty, invalid.
PREDICTION_VARIANTS = ["{}", "{} ", " {}", "{}\n", "{}.", "{upper}", "", " ", "garbage", "<unk>"]
NUMBERS = ["3.4", " 3.4\n", "5", "-0.2", "1e1", "1_0", "٣", "", " ", "three", "3.4.5", "nan", "inf", "-inf", "<unk>"]
WSC_PREDICTIONS = [
    ("Mark", "Mark"),
    ("mark", "Mark"),
    ("  The Mark ", "Mark"),
    ("", "Mark"),
    (" ", "Mark"),
    ("the", "Mark"),
    ("the  this", "Mark"),
    ("his  dog", "that dog"),
    ("the\tman", "The man"),
    ("the man\n", "The man"),
    ("fuzzy bunny", "bunny"),
    ("bunny", "the fuzzy bunny"),
    ("Bob", "Bob's hat"),
    ("Bob's hat", "Bob's hat"),
    ("big dog", "small dog"),
    ("ZOË", "Zoë"),
    ("the man", "the  man"),
    ("The", "the"),
]

# Postprocessed targets and predictions fed to the metrics; -1 is an invalid prediction.
CLASS_CASES = {
    "binary_invalid": ([1, 0, 1, 0, 1, 1, 0, 0], [1, -1, -1, 0, 0, 1, 1, 0]),
    "binary_perfect": ([0, 1, 1, 0], [0, 1, 1, 0]),
    "binary_constant": ([0, 1, 1, 0], [1, 1, 1, 1]),
    "binary_no_positive": ([0, 0, 0], [0, -1, 0]),
}
MULTICLASS_CASES = {
    "three_invalid": ([0, 1, 2, 2, 1, 0, 2], [0, 2, 2, -1, 1, -1, 0]),
    "three_missing_class": ([0, 1, 1, 0], [0, 1, 0, 0]),
}
# A hidden label (-1) among the targets: T5's accuracy scores it like a class.
HIDDEN_CASES = {"hidden_target": ([1, -1, 0, 1], [1, 1, 0, 0])}
FLOAT_CASES = {
    "scores": ([0.0, 1.2, 3.4, 5.0, 2.4, 2.4], [0.2, 1.0, 3.4, 4.8, -1.0, 2.6]),
    "constant_prediction": ([0.0, 1.2, 3.4], [2.0, 2.0, 2.0]),
}
SQUAD_CASES = {
    "answers": (
        [["Denver Broncos", "The Broncos"], ["red dog"], ["Paris"], ["Zoë's café"], ["“ok”"], ["a"], ["1,000"]],
        ["the broncos.", "the big red dog", "London", "zoë’s  CAFÉ!", "ok", "", "1000"],
    ),
}
GROUP_CASES = {
    "record": (
        [
            {"group": 3, "value": ["Obama", "Barack Obama"]},
            {"group": 3, "value": ["Obama", "Barack Obama"]},
            {"group": 4, "value": ["NASA"]},
            {"group": 5, "value": ["Zoë"]},
        ],
        [{"value": "Barack Obama"}, {"value": "wrong"}, {"value": "the NASA agency"}, {"value": "zoe"}],
    ),
    "multirc": (
        [{"group": g, "value": v} for g, v in zip([0, 0, 0, 1, 1, 2, 2], [1, 0, 1, 0, 0, 1, 0], strict=True)],
        [{"value": v} for v in [1, 0, -1, 0, 0, 1, 1]],
    ),
}


def _load(checkout: Path, relative: str):
    """Imports one file of the prompt-tuning checkout as a module (it is not an installed package)."""
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_"), checkout / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tensor(key, value, float_label):
    """A row value as the tensor TFDS gives: strings, int64 labels (float32 for STS-B), int32 indices."""
    if isinstance(value, dict):
        return {k: _tensor(k, v, float_label) for k, v in value.items()}
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return tf.constant(value, tf.string)
    if key == "label":
        return tf.constant(value, tf.float32 if float_label else tf.int64)
    return tf.constant(value, tf.int32)


def _plain(value):
    """NumPy outputs -> JSON values (bytes decoded as UTF-8)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else str(float(value))  # "nan", "inf", "-inf"
    if isinstance(value, (np.integer, np.bool_)):
        return int(value)
    return value


def _formats(preprocessor, rows, float_label=False):
    """[{"row", "outputs"}] with the preprocessor's outputs of each row alone, or its error."""
    cases = []
    for row in rows:
        ds = tf.data.Dataset.from_tensors({k: _tensor(k, v, float_label) for k, v in row.items()})
        try:
            outputs = [_plain(ex) for ex in preprocessor(ds).as_numpy_iterator()]
            cases.append({"row": row, "outputs": outputs})
        except tf.errors.InvalidArgumentError as error:
            # The message without TensorFlow's "{{function_node ...}}" prefix, which names graph internals.
            cases.append({"row": row, "error": re.sub(r"^\{\{.*?\}\}\s*", "", error.message.splitlines()[0])})
    return cases


def formats(prompt_tuning: Path) -> dict:
    """{format name: [{"row", "outputs" or "error"}]}: the official formats of every raw row."""
    out = {}
    glue_configs = tfds.text.glue.Glue.builder_configs
    super_glue_configs = tfds.text.super_glue.SuperGlue.builder_configs
    for name, rows in GLUE.items():
        out[name] = _formats(glue_utils.get_glue_text_preprocessor(glue_configs[name]), rows, name == "stsb")
    for name, rows in SUPER_GLUE.items():
        out[name] = _formats(glue_utils.get_glue_text_preprocessor(super_glue_configs[name]), rows)
    out["wsc"] = _formats(lambda ds: t5_preprocessors.wsc_simple(ds, correct_referent_only=True), WSC)
    out["wsc_eval"] = _formats(lambda ds: t5_preprocessors.wsc_simple(ds, correct_referent_only=False), WSC)

    spot = _load(prompt_tuning, "prompt_tuning/spot/data/preprocessors.py")
    pt = _load(prompt_tuning, "prompt_tuning/data/preprocessors.py")
    # As SPoT registers them (prompt_tuning/spot/data/nli.py and mrqa.py).
    out["docnli"] = _formats(
        lambda ds: spot.preprocess_text_classification(
            ds,
            text_a_key="hypothesis",
            text_b_key="premise",
            task_name="doc_nli",
            label_names=["not_entailment", "entailment"],
        ),
        DOCNLI,
    )
    out["squad"] = _formats(lambda ds: pt.mrqa(ds, task_name="squad"), SQUAD)
    return out


def postprocessors() -> dict:
    """The official postprocessors' values of decoded strings (and of targets, where the example matters)."""
    configs = {**tfds.text.glue.Glue.builder_configs, **tfds.text.super_glue.SuperGlue.builder_configs}
    class_tasks = ["cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "boolq", "cb", "copa", "wic"]
    out = {"class_id": {}}
    for name in class_tasks:
        fn = glue_utils.get_glue_postprocess_fn(configs[name])
        texts = [
            v.format(label, upper=label.upper()) for label in configs[name].label_classes for v in PREDICTION_VARIANTS
        ]
        out["class_id"][name] = {
            "label_names": list(configs[name].label_classes),
            "cases": [[t, _plain(fn(t))] for t in dict.fromkeys(texts)],
        }
    number = glue_utils.get_glue_postprocess_fn(configs["stsb"])
    out["number"] = [[t, _plain(number(t))] for t in NUMBERS]
    multirc = glue_utils.get_glue_postprocess_fn(configs["multirc"])
    example = {
        "idx/question": np.int32(7),
        "idx/passage": np.int32(3),
        "idx/query": np.int32(5),
        "answers": np.array([b"Tom", "Zoë".encode()]),
    }
    texts = list(
        dict.fromkeys(v.format(label, upper=label.upper()) for label in ("False", "True") for v in PREDICTION_VARIANTS)
    )
    out["multirc"] = {
        "example_group": 7,
        "target": _plain(multirc("True", example=example, is_target=True)),
        "cases": [[t, _plain(multirc(t, example=example))] for t in texts],
    }
    record = glue_utils.get_glue_postprocess_fn(configs["record"])
    out["record"] = {
        "example_answers": ["Tom", "Zoë"],
        "target": _plain(record("Tom", example=example, is_target=True)),
        "cases": [[t, _plain(record(t, example=example))] for t in [" Zoë ", ""]],
    }
    out["qa"] = {
        "example_answers": ["Tom", "Zoë"],
        "target": _plain(t5_postprocessors.qa("Tom", example=example, is_target=True)),
        "cases": [[t, _plain(t5_postprocessors.qa(t, example=example))] for t in [" Zoë ", ""]],
    }
    wsc = []
    for prediction, referent in WSC_PREDICTIONS:
        ex = {"targets_pretokenized": referent.encode(), "label": np.int64(1)}
        wsc.append([prediction, referent, _plain(t5_postprocessors.wsc_simple(prediction, example=ex))])
    out["wsc_simple"] = {
        "target_of_label_1": _plain(t5_postprocessors.wsc_simple("x", ex, is_target=True)),
        "cases": wsc,
    }
    return out


def _metric(fns, targets, predictions) -> dict:
    """The merged results of metric functions `fns`."""
    result = {}
    for fn in fns:
        # Copies: f1_score_with_invalid writes into its arguments.
        result.update(_plain(fn(list(targets), list(predictions))))
    return result


def metrics() -> dict:
    """{table: {case: {"targets", "predictions", "result"}}}: the official metrics of postprocessed values."""
    glue, super_glue = glue_utils.get_glue_metric, glue_utils.get_super_glue_metric
    tables = {
        "binary_f1_accuracy": (glue("mrpc"), CLASS_CASES),
        "accuracy": (glue("rte"), {**CLASS_CASES, **MULTICLASS_CASES, **HIDDEN_CASES}),
        "matthews_corrcoef": (glue("cola"), {**CLASS_CASES, **MULTICLASS_CASES}),
        "cb": (super_glue("cb"), MULTICLASS_CASES),
        "correlation": (glue("stsb"), FLOAT_CASES),
        "squad": ([t5_metrics.squad], SQUAD_CASES),
        "record": (super_glue("record"), {"record": GROUP_CASES["record"]}),
        "multirc": (super_glue("multirc"), {"multirc": GROUP_CASES["multirc"]}),
    }
    out = {}
    for table, (fns, cases) in tables.items():
        out[table] = {
            case: {"targets": t, "predictions": p, "result": _metric(fns, t, p)} for case, (t, p) in cases.items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt_tuning", type=Path, help="a checkout of google-research/prompt-tuning (72285ee)")
    args = parser.parse_args()
    reference = {
        "versions": {"t5": t5.__version__, "tensorflow": tf.__version__, "python": sys.version.split()[0]},
        "formats": formats(args.prompt_tuning),
        "postprocessors": postprocessors(),
        "metrics": metrics(),
    }
    OUT.write_text(json.dumps(reference, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
