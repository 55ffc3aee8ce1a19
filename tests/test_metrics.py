"""Postprocessors and metrics against hand-computed values, scikit-learn and SciPy."""

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from tasks import metrics as m
from tasks import postprocessors as pp

TASK_NAMES = (
    "docnli yelp_polarity mnli qqp qnli record cxc squad drop sst2 winogrande hellaswag multirc cosmosqa "
    "race boolq cb cola copa cr mrpc rte stsb wic wsc"
).split()
FREE_TEXT_OR_GROUPED = ("record", "squad", "drop", "wsc", "multirc")


def _random_labels(seed, n, num_classes, invalid_share=0.0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, num_classes, n)
    predictions = np.where(rng.random(n) < invalid_share, -1, rng.integers(0, num_classes, n))
    return targets.tolist(), predictions.tolist()


# ---------------------------------------------------------------------------------------------
# Postprocessors.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("convert", [str, str.encode, np.bytes_], ids=["str", "bytes", "np.bytes_"])
def test_postprocessors_accept_str_and_bytes(convert):
    labels = ("entailment", "not_entailment")
    assert pp.class_id(convert("not_entailment"), label_names=labels) == 1
    assert pp.class_id(convert(" entailment\n"), label_names=labels) == -1  # exact strings only, as T5
    assert pp.class_id(convert("Entailment"), label_names=labels) == -1
    assert pp.number(convert("3.4")) == 3.4
    example = {
        "answers": np.array([b"Denver Broncos", b"the Broncos"]),
        "group": np.int64(7),
        "label": np.int64(1),
        "targets_pretokenized": convert("The tall man"),
    }
    assert pp.qa(convert("x"), example, is_target=True) == ["Denver Broncos", "the Broncos"]
    assert pp.qa(convert("Broncos"), example) == "Broncos"
    assert pp.record(convert("y"), example, is_target=True) == {"group": 7, "value": ["Denver Broncos", "the Broncos"]}
    assert pp.record(convert("Broncos"), example) == {"group": 7, "value": "Broncos"}
    assert pp.multirc(convert("True"), example, is_target=True) == {"group": 7, "value": 1}
    assert pp.multirc(convert("maybe"), example) == {"group": 7, "value": -1}
    assert pp.wsc_simple(convert("tall man"), example) == 1
    assert pp.wsc_simple(convert("ignored"), example, is_target=True) == 1


@pytest.mark.parametrize("text", ["", "three", "nan", "inf", "3.4.5"])
def test_number_invalid_strings_become_minus_one(text):
    assert pp.number(text) == -1.0


def test_postprocessors_that_need_the_example_say_so():
    with pytest.raises(ValueError, match="'group'"):
        pp.record("x", {"answers": [b"x"]})
    with pytest.raises(ValueError, match="'answers'"):
        pp.qa("x", None, is_target=True)


@pytest.mark.parametrize(
    "prediction, referent, expected",
    [
        ("the man", "The man", 1),  # case and determiners ignored
        ("his  dog", "that dog", 1),  # only determiners differ
        ("fuzzy bunny", "bunny", 1),  # prediction words contain the referent's
        ("bunny", "the fuzzy bunny", 1),  # and the other way round
        ("Bob", "Bob's hat", 0),  # possessive on one side only
        ("Bob's hat", "Bob's hat", 1),
        ("dog", "cat", 0),
        ("big dog", "small dog", 0),  # neither word set contains the other
        ("the", "the cat", -1),  # nothing left after cleaning: -1, wrong whatever the label (as T5)
        ("", "cat", -1),
        ("the\tcat", "cat", 0),  # words are split on " " only, as T5 does
    ],
)
def test_wsc_simple_rules(prediction, referent, expected):
    assert pp.wsc_simple(prediction, {"targets_pretokenized": referent.encode()}) == expected


# ---------------------------------------------------------------------------------------------
# Classification metrics.
# ---------------------------------------------------------------------------------------------


def test_accuracy_counts_invalid_wrong_and_ignores_hidden_targets():
    # Hand: the -1 target is dropped; of the 4 left, the invalid prediction is wrong -> 3/4.
    assert m.accuracy([1, 0, -1, 1, 0], [1, -1, 1, 1, 0]) == {"accuracy": 75.0}
    t, p = _random_labels(0, 200, 3, invalid_share=0.1)
    assert m.accuracy(t, p)["accuracy"] == pytest.approx(100 * sklearn.metrics.accuracy_score(t, p))


