"""SharPT modules and structural freezing, checked against NumPy and against the paper's equations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sharpt_jax import optim, train
from sharpt_jax.models import sharpt
from sharpt_jax.models.encoder import BertConfig, InstanceEncoder
from sharpt_jax.models.t5 import T5, T5Config

T5_TINY = T5Config(
    vocab_size=48,
    d_model=16,
    d_kv=4,
    d_ff=32,
    num_layers=1,
    num_decoder_layers=1,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)
BERT_TINY = BertConfig(
    vocab_size=40,
    hidden_size=12,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=24,
    hidden_act="gelu",
    max_position_embeddings=32,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    pad_token_id=0,
)
PROMPT_LENGTH, NUM_SKILLS = 3, 5
# Eager NNX dispatches op by op; jitting the forward keeps these tests fast.
forward = nnx.jit(lambda model, batch: model(batch))


def make_model(method, seed=0, beta=0.5):
    rngs = nnx.Rngs(seed)
    return sharpt.SharPT(
        T5(T5_TINY, rngs=rngs),
        InstanceEncoder(BERT_TINY, "mean", rngs=rngs),
        method=method,
        prompt_length=PROMPT_LENGTH,
        num_skills=NUM_SKILLS,
        beta=beta,
        rngs=rngs,
    )


def make_batch(seed=0, batch=6, inputs=7, targets=4, instance=9):
    rng = np.random.default_rng(seed)

    def tokens(vocab, length):
        ids = rng.integers(3, vocab, size=(batch, length))
        lengths = rng.integers(2, length + 1, size=batch)
        mask = np.arange(length)[None, :] < lengths[:, None]
        return np.where(mask, ids, 0).astype(np.int32), mask.astype(np.int32)

    enc, enc_mask = tokens(T5_TINY.vocab_size, inputs)
    tgt, tgt_mask = tokens(T5_TINY.vocab_size, targets)
    inst, inst_mask = tokens(BERT_TINY.vocab_size, instance)
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": enc,
        "encoder_input_mask": enc_mask,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": tgt_mask,
        "instance_input_tokens": inst,
        "instance_input_mask": inst_mask,
    }


# ---------------------------------------------------------------------------------------------
# Codebook and generator against NumPy.
# ---------------------------------------------------------------------------------------------


def test_codebook_lookup_matches_brute_force_nearest_neighbour():
    rng = np.random.default_rng(0)
    codebook = sharpt.Codebook(64, 12, rngs=nnx.Rngs(0))
    table = rng.normal(size=(64, 12)).astype(np.float32)
    codebook.embeddings[...] = jnp.asarray(table)
    e0 = rng.normal(size=(200, 12)).astype(np.float32) * 3.0
    e1, k = codebook(jnp.asarray(e0))
    brute = np.argmin(np.linalg.norm(e0[:, None, :] - table[None, :, :], axis=-1), axis=-1)
    np.testing.assert_array_equal(np.asarray(k), brute)
    np.testing.assert_array_equal(np.asarray(e1), table[brute])


def test_codebook_ties_go_to_the_lowest_index_like_numpy():
    codebook = sharpt.Codebook(4, 2, rngs=nnx.Rngs(0))
    # Rows 1 and 3 are duplicates; (1,0) and (0,1) are equidistant from the origin and from (1,1).
    table = np.array([[3.0, 3.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    codebook.embeddings[...] = jnp.asarray(table)
    e0 = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], np.float32)
    _, k = codebook(jnp.asarray(e0))
    brute = np.argmin(np.linalg.norm(e0[:, None, :] - table[None, :, :], axis=-1), axis=-1)
    np.testing.assert_array_equal(np.asarray(k), brute)
    np.testing.assert_array_equal(np.asarray(k), [1, 1, 1, 2, 0])


def test_prompt_generator_is_equation_1():
    gen = sharpt.PromptGenerator(5, 8, 3, rngs=nnx.Rngs(1))
    e = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    w1, b1 = np.asarray(gen.w1.kernel[...]), np.asarray(gen.w1.bias[...])
    w2, b2 = np.asarray(gen.w2.kernel[...]), np.asarray(gen.w2.bias[...])
    z = np.asarray(gen.positions[...])
    e_prime = np.tanh(e @ w1 + b1)  # [B, d]
    expected = (z[None, :, :] + e_prime[:, None, :]) @ w2 + b2  # p_l = W2 (z_l + e') + b2
    np.testing.assert_allclose(np.asarray(gen(jnp.asarray(e))), expected, rtol=1e-5, atol=1e-5)


def test_codebook_loss_is_beta_times_mean_l2_distance():
    model = make_model("sharpt", beta=0.5)
    batch = make_batch()
    out = forward(model, batch)
    e0 = np.asarray(model.instance_encoder(batch["instance_input_tokens"], batch["instance_input_mask"]))
    table = np.asarray(model.codebook.embeddings[...])
    chosen = table[np.asarray(out["skill"])]
    expected = 0.5 * np.mean(np.linalg.norm(e0 - chosen, axis=-1))
    np.testing.assert_allclose(float(out["codebook_loss"]), expected, rtol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(out["skill_counts"]), np.bincount(np.asarray(out["skill"]), minlength=NUM_SKILLS)
    )


def test_prompt_reaches_the_backbone_as_prepended_embeddings():
    model = make_model("sharpt")
    batch = make_batch()
    prompt, _ = model.prompts(batch)
    expected = model.t5(
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        attention_mask=batch["encoder_input_mask"],
        prompt_embeds=prompt,
    )
    np.testing.assert_allclose(np.asarray(forward(model, batch)["logits"]), np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert prompt.shape == (6, PROMPT_LENGTH, T5_TINY.d_model)


# ---------------------------------------------------------------------------------------------
# Gradients and freezing.
# ---------------------------------------------------------------------------------------------


def _codebook_grad(model, batch, loss_key):
    graphdef, trainable, frozen = optim.split_model(model, "sharpt", "source")

    def loss(trainable):
        return nnx.merge(graphdef, trainable, frozen)(batch)[loss_key]

    return np.asarray(jax.jit(jax.grad(loss))(trainable)["codebook"]["embeddings"][...])


def test_codebook_gets_gradient_from_both_losses_in_the_source_stage_only_on_chosen_rows():
    model = make_model("sharpt")
    batch = make_batch()
    chosen = set(np.asarray(forward(model, batch)["skill"]).tolist())
    for loss_key in ("lm_loss", "codebook_loss"):
        grad = _codebook_grad(model, batch, loss_key)
        row_norms = np.linalg.norm(grad, axis=-1)
        assert all(row_norms[i] > 0 for i in chosen), loss_key
        assert all(row_norms[i] == 0 for i in range(NUM_SKILLS) if i not in chosen), loss_key


def test_target_stage_has_no_codebook_among_trainable_parameters():
    _, trainable, frozen = optim.split_model(make_model("sharpt"), "sharpt", "target")
    assert "codebook" not in trainable and "codebook" in frozen
    assert set(trainable.keys()) == {"generator"}


@pytest.mark.parametrize("method,stage", [("sharpt", "source"), ("prompt_tuning", "target")])
def test_micro_batches_give_the_full_batch_update(method, stage):
    """8 rows with different numbers of target tokens, as 1, 2 and 4 micro-batches (no dropout): the same loss,
    metrics and updated parameters; the LM loss is weighted by each micro-batch's share of target tokens."""
    model = sharpt.SharPT(
        T5(dataclasses.replace(T5_TINY, dropout_rate=0.0), rngs=nnx.Rngs(0)),
        InstanceEncoder(BERT_TINY, "mean", rngs=nnx.Rngs(1)),
        method=method,
        prompt_length=PROMPT_LENGTH,
        num_skills=NUM_SKILLS,
        beta=0.5,
        rngs=nnx.Rngs(2),
    )
    graphdef, trainable, frozen = optim.split_model(model, method, stage)
    tx = optim.make_optimizer("adam", 1e-2, warmup_steps=0)
    batch = make_batch(batch=8)
    assert len(set(batch["decoder_loss_weights"].sum(1).tolist())) > 1  # The premise: uneven token counts.
    results = []
    for micro_batches in (1, 2, 4):
        step = jax.jit(train.make_train_step(graphdef, tx, optim.learning_rate_schedule(1e-2, 0), 0, 0, micro_batches))
        state, metrics = step(train.init_train_state(trainable, tx), frozen, batch, jax.random.key(0, impl="rbg"))
        results.append((state["trainable"], metrics))
    (ref_state, ref_metrics), *others = results
    for state, metrics in others:
        for name in ("loss", "lm_loss", "codebook_loss", "grad_norm"):
            np.testing.assert_allclose(float(metrics[name]), float(ref_metrics[name]), rtol=2e-5, err_msg=name)
        if "skill_counts" in ref_metrics:
            np.testing.assert_array_equal(metrics["skill_counts"], ref_metrics["skill_counts"])
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adafactor", "adafactor_t5"])
def test_adafactor_first_step_matches_t5x_by_hand(name):
    """One step on a [128, 256] matrix (factored: both dims reach 128), written out from T5X's Adafactor: the
    first step's second moments are the row and column means of g^2 + 1e-30, y = g / sqrt(v_row / mean(v_row)
    * v_col), clipped to RMS 1; the step is lr * y, times the parameter's RMS for T5's fine-tuning, and prompt
    tuning's weight decay takes 1e-5 of the parameter (not scaled by the learning rate)."""
    rng = np.random.default_rng(0)
    param, grad = 3.0 * rng.normal(size=(128, 256)), rng.normal(size=(128, 256))
    tx = optim.make_optimizer(name, 0.3, warmup_steps=0)
    updates, _ = tx.update(
        jnp.asarray(grad, jnp.float32), tx.init(jnp.asarray(param, jnp.float32)), jnp.asarray(param, jnp.float32)
    )
    g2 = grad**2 + 1e-30
    v_row, v_col = g2.mean(axis=1), g2.mean(axis=0)
    y = grad / np.sqrt((v_row / v_row.mean())[:, None] * v_col[None, :])
    y /= max(1.0, np.sqrt(np.mean(y**2)))
    if name == "adafactor":
        expected = -0.3 * y - 1e-5 * param
    else:
        expected = -0.3 * np.sqrt(np.mean(param**2)) * y
    np.testing.assert_allclose(np.asarray(updates), expected, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_stacked_layers_get_the_updates_of_separate_layers(name):
    """Two steps on parameters whose layers are stacked [3, ...] (as a T5 stack holds them) equal the steps on
    the three layers as parameters of their own, with layers of different scales: Adafactor's factored moments,
    update clipping and parameter scale are per layer, as in T5X (unmarked, the same stacked arrays would pool
    the layers); Adam is elementwise."""
    rng = np.random.default_rng(0)
    layer_scales = np.array([1.0, 4.0, 0.25])
    stacked_axes = {"kernel": ("layers", "embed", "mlp"), "scale": ("layers", "embed")}  # [128, 256] is factored.
    shapes = {"kernel": (3, 128, 256), "scale": (3, 128), "embedding": (130, 128)}
    axes = {**stacked_axes, "embedding": ("vocab", "embed")}

    def draw():
        arrays = {k: rng.normal(size=shape).astype(np.float32) for k, shape in shapes.items()}
        for k in stacked_axes:
            arrays[k] *= layer_scales.reshape(-1, *[1] * (arrays[k].ndim - 1))
        return arrays

    def as_params(arrays):  # What the trainer holds: nnx Variables naming their logical axes.
        return {k: nnx.Param(jnp.asarray(v), out_sharding=axes[k], eager_sharding=False) for k, v in arrays.items()}

    def as_layers(arrays):
        separate = {f"{k}_{i}": jnp.asarray(arrays[k][i]) for k in stacked_axes for i in range(3)}
        return {**separate, "embedding": jnp.asarray(arrays["embedding"])}

    def steps(params, grads):
        tx = optim.make_optimizer(name, 0.3, warmup_steps=0)
        state, updates = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
            updates.append(jax.tree.map(np.asarray, u))
        return updates

    params, grads = draw(), [draw(), draw()]
    stacked = steps(as_params(params), [as_params(g) for g in grads])
    separate = steps(as_layers(params), [as_layers(g) for g in grads])
    pooled = steps(jax.tree.map(jnp.asarray, params), [jax.tree.map(jnp.asarray, g) for g in grads])
    for ours, theirs, unmarked in zip(stacked, separate, pooled, strict=True):
        np.testing.assert_allclose(ours["embedding"][...], theirs["embedding"], rtol=1e-5, atol=1e-7)
        for k in stacked_axes:
            for i in range(3):
                np.testing.assert_allclose(ours[k][...][i], theirs[f"{k}_{i}"], rtol=1e-5, atol=1e-7, err_msg=k)
        # The premise: with its statistics pooled over the layers, Adafactor's update of the matrix differs.
        assert np.allclose(unmarked["kernel"], ours["kernel"][...], rtol=1e-5, atol=1e-7) == (name == "adam")


@pytest.mark.parametrize("stage", ["source", "target"])
def test_loss_is_eq5_while_the_codebook_trains_and_the_lm_loss_once_frozen(stage):
    """Source stage: loss = LM loss + codebook term (Eq. 5). Target stage: the codebook is frozen, so the
    objective and the logged loss are the LM loss (Eq. 3), while the codebook distance is still reported."""
    graphdef, trainable, frozen = optim.split_model(make_model("sharpt", beta=0.5), "sharpt", stage)
    tx = optim.make_optimizer("adam", 1e-2, warmup_steps=0)
    step = jax.jit(train.make_train_step(graphdef, tx, optim.learning_rate_schedule(1e-2, 0)))
    _, metrics = step(train.init_train_state(trainable, tx), frozen, make_batch(), jax.random.key(0, impl="rbg"))
    assert float(metrics["codebook_loss"]) > 0
    expected = metrics["lm_loss"] + metrics["codebook_loss"] if stage == "source" else metrics["lm_loss"]
    assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize(
    "method,stage,trained",
    [
        ("sharpt", "source", {"codebook", "generator"}),
        ("sharpt", "target", {"generator"}),
        ("no_latent", "target", {"generator"}),
        ("prompt_tuning", "target", {"prompt"}),
        ("model_tuning", "target", {"t5"}),
    ],
)
def test_train_steps_move_every_trainable_leaf_and_no_frozen_leaf(method, stage, trained):
    model = make_model(method)
    graphdef, trainable, frozen = optim.split_model(model, method, stage)
    assert set(trainable.keys()) == trained
    frozen_before = jax.tree_util.tree_map(np.array, frozen)
    trainable_before = jax.tree_util.tree_map(np.array, trainable)
    tx = optim.make_optimizer("adam", 1e-2, warmup_steps=2)
    step = jax.jit(train.make_train_step(graphdef, tx, optim.learning_rate_schedule(1e-2, 2)), donate_argnums=(0,))
    state = train.init_train_state(trainable, tx)
    losses = []
    for i in range(4):
        state, metrics = step(state, frozen, make_batch(seed=i % 2), jax.random.key(0, impl="rbg"))
        losses.append(float(metrics["loss"]))
    assert int(state["step"]) == 4 and all(np.isfinite(losses))
    # Optimizer state exists only for trainable leaves: its parameter-shaped leaves count as the trainable ones.
    opt_sizes = sum(x.size for x in jax.tree_util.tree_leaves(state["opt"]) if x.ndim > 0)
    assert opt_sizes == 2 * optim.count_params(trainable)
    for before, after in zip(jax.tree_util.tree_leaves(frozen_before), jax.tree_util.tree_leaves(frozen), strict=True):
        np.testing.assert_array_equal(before, np.asarray(after))
    # Every trainable leaf moved (rows that no example touched, e.g. unchosen skills or unseen tokens' embeddings,
    # get zero gradient and may stay, so a leaf counts as moved when any of its entries changed).
    flat_before = dict(nnx.to_flat_state(trainable_before))
    for path, after in nnx.to_flat_state(state["trainable"]):
        assert np.any(np.asarray(flat_before[path][...]) != np.asarray(after[...])), path


def test_unknown_method_or_stage_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method"):
        make_model("lora")
    with pytest.raises(ValueError, match="unknown stage 'pretrain'"):
        optim.trainable_rule("sharpt", "pretrain")


def test_warmup_then_constant_learning_rate():
    schedule = optim.learning_rate_schedule(0.3, 4000)
    np.testing.assert_allclose([schedule(0), schedule(2000), schedule(4000), schedule(80000)], [0, 0.15, 0.3, 0.3])
