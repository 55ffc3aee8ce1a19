"""Smoke tests of the benchmark's FLOP and parameter counters on toy shapes (no timing is asserted)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from bench import flops, run, shapes
from sharpt_jax import optim, train

T5 = shapes.t5_v1_1(32, 64, 2, 2, vocab_size=100)
ENCODER = shapes.bert(16, 1, 2, vocab_size=50)
# (method, stage, cached instance embeddings, T5 layers scanned)
METHODS = [
    ("sharpt", "source", False, True),
    ("sharpt", "target", False, True),
    ("sharpt", "target", True, True),
    ("no_latent", "target", False, True),
    ("no_latent", "target", True, True),
    ("prompt_tuning", "target", False, True),
    ("prompt_tuning", "target", False, False),
    ("model_tuning", "target", False, True),
]


@pytest.mark.parametrize("method,stage,cached,scan_layers", METHODS)
def test_analytic_flops_equal_traced_matmuls(method, stage, cached, scan_layers):
    """The analytic count equals the dot_generals JAX traces for the real train step (no frozen weight grads;
    with cached instance embeddings, no encoder at all; scanned layers counted once per layer)."""
    point = shapes.Point(method, stage, 2, input_len=7, target_len=5, prompt_len=3, num_skills=11, instance_len=6)
    point = dataclasses.replace(point, cached_embeddings=cached, scan_layers=scan_layers)
    graphdef, trainable, frozen = optim.split_model(shapes.build(T5, ENCODER, point), method, stage)
    optimizer = optim.make_optimizer("adam", 0.3, 0)
    step = train.make_train_step(graphdef, optimizer, optim.learning_rate_schedule(0.3, 0))
    batch = jax.tree_util.tree_map(jnp.asarray, run.make_batch(point, T5.vocab_size, ENCODER))
    jaxpr = jax.make_jaxpr(step)(train.init_train_state(trainable, optimizer), frozen, batch, jax.random.key(0))
    assert flops.jaxpr_matmul_flops(jaxpr) == flops.train_step_flops(T5, ENCODER, point)["total"]


def test_one_matmul_hand_count():
    """X [3, 4] @ W [4, 5] with a trained W and frozen X: forward 120, backward only dW (120)."""
    tally = flops._Tally()
    tally.weight(3, 4, 5, input_grad=False, trained=True)
    assert (tally.forward, tally.backward) == (120, 120)
    jaxpr = jax.make_jaxpr(lambda w: jnp.dot(jnp.ones((3, 4)), w))(jnp.ones((4, 5)))
    assert flops.jaxpr_matmul_flops(jaxpr) == 120


def test_trainable_param_formula_by_hand():
    """d = 32, m = 16, L = 3, K = 11: generator 16*32 + 32 + 32*32 + 32 + 3*32 = 1696; codebook 176."""
    assert flops.trainable_params(T5, 16, "sharpt", "target", 3, 11) == 1696
    assert flops.trainable_params(T5, 16, "sharpt", "source", 3, 11) == 1696 + 176
    assert flops.trainable_params(T5, 16, "prompt_tuning", "target", 3, 11) == 96


def test_backbone_formula_matches_eval_shape_model():
    point = shapes.Point("model_tuning", "target", 1, 1, 1, 3, 11, 1)
    _, trainable, _ = optim.split_model(shapes.build_abstract(T5, ENCODER, point), "model_tuning", "target")
    assert optim.count_params(trainable) == flops.backbone_params(T5)
    assert flops.tree_bytes(trainable) == 4 * flops.backbone_params(T5)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(trainable))