def test_binary_f1_counts_invalid_predictions_wrong():
    # Hand: the invalid prediction on a negative is a false positive, on a positive a false negative:
    # tp=1 (first), fp=1, fn=1 -> F1 = 2 / (2 + 1 + 1).
    assert m.f1_with_invalid([1, 0, 1, 0], [1, -1, -1, 0]) == {"f1": 50.0}
    t, p = _random_labels(1, 300, 2, invalid_share=0.2)
    flipped = [1 - ti if pi == -1 else pi for ti, pi in zip(t, p, strict=True)]
    assert m.f1_with_invalid(t, p)["f1"] == pytest.approx(100 * sklearn.metrics.f1_score(t, flipped))
    assert m.f1_with_invalid([0, 0], [0, 0]) == {"f1": 0.0}  # no positive anywhere: defined, 0


def test_macro_f1_matches_sklearn_with_invalid_predictions():
    # Hand: class 0 F1 = 2*1/(2+0+1) = 2/3 (its second example predicted invalid), class 1 = 1, class 2 = 1.
    result = m.mean_class_f1(3)([0, 0, 1, 2], [0, -1, 1, 2])
    assert result["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 + 1) / 3)
    for seed in range(3):
        t, p = _random_labels(seed, 60, 3, invalid_share=0.15)
        expected = sklearn.metrics.f1_score(t, p, labels=[0, 1, 2], average="macro", zero_division=0)
        assert m.mean_class_f1(3)(t, p)["macro_f1"] == pytest.approx(100 * expected)
    # A class absent from targets and predictions contributes an F1 of 0, as in T5 (labels=range(3)).
    assert m.mean_class_f1(3)([0, 1], [0, 1])["macro_f1"] == pytest.approx(200 / 3)


def test_matthews_corrcoef():
    assert m.matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == {"matthews_corrcoef": 100.0}
    assert m.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == {"matthews_corrcoef": -100.0}
    # Hand: tp=2, tn=1, fp=1, fn=0 -> (2*1 - 1*0) / sqrt(3 * 2 * 2 * 1).
    assert m.matthews_corrcoef([1, 1, 0, 0], [1, 1, 1, 0])["matthews_corrcoef"] == pytest.approx(100 * 2 / np.sqrt(12))
    for seed in range(3):
        t, p = _random_labels(seed, 150, 2, invalid_share=0.1)  # -1 acts as a third class, as in sklearn
        assert m.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
            100 * sklearn.metrics.matthews_corrcoef(t, p)
        )
    assert m.matthews_corrcoef([0, 1, 1], [1, 1, 1]) == {"matthews_corrcoef": 0.0}  # constant predictions


def test_correlations_match_scipy_and_handle_constants():
    rng = np.random.default_rng(0)
    t = np.round(rng.uniform(0, 5, 100) * 5) / 5  # STS-B style targets with many ties
    p = np.round((t + rng.normal(0, 1, 100)) * 5) / 5
    assert m.pearson_corrcoef(t.tolist(), p.tolist())["pearson_corrcoef"] == pytest.approx(
        100 * scipy.stats.pearsonr(t, p)[0]
    )
    assert m.spearman_corrcoef(t.tolist(), p.tolist())["spearman_corrcoef"] == pytest.approx(
        100 * scipy.stats.spearmanr(t, p)[0]
    )
    # Hand: a monotone but non-linear relation has Spearman 100 and Pearson below 100.
    assert m.spearman_corrcoef([1, 2, 3, 4], [1, 4, 9, 100])["spearman_corrcoef"] == pytest.approx(100)
    assert m.pearson_corrcoef([1, 2, 3], [2, 4, 6])["pearson_corrcoef"] == pytest.approx(100)
    assert m.pearson_corrcoef([1, 2, 3, 4], [1, 4, 9, 100])["pearson_corrcoef"] < 90
    for fn in (m.pearson_corrcoef, m.spearman_corrcoef):
        assert list(fn([1.2, 3.4, 0.2], [3.4, 3.4, 3.4]).values()) == [0.0]


@pytest.mark.parametrize(
    "fn",
    [
        m.accuracy,
        m.f1_with_invalid,
        m.mean_class_f1(3),
        m.matthews_corrcoef,
        m.pearson_corrcoef,
        m.spearman_corrcoef,
        m.squad,
        m.record,
        m.multirc_f1a,
        m.multirc_exact_match,
    ],
)
def test_empty_input_is_a_clear_error(fn):
    with pytest.raises(ValueError, match="empty|no target|nothing"):
        fn([], [])


def test_mismatched_and_all_hidden_inputs_are_errors():
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        m.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="hidden"):
        m.accuracy([-1, -1], [0, 1])


# ---------------------------------------------------------------------------------------------
# Question answering, ReCoRD, MultiRC.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat!", "cat"),
        ("an apple, a pear and the plum.", "apple pear and plum"),
        ("Theatre  anthem", "theatre anthem"),  # articles only as whole words
        ("U.S.-led", "usled"),
        ("  A\tB  ", "b"),
    ],
)
def test_squad_normalisation(text, expected):
    assert m.normalize_squad(text) == expected


