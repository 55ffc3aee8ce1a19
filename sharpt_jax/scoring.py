"""Scoring: a model on the splits of a task, with the task's seqio postprocessor and metrics.

`score_split` runs a `SharPT` model over one split and applies the task's postprocessor and metric
functions (its `TaskEval`, `tasks.registry.task_eval`) the way seqio's Evaluator does: the target is
`postprocess_fn(targets_pretokenized, example=ex, is_target=True)`, the prediction
`postprocess_fn(text, example=ex, is_target=False)`. A prediction's text comes from one of two procedures
(`config.eval.scoring`, recorded in every results file so that no table mixes them):
- "decode" (the default, as T5, SPoT and the paper's baselines score): greedy decoding with the key/value
  cache (`decoding.greedy_decode`), detokenised up to EOS by the targets vocabulary; a string that is none of
  a task's labels counts as wrong.
- "rank_classification", for tasks with a closed label set (`label_names`, not `always_decode`; the span
  and free-text tasks still decode): every label string (T5 targets vocabulary, cut to the targets length,
  + EOS) is scored by its summed log-likelihood given the input and the prompt, and the best label is the
  prediction. It never produces an invalid answer, so its scores are not comparable with decoding's. The
  encoder runs once per batch; the decoder scores all B * C (example, label) pairs in one teacher-forced pass
  over the broadcast encoder output.

The jitted functions live at module level and take (graphdef, state) with the graphdef static, so every call
with a model of the same structure (the next checkpoint, the next split) and the same batch shapes reuses the
compiled code.
"""

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio
from flax import nnx
from jax.experimental import multihost_utils

from sharpt_jax import data
from sharpt_jax.decoding import greedy_decode
from sharpt_jax.models.sharpt import SharPT
from tasks import registry
from tasks.metrics import TaskEval

SCORING = ("decode", "rank_classification")  # config.eval.scoring: see the module docstring.


@dataclasses.dataclass(frozen=True)
class SplitScore:
    """What `score_split` found on one split.

    Attributes:
      metrics: {metric name: value} of the task's seqio metric functions over the whole split.
      texts: the predicted text of every example (a label string or the decoded answer), in the split's order.
      predictions: the postprocessed prediction of every example, in the split's order.
      examples: the split's examples (numpy values, strings as bytes), in order.
      skills: int [num_examples], the codebook index each example chose; None when the method has no codebook.
    """

    metrics: dict[str, float]
    texts: list[str]
    predictions: list
    examples: list
    skills: np.ndarray | None

    @property
    def num_examples(self) -> int:
        return len(self.examples)


