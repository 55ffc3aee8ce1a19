"""Metrics of the 25 tasks and `TASK_EVAL`, the table the task registry wires into every seqio Task.

Every metric has seqio's signature `fn(targets: list, predictions: list) -> dict[str, float]`, takes the
postprocessed values of `tasks/postprocessors.py` and reports percentages (x100) like T5
(t5/evaluation/metrics.py, qa_utils.py). Plain Python/NumPy: importing this module loads no TensorFlow.

Conventions shared by all metrics:
- a target equal to -1 (a hidden label) is dropped with its prediction before scoring;
- an invalid prediction (-1) is wrong: it never equals a target, and the binary F1 counts it as the opposite
  of the target (T5's f1_score_with_invalid);
- empty or mismatched inputs raise ValueError; degenerate but valid inputs give defined values (a constant
  side makes Pearson, Spearman and Matthews correlation 0, as scikit-learn does for MCC).
"""

import collections
import dataclasses
import functools
import re
import string
from collections.abc import Callable, Sequence

import numpy as np

from tasks import postprocessors as pp

Metrics = dict[str, float]


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not len(targets):
        raise ValueError("no targets and predictions to score (empty lists)")


def _checked(targets: Sequence, predictions: Sequence) -> tuple[list, list]:
    """Returns the pairs whose target is not -1, as two lists; raises on empty or mismatched input."""
    _check_lengths(targets, predictions)
    kept = [(t, p) for t, p in zip(targets, predictions, strict=True) if not _is_hidden(t)]
    if not kept:
        raise ValueError(f"all {len(targets)} targets are hidden labels (-1); nothing to score")
    return [t for t, _ in kept], [p for _, p in kept]


def _is_hidden(target) -> bool:
    if isinstance(target, dict):
        target = target["value"]
    return isinstance(target, (int, float, np.integer, np.floating)) and target == pp.INVALID


def _arrays(targets: Sequence, predictions: Sequence) -> tuple[np.ndarray, np.ndarray]:
    targets, predictions = _checked(targets, predictions)
    return np.asarray(targets), np.asarray(predictions)


# ---------------------------------------------------------------------------------------------
# Classification and regression.
# ---------------------------------------------------------------------------------------------


def accuracy(targets: Sequence[int], predictions: Sequence[int]) -> Metrics:
    t, p = _arrays(targets, predictions)
    return {"accuracy": 100 * float(np.mean(t == p))}


