"""Analytic model FLOPs of one train step, a jaxpr matmul counter to check them, and trainable-parameter formulas.

Model FLOPs of a train step with a frozen backbone. `6 * N * tokens` assumes every weight is trained; here
most are not. Each matrix product Y = X W (X: [n, a] activations, W: [a, b]) costs
    forward                      2 * n * a * b
    activation gradient dX       2 * n * a * b   only if X depends on a trainable parameter
    weight gradient dW           2 * n * a * b   only if W itself is trained
and each attention product (scores Q K^T, outputs P V; both operands are activations) costs its forward
2 * B * heads * q_len * k_len * d_kv plus the same again for each operand that depends on a trainable
parameter. JAX's autodiff propagates symbolic zeros, so it computes exactly these products and no others.

For the prompt methods (SharPT, no_latent, PromptTuning) the prompt is trainable, so every encoder product
needs its activation gradient (all encoder positions attend to the prompt) while the decoder's first
self-attention block does not (decoder token embeddings are frozen): its gradient enters through the first
cross-attention's keys and values. Unrolled layers skip that block's backward; scanned layers (the default) run
one body for every layer, whose input carries a gradient after the first layer, so they compute it for the first
layer too (and the first cross-attention's query and Q K^T gradients: 0.2% of the T5-base PromptTuning step at
B = 8, T = 128, S = 32). No backbone weight gradient is computed. ModelTuning trains everything.
With T_e = L + T encoder positions, S decoder positions and P = 4 d h d_kv + (3 or 2) d d_ff weights per layer,
a prompt method's step is, to leading order,
    forward  2 B [T_e n_enc P + S n_dec (P + 4 d h d_kv) + S d V] + attention
    backward 2 B [T_e n_enc P + S n_dec (P + 4 d h d_kv) + S d V] + attention - (first decoder self-attention)
plus the SharPT extras: the frozen instance encoder (forward only; none when the batch carries cached
embeddings), the codebook distances 2 B K m (forward only; argmin has no gradient) and the generator (W1 [m, d]
on B rows, W2 [d, d] on B + L rows: forward, their weight gradients, and the activation gradient of W1's input
only when the codebook trains).
"""

import math

import jax
import numpy as np
from jax.extend import core

from bench.shapes import Point
from sharpt_jax.models.encoder import BertConfig
from sharpt_jax.models.t5 import T5Config


class _Tally:
    """Sums forward and backward FLOPs of matrix products, given which operands carry gradients."""

    def __init__(self):
        self.forward = 0
        self.backward = 0

    def weight(self, rows: int, n_in: int, n_out: int, input_grad: bool, trained: bool) -> bool:
        """X [rows, n_in] @ W [n_in, n_out]; returns whether the output depends on a trainable parameter."""
        flops = 2 * rows * n_in * n_out
        self.forward += flops
        self.backward += flops * (int(input_grad) + int(trained))
        return input_grad or trained

    def attention(self, batch: int, heads: int, q_len: int, k_len: int, d_kv: int, grads: int):
        """Q K^T or P V of [batch, heads, q_len, k_len] with `grads` (0-2) operands needing a gradient."""
        flops = 2 * batch * heads * q_len * k_len * d_kv
        self.forward += flops
        self.backward += flops * grads


def _t5_layer(tally, c: T5Config, batch, q_len, x_dep, trained, cross_len=None, cross_dep=False) -> bool:
    """One T5 block on x [batch, q_len, d]; returns whether its output depends on a trainable parameter."""
    rows, inner, h = batch * q_len, c.num_heads * c.d_kv, c.num_heads
    qkv_dep = any([tally.weight(rows, c.d_model, inner, x_dep, trained) for _ in range(3)])
    tally.attention(batch, h, q_len, q_len, c.d_kv, 2 * int(qkv_dep))  # Q K^T
    tally.attention(batch, h, q_len, q_len, c.d_kv, 2 * int(qkv_dep))  # P V
    x_dep = tally.weight(rows, inner, c.d_model, qkv_dep, trained) or x_dep
    if cross_len is not None:
        q_dep = tally.weight(rows, c.d_model, inner, x_dep, trained)
        k_dep = tally.weight(batch * cross_len, c.d_model, inner, cross_dep, trained)
        v_dep = tally.weight(batch * cross_len, c.d_model, inner, cross_dep, trained)
        tally.attention(batch, h, q_len, cross_len, c.d_kv, int(q_dep) + int(k_dep))
        p_dep = q_dep or k_dep
        tally.attention(batch, h, q_len, cross_len, c.d_kv, int(p_dep) + int(v_dep))
        x_dep = tally.weight(rows, inner, c.d_model, p_dep or v_dep, trained) or x_dep
    num_in = 2 if c.feed_forward_proj == "gated-gelu" else 1
    h_dep = any([tally.weight(rows, c.d_model, c.d_ff, x_dep, trained) for _ in range(num_in)])
    return tally.weight(rows, c.d_ff, c.d_model, h_dep, trained) or x_dep