def label_candidates(
    vocabulary: seqio.Vocabulary, label_names: Sequence[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The label strings as decoder targets, made as the task's training targets are.

    Like seqio's `append_eos_after_trim`, a label's pieces are cut to max_length - 1 before EOS, so a label
    longer than the targets length is scored as the truncated form that the model was trained on.

    Args:
      vocabulary: the vocabulary of the task's "targets" feature.
      label_names: the C label strings.
      max_length: the targets length S of the input pipeline.

    Returns:
      tokens: int32 [C, S_c], label c's tokens and EOS, zero-padded to the longest (S_c <= S).
      weights: int32 [C, S_c], 1 on label c's tokens and EOS, 0 on the padding.

    Raises:
      ValueError: two labels are the same after the cut.
    """
    encoded = [list(vocabulary.encode(name))[: max_length - 1] + [vocabulary.eos_id] for name in label_names]
    if len({tuple(ids) for ids in encoded}) < len(encoded):
        raise ValueError(f"labels {list(label_names)} are not distinct when cut to the targets length {max_length}")
    lengths = np.array([len(ids) for ids in encoded])
    tokens = np.zeros((len(encoded), lengths.max()), np.int32)
    for row, ids in zip(tokens, encoded, strict=True):
        row[: len(ids)] = ids
    weights = (np.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
    return tokens, weights


@functools.partial(jax.jit, static_argnames="graphdef")
def label_log_likelihoods(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: Mapping[str, jax.Array],
    candidates: jax.Array,
    weights: jax.Array,
) -> tuple[jax.Array, jax.Array | None]:
    """Summed log-likelihood of every candidate target given every example's input and prompt.

    Args:
      graphdef, state: `nnx.split` of a `SharPT` model.
      batch: the model features of B examples (see `SharPT`); only the encoder and instance inputs are read.
      candidates: int [C, S_c] target tokens (with EOS), zero-padded; `label_candidates` makes them.
      weights: [C, S_c], 1 on the candidates' real tokens.

    Returns:
      scores: float32 [B, C], the sum over s of
        weights[c, s] * log p(candidates[c, s] | input b, candidates[c, :s]).
      skills: int32 [B], the codebook index of each example, or None when the method has no codebook.
    """
    model = nnx.merge(graphdef, state)
    prompt, aux = model.prompts(batch)
    encoded, encoder_mask = model.t5.encode(batch["encoder_input_tokens"], batch["encoder_input_mask"], prompt)
    batch_size, num_candidates = encoded.shape[0], candidates.shape[0]
    # Row b * C + c pairs example b with candidate c.
    encoded = jnp.repeat(encoded, num_candidates, axis=0)
    encoder_mask = jnp.repeat(encoder_mask, num_candidates, axis=0)
    targets = jnp.tile(candidates, (batch_size, 1))  # [B * C, S_c]
    start = jnp.full((targets.shape[0], 1), model.t5.config.decoder_start_token_id, targets.dtype)
    decoder_inputs = jnp.concatenate([start, targets[:, :-1]], axis=1)
    # Causal masking suffices: the padding after a candidate's EOS only follows it and has weight 0.
    logits = model.t5.decode(decoder_inputs, encoded, encoder_mask)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    scores = jnp.sum(token_log_probs * jnp.tile(weights, (batch_size, 1)).astype(jnp.float32), axis=-1)
    return scores.reshape(batch_size, num_candidates), aux.get("skill")


@functools.partial(jax.jit, static_argnames=("graphdef", "max_decode_len"))
def greedy_tokens(
    graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, jax.Array], max_decode_len: int
) -> tuple[jax.Array, jax.Array | None]:
    """Greedy decoding of every example of the batch with its prompt.

    Returns:
      tokens: int32 [B, max_decode_len], each row ending at its first EOS and zero after it.
      skills: int32 [B] codebook indices, or None when the method has no codebook.
    """
    model = nnx.merge(graphdef, state)
    prompt, aux = model.prompts(batch)
    tokens = greedy_decode(
        model.t5,
        batch["encoder_input_tokens"],
        batch["encoder_input_mask"],
        prompt,
        max_decode_len=max_decode_len,
    )
    return tokens, aux.get("skill")


def task_metrics(task: str, examples: Sequence[Mapping], texts: Sequence[str]) -> dict[str, float]:
    """The task's metrics of predicted texts, postprocessed like seqio's Evaluator does.

    Args:
      task: a registered task, "sharpt_rte" (or "rte").
      examples: the task's examples (numpy values, as its dataset yields them), one per prediction.
      texts: the predicted text of every example (a label string, a decoded answer).
    """
    return _score_texts(registry.task_eval(task), examples, texts)[0]


def _score_texts(task_eval: TaskEval, examples: Sequence[Mapping], texts: Sequence[str]) -> tuple[dict, list]:
    """(metrics, postprocessed predictions) of predicted texts; see `task_metrics`."""
    postprocess = task_eval.postprocess_fn
    predictions = postprocess_texts(task_eval, examples, texts)
    # seqio's Evaluator hands the postprocessor the target as str.
    targets = [postprocess(text(ex["targets_pretokenized"]), example=ex, is_target=True) for ex in examples]
    metrics = {}
    for metric_fn in task_eval.metric_fns:
        metrics.update({key: float(value) for key, value in metric_fn(targets, predictions).items()})
    return metrics, predictions


def postprocess_texts(task_eval: TaskEval, examples: Sequence[Mapping], texts: Sequence[str]) -> list:
    """The predictions of predicted texts, as seqio's Evaluator makes them (and `sharpt_jax.serving.predict` serves)."""
    return [task_eval.postprocess_fn(t, example=ex, is_target=False) for t, ex in zip(texts, examples, strict=True)]


def text(value) -> str:
    """An example's string field (bytes, as datasets yield them) as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def score_split(
    model: SharPT,
    task: str,
    split: str,
    *,
    sequence_length: Mapping[str, int],
    batch_size: int,
    max_decode_len: int,
    mesh: jax.sharding.Mesh,
    scoring: str = "decode",
) -> SplitScore:
    """Scores `model` on one split of `task` with the task's postprocessor and metrics.

    Args:
      model: a `SharPT` of any method; its state may be sharded on `mesh`.
      task: a registered task, "sharpt_rte" (or "rte").
      split: "validation", "test", ...
      sequence_length: {"inputs": T, "targets": S, "instance_inputs": I} of the input pipeline.
      batch_size: examples per batch (any positive number: `data.eval_batches` pads each batch to the mesh).
      max_decode_len: decoder positions of greedy decoding (unused by rank-classified tasks).
      mesh: the device mesh; batches are split over its 'data' axis.
      scoring: "decode" or "rank_classification" (see the module docstring).

    Returns:
      The split's `SplitScore`. Padding rows never reach the predictions, skills or metrics.
    """
    if scoring not in SCORING:
        raise ValueError(f"scoring={scoring!r} is not one of {', '.join(SCORING)}")
    task_eval = registry.task_eval(task)
    vocabulary = registry.targets_vocabulary(task)
    rank = task_eval.ranks(scoring)
    candidates = label_candidates(vocabulary, task_eval.label_names, sequence_length["targets"]) if rank else None
    graphdef, state = nnx.split(model)

    outputs, num_real_rows, examples = [], [], []
    for batch, num_real, batch_examples in data.eval_batches(
        registry.seqio_name(task), split, sequence_length, batch_size, mesh
    ):
        if rank:
            outputs.append(label_log_likelihoods(graphdef, state, batch, *candidates))
        else:
            outputs.append(greedy_tokens(graphdef, state, batch, max_decode_len=max_decode_len))
        num_real_rows.append(num_real)
        examples.extend(batch_examples)
    if not examples:
        raise ValueError(f"{task} has no {split} examples to score")
    # One fetch after the loop: batches are dispatched asynchronously, so the device works while the input
    # pipeline prepares the next batch. Gathering makes each host's rows visible to every host.
    outputs = multihost_utils.process_allgather(outputs, tiled=True)
    values = np.concatenate([out[:n] for (out, _), n in zip(outputs, num_real_rows, strict=True)])
    skills = None
    if outputs[0][1] is not None:
        skills = np.concatenate([skill[:n] for (_, skill), n in zip(outputs, num_real_rows, strict=True)])

    if rank:
        texts = [task_eval.label_names[c] for c in np.argmax(values, axis=-1)]
    else:
        texts = [vocabulary.decode(row.tolist()) for row in values]
    metrics, predictions = _score_texts(task_eval, examples, texts)
    return SplitScore(metrics=metrics, texts=texts, predictions=predictions, examples=examples, skills=skills)


# ---------------------------------------------------------------------------------------------
# Every task of a run, and the eval mode: score every saved checkpoint once.
# ---------------------------------------------------------------------------------------------


def score_tasks(
    model: SharPT, eval_tasks: Sequence[str], split: str, config, mesh: jax.sharding.Mesh
) -> tuple[dict[str, float], dict[str, list[int]], dict[str, SplitScore]]:
    """Scores `model` on `split` of every task of a run (one task, or the tasks of its mixture).

    Returns:
      metrics: {metric: value} for one task, {"<task>/<metric>": value} for several, and "score": the mean
        over tasks of the mean of each task's metrics (what selects the best checkpoint).
      skills: {task: [K] counts of the codebook index its examples chose} (empty without a codebook).
      scored: {task: its `SplitScore`} (texts and examples for the predictions file).
    """
    metrics, skills, task_means, scored = {}, {}, [], {}
    for task in eval_tasks:
        name = task.removeprefix(registry.PREFIX)
        scored[name] = score_split(
            model,
            task,
            split,
            sequence_length=config.sequence_length.to_dict(),
            batch_size=config.eval.batch_size,
            max_decode_len=config.eval.max_decode_len,
            mesh=mesh,
            scoring=config.eval.scoring,
        )
        prefix = f"{name}/" if len(eval_tasks) > 1 else ""
        metrics.update({prefix + key: value for key, value in scored[name].metrics.items()})
        task_means.append(float(np.mean(list(scored[name].metrics.values()))))
        if scored[name].skills is not None:
            skills[name] = np.bincount(scored[name].skills, minlength=config.num_skills).tolist()
    metrics["score"] = float(np.mean(task_means))
    return metrics, skills, scored


def scoring_protocol(config, eval_tasks: Sequence[str]) -> dict[str, str]:
    """How a run's numbers were made: the scoring mode and the split protocol of its tasks (those of a mixture's
    tasks joined by "; " where they differ). Every results file records it, so that no table mixes rank
    classification with decoding or one split protocol with another."""
    split_protocols = dict.fromkeys(registry.split_protocol(t) for t in eval_tasks)
    return {"scoring": config.eval.scoring, "split_protocol": "; ".join(split_protocols)}