def _f1_per_class(t: np.ndarray, p: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """F1 of each class in `classes` ([num_classes]); 0 for a class never predicted nor true."""
    is_t = t[:, None] == classes[None, :]
    is_p = p[:, None] == classes[None, :]
    tp = np.sum(is_t & is_p, axis=0)
    wrong = np.sum(is_t ^ is_p, axis=0)  # false positives + false negatives
    denom = 2 * tp + wrong
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def f1_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> Metrics:
    """F1 of class 1 (binary tasks: qqp, mrpc); a prediction other than 0 or 1 counts as wrong."""
    t, p = _arrays(targets, predictions)
    p = np.where((p == 0) | (p == 1), p, 1 - t)
    return {"f1": 100 * float(_f1_per_class(t, p, np.array([1]))[0])}


def mean_class_f1(num_classes: int) -> Callable[[Sequence[int], Sequence[int]], Metrics]:
    """Returns the macro-F1 over classes 0..num_classes-1 (CB); an invalid prediction is a false negative."""

    def macro_f1(targets: Sequence[int], predictions: Sequence[int]) -> Metrics:
        t, p = _arrays(targets, predictions)
        return {"macro_f1": 100 * float(np.mean(_f1_per_class(t, p, np.arange(num_classes))))}

    return macro_f1


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> Metrics:
    """Matthews correlation (CoLA), multi-class form, so an invalid prediction (-1) is a class of its own."""
    t, p = _arrays(targets, predictions)
    classes, index = np.unique(np.concatenate([t, p]), return_inverse=True)
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, (index[: len(t)], index[len(t) :]), 1)
    n = float(len(t))
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    cov = np.trace(confusion) * n - true_counts @ pred_counts
    var_t, var_p = n * n - true_counts @ true_counts, n * n - pred_counts @ pred_counts
    return {"matthews_corrcoef": 100 * float(cov / np.sqrt(var_t * var_p)) if var_t * var_p > 0 else 0.0}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    # Tested on equality, not on the centred norms: a constant float side leaves rounding noise there.
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    return float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y)))


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x ([n]), ties sharing the mean of their ranks (as Spearman's rho needs)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> Metrics:
    t, p = _arrays(targets, predictions)
    return {"pearson_corrcoef": 100 * _pearson(t.astype(np.float64), p.astype(np.float64))}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> Metrics:
    t, p = _arrays(targets, predictions)
    return {"spearman_corrcoef": 100 * _pearson(_ranks(t), _ranks(p))}


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> Metrics:
    """Percent of predictions equal to their target string (file-backed tasks without labels)."""
    _check_lengths(targets, predictions)
    return {"exact_match": 100 * float(np.mean([t == p for t, p in zip(targets, predictions, strict=True)]))}


def token_f1(targets: Sequence[str], predictions: Sequence[str]) -> Metrics:
    """Mean token F1 of each prediction against its target, both normalised as SQuAD's script does."""
    _check_lengths(targets, predictions)
    scores = [_token_f1(normalize_squad(t), normalize_squad(p)) for t, p in zip(targets, predictions, strict=True)]
    return {"token_f1": 100 * float(np.mean(scores))}


# ---------------------------------------------------------------------------------------------
# Question answering (SQuAD-style normalisation, as the official SQuAD v1.1 script).
# ---------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_squad(text: str) -> str:
    """Lower-cases, removes ASCII punctuation and the articles a/an/the, and collapses whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def _token_f1(gold: str, prediction: str) -> float:
    gold_tokens, pred_tokens = gold.split(), prediction.split()
    common = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> Metrics:
    """Exact match and token F1 of each prediction, each the max over its gold answers (squad, drop).

    A target without any gold answer (an unlabelled example) is dropped like a -1 label.
    """
    _check_lengths(targets, predictions)
    pairs = [(answers, pred) for answers, pred in zip(targets, predictions, strict=True) if len(answers)]
    if not pairs:
        raise ValueError("no target with a gold answer to score")
    em, f1 = [], []
    for answers, pred in pairs:
        gold = [normalize_squad(pp.as_text(a)) for a in answers]
        pred = normalize_squad(pp.as_text(pred))
        em.append(max(float(g == pred) for g in gold))
        f1.append(max(_token_f1(g, pred) for g in gold))
    return {"em": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


def _grouped(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[int, tuple[list, list]]:
    """{group: (target values, prediction values)} in first-seen order; checks predictions are aligned."""
    _check_lengths(targets, predictions)
    groups = collections.defaultdict(lambda: ([], []))
    for target, pred in zip(targets, predictions, strict=True):
        if pred.get("group", target["group"]) != target["group"]:
            raise ValueError(
                f"a prediction of group {pred['group']} is paired with a target of group "
                f"{target['group']}: targets and predictions are not aligned"
            )
        groups[target["group"]][0].append(target["value"])
        groups[target["group"]][1].append(pred["value"])
    return groups


def record(targets: Sequence[dict], predictions: Sequence[dict]) -> Metrics:
    """ReCoRD: SQuAD EM/F1 (max over gold answers) on the first example of each group (query)."""
    groups = _grouped(targets, predictions)
    return squad([t[0] for t, _ in groups.values()], [p[0] for _, p in groups.values()])


def multirc_f1a(targets: Sequence[dict], predictions: Sequence[dict]) -> Metrics:
    """MultiRC F1a: binary F1 over every answer option (invalid predictions wrong)."""
    f1 = f1_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])["f1"]
    return {"f1a": f1}


def multirc_exact_match(targets: Sequence[dict], predictions: Sequence[dict]) -> Metrics:
    """MultiRC EM: the share of questions whose every labelled answer option is predicted right."""
    targets, predictions = _checked(targets, predictions)
    matches = [t == p for t, p in _grouped(targets, predictions).values()]
    return {"exact_match": 100 * float(np.mean(matches))}


# ---------------------------------------------------------------------------------------------
# The table of every task.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskEval:
    """How one task is scored.

    Attributes:
      postprocess_fn: seqio postprocessor `fn(output_or_target, example=None, is_target=False)`.
      metric_fns: seqio metric functions `fn(targets, predictions) -> {name: value}`.
      label_names: the label strings in class-id order for a closed label set (rank classification scores
        each of them), else None.
      always_decode: True where the answer is free text, so rank classification cannot apply.
    """

    postprocess_fn: Callable
    metric_fns: tuple[Callable, ...]
    label_names: tuple[str, ...] | None = None
    always_decode: bool = False

    def ranks(self, scoring: str) -> bool:
        """Whether `scoring` ("decode" or "rank_classification") ranks this task's labels: only a closed label
        set can be ranked; span and free-text answers are decoded whatever the scoring."""
        return scoring == "rank_classification" and self.label_names is not None and not self.always_decode


def _classification(*label_names: str, metric_fns: tuple[Callable, ...] = (accuracy,)) -> TaskEval:
    return TaskEval(functools.partial(pp.class_id, label_names=label_names), metric_fns, label_names)


_NLI2 = ("entailment", "not_entailment")
_SENTIMENT = ("negative", "positive")
_BOOL = ("False", "True")
_CORRELATION = TaskEval(pp.number, (pearson_corrcoef, spearman_corrcoef))
_SQUAD = TaskEval(pp.qa, (squad,), always_decode=True)

TASK_EVAL: dict[str, TaskEval] = {
    # Sources.
    "docnli": _classification("not_entailment", "entailment"),
    "yelp_polarity": _classification(*_SENTIMENT),
    "mnli": _classification("entailment", "neutral", "contradiction"),
    "qqp": _classification("not_duplicate", "duplicate", metric_fns=(f1_with_invalid, accuracy)),
    "qnli": _classification(*_NLI2),
    "record": TaskEval(pp.record, (record,), always_decode=True),
    "cxc": _CORRELATION,
    "squad": _SQUAD,
    "drop": _SQUAD,
    "sst2": _classification(*_SENTIMENT),
    "winogrande": _classification("1", "2"),
    "hellaswag": _classification("0", "1", "2", "3"),
    "multirc": TaskEval(pp.multirc, (multirc_f1a, multirc_exact_match), _BOOL),
    "cosmosqa": _classification("0", "1", "2", "3"),
    "race": _classification("A", "B", "C", "D"),
    # Targets.
    "boolq": _classification(*_BOOL),
    "cb": _classification("entailment", "contradiction", "neutral", metric_fns=(mean_class_f1(3), accuracy)),
    "cola": _classification("unacceptable", "acceptable", metric_fns=(matthews_corrcoef,)),
    "copa": _classification("choice1", "choice2"),
    "cr": _classification(*_SENTIMENT),
    "mrpc": _classification("not_equivalent", "equivalent", metric_fns=(f1_with_invalid, accuracy)),
    "rte": _classification(*_NLI2),
    "stsb": _CORRELATION,
    "wic": _classification(*_BOOL),
    "wsc": TaskEval(pp.wsc_simple, (accuracy,), always_decode=True),
}