def _bert_forward(tally, c: BertConfig, batch: int, length: int):
    """The frozen instance encoder: forward only."""
    rows, d, h = batch * length, c.hidden_size, c.num_attention_heads
    for _ in range(c.num_hidden_layers):
        for n_in, n_out in [(d, d)] * 4 + [(d, c.intermediate_size), (c.intermediate_size, d)]:
            tally.weight(rows, n_in, n_out, False, False)
        tally.attention(batch, h, length, length, d // h, 0)
        tally.attention(batch, h, length, length, d // h, 0)


def train_step_flops(t5: T5Config, encoder: BertConfig, point: Point) -> dict[str, int]:
    """Model FLOPs of one train step of `point` (see the module docstring): forward, backward, total."""
    tally = _Tally()
    b, d = point.batch, t5.d_model
    trained = point.method == "model_tuning"
    if point.uses_encoder:
        if not point.cached_embeddings:
            _bert_forward(tally, encoder, b, point.instance_len)
        m, codebook_trained = encoder.hidden_size, point.method == "sharpt" and point.stage == "source"
        if point.method == "sharpt":
            tally.weight(b, m, point.num_skills, False, False)  # distances: feed argmin only
        tally.weight(b, m, d, codebook_trained, True)  # W1
        tally.weight(b, d, d, True, True)  # W2 e'
        tally.weight(point.prompt_len, d, d, True, True)  # W2 z_l: both operands trained
    # Encoder: the prompt (or, for model tuning, the embedding table) is upstream of every product.
    for _ in range(t5.num_layers):
        _t5_layer(tally, t5, b, point.encoder_len, True, trained)
    # Decoder: its token embeddings are frozen for prompt methods; the encoder output never is. A scan's body
    # treats the first layer's input like the others', which carry a gradient.
    x_dep = trained or point.scan_layers
    for _ in range(t5.num_decoder_layers):
        x_dep = _t5_layer(tally, t5, b, point.target_len, x_dep, trained, point.encoder_len, True)
    tally.weight(b * point.target_len, d, t5.vocab_size, x_dep, trained)  # lm_head (or tied embedding)
    return {"forward": tally.forward, "backward": tally.backward, "total": tally.forward + tally.backward}


def jaxpr_matmul_flops(jaxpr: core.ClosedJaxpr | core.Jaxpr) -> int:
    """2 * output size * contracted size, summed over every dot_general of a jaxpr and its sub-jaxprs.

    An independent count of what JAX actually traced (e.g. `jax.make_jaxpr(train_step)(...)`), used to check
    `train_step_flops`. A scan's body (the scanned layers of a T5 stack) counts once per iteration; a while loop's
    (greedy decoding, whose trip count is not static) once.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contracted = math.prod(lhs_shape[i] for i in lhs_contract)
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * contracted
        repeats = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for sub in core.jaxprs_in_params(eqn.params):
            total += repeats * jaxpr_matmul_flops(sub)
    return total


# ---------------------------------------------------------------------------------------------
# Parameter counts in closed form.
# ---------------------------------------------------------------------------------------------


def backbone_params(c: T5Config) -> int:
    """All T5 parameters: embeddings, blocks, norms, relative position tables, untied lm_head."""
    d, inner = c.d_model, c.num_heads * c.d_kv
    ffn = (3 if c.feed_forward_proj == "gated-gelu" else 2) * d * c.d_ff
    encoder_layer = 4 * d * inner + ffn + 2 * d
    decoder_layer = 8 * d * inner + ffn + 3 * d
    stacks = c.num_layers * encoder_layer + c.num_decoder_layers * decoder_layer
    relpos_and_final_norms = 2 * (c.relative_attention_num_buckets * c.num_heads + d)
    lm_head = 0 if c.tie_word_embeddings else d * c.vocab_size
    return c.vocab_size * d + stacks + relpos_and_final_norms + lm_head


def trainable_params(c: T5Config, m: int, method: str, stage: str, prompt_len: int, num_skills: int) -> int:
    """Closed form: generator = W1 (m d + d) + W2 (d^2 + d) + z (L d); codebook = K m; prompt = L d."""
    d = c.d_model
    generator = m * d + d + d * d + d + prompt_len * d
    if method == "model_tuning":
        return backbone_params(c)
    if method == "prompt_tuning":
        return prompt_len * d
    if method == "sharpt" and stage == "source":
        return num_skills * m + generator
    return generator


def tree_bytes(tree) -> int:
    """Bytes of all array (or ShapeDtypeStruct) leaves of a pytree."""
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))