def test_squad_em_f1_max_over_answers():
    targets = [["Denver Broncos", "The Broncos"], ["red dog"], ["Paris"]]
    predictions = ["the broncos.", "the big red dog", "London"]
    # Hand: EM 1, 0, 0; F1 1, 0.8 ("big red dog" vs "red dog": p=2/3, r=1), 0.
    result = m.squad(targets, predictions)
    assert result["em"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * 1.8 / 3)
    # Unlabelled examples (no gold answer) are dropped.
    assert m.squad(targets + [[]], predictions + ["x"]) == result


def test_record_scores_each_group_once():
    # Query 3 appears twice (one training copy per gold answer); only its first row counts.
    answers = ["Obama", "Barack Obama"]
    targets = [{"group": 3, "value": answers}, {"group": 3, "value": answers}, {"group": 4, "value": ["NASA"]}]
    predictions = [
        {"group": 3, "value": "Barack Obama"},
        {"group": 3, "value": "wrong"},
        {"group": 4, "value": "the NASA agency"},
    ]
    # Hand: group 3 EM 1 F1 1; group 4 EM 0, F1 of "nasa agency" vs "nasa" = 2*(1/2*1)/(1/2+1) = 2/3.
    assert m.record(targets, predictions) == pytest.approx({"em": 50.0, "f1": 100 * (1 + 2 / 3) / 2})
    with pytest.raises(ValueError, match="not aligned"):
        m.record(targets, predictions[::-1])


def test_multirc_f1a_and_grouped_exact_match():
    groups = [0, 0, 0, 1, 1, 2, 2]
    t_values = [1, 0, 1, 0, 0, 1, -1]  # the last answer option has a hidden label
    p_values = [1, 0, -1, 0, 0, 1, 0]
    targets = [{"group": g, "value": v} for g, v in zip(groups, t_values, strict=True)]
    predictions = [{"group": g, "value": v} for g, v in zip(groups, p_values, strict=True)]
    # Hand: F1a over the 6 labelled options, invalid = wrong: tp=2, fp=0, fn=1 -> 0.8.
    assert m.multirc_f1a(targets, predictions) == pytest.approx({"f1a": 80.0})
    kept = [i for i, v in enumerate(t_values) if v != -1]
    flipped = [1 - t_values[i] if p_values[i] == -1 else p_values[i] for i in kept]
    assert 100 * sklearn.metrics.f1_score([t_values[i] for i in kept], flipped) == pytest.approx(80.0)
    # Hand: question 0 has a wrong option, questions 1 and 2 are all right -> 2/3.
    assert m.multirc_exact_match(targets, predictions) == pytest.approx({"exact_match": 200 / 3})


# ---------------------------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------------------------


def test_task_eval_covers_every_task_with_the_contract_labels():
    assert sorted(m.TASK_EVAL) == sorted(TASK_NAMES)
    labels = {name: e.label_names for name, e in m.TASK_EVAL.items()}
    assert labels["rte"] == ("entailment", "not_entailment")
    assert labels["cola"] == ("unacceptable", "acceptable")
    assert labels["boolq"] == labels["wic"] == labels["multirc"] == ("False", "True")
    assert labels["copa"] == ("choice1", "choice2")
    assert labels["winogrande"] == ("1", "2")
    assert labels["hellaswag"] == labels["cosmosqa"] == ("0", "1", "2", "3")
    assert labels["race"] == ("A", "B", "C", "D")
    assert labels["docnli"] == ("not_entailment", "entailment")  # TFDS doc_nli class order
    assert labels["cb"] == ("entailment", "contradiction", "neutral")
    for name in ("record", "cxc", "squad", "drop", "stsb", "wsc"):
        assert labels[name] is None
    assert {n for n, e in m.TASK_EVAL.items() if e.always_decode} == {"squad", "drop", "record", "wsc"}


def _metric_values(evaluation, targets, predictions):
    results = {}
    for fn in evaluation.metric_fns:
        results.update(fn(targets, predictions))
    return results


@pytest.mark.parametrize("name", [n for n in TASK_NAMES if n not in FREE_TEXT_OR_GROUPED])
def test_perfect_predictions_score_100_and_invalid_ones_do_not(name):
    evaluation = m.TASK_EVAL[name]
    if evaluation.label_names:
        strings = [evaluation.label_names[i % len(evaluation.label_names)] for i in range(12)]
    else:
        strings = [f"{x:.1f}" for x in np.linspace(0, 5, 12)]
    post = evaluation.postprocess_fn
    targets = [post(s, {}, is_target=True) for s in strings]
    perfect = _metric_values(evaluation, targets, [post(s, {}) for s in strings])
    assert perfect and all(v == pytest.approx(100) for v in perfect.values()), perfect
    garbled = [post("garbage" if i % 3 == 0 else s, {}) for i, s in enumerate(strings)]
    assert all(v < 100 for v in _metric_values(evaluation, targets, garbled).values())
