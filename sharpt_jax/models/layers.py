"""Small NNX building blocks shared by the T5 backbone, the instance encoder and SharPT.

Every parameter carries logical axis names in its `out_sharding` metadata (`batch`, `length`,
`embed`, `heads`, `kv`, `mlp`, `vocab`, `relpos`, `prompt`, `codebook`); `sharpt_jax.sharding` maps
them onto the device mesh with one rules table. Parameters are created with `eager_sharding=False`
so that models can be built (or `nnx.eval_shape`d) outside a mesh; the trainer places them.

Dtype policy: parameters are stored in `param_dtype` (float32 unless a frozen backbone is cast to
bfloat16), matrix products run in the compute `dtype`, and normalisation statistics are always
computed in float32.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]
_LECUN_NORMAL = nnx.initializers.lecun_normal()
_UNIT_NORMAL = nnx.initializers.normal(1.0)


def param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    axes: tuple[str | None, ...],
    param_dtype: jnp.dtype = jnp.float32,
) -> nnx.Param:
    """Creates an `nnx.Param` of `shape` whose metadata names its logical `axes`."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {tuple(shape)}")
    value = init(rngs.params(), tuple(shape), param_dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Dense(nnx.Module):
    """`y = x @ kernel (+ bias)` with kernel [in_features, out_features] on logical `axes`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        axes: tuple[str | None, str | None],
        *,
        use_bias: bool = False,
        kernel_init: Initializer = _LECUN_NORMAL,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.kernel = param(rngs, kernel_init, (in_features, out_features), axes, param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (out_features,), (axes[1],), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., in_features] -> [..., out_features] in the compute dtype."""
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table [num_embeddings, features] on axes ('vocab', 'embed')."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        axes: tuple[str | None, str | None] = ("vocab", "embed"),
        embedding_init: Initializer = _UNIT_NORMAL,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.embedding = param(rngs, embedding_init, (num_embeddings, features), axes, param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids: [...] int -> [..., features] in the compute dtype."""
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the table (tied output layer): x [..., features] -> float32 [..., vocab]. Computed in
        float32 whatever the compute dtype: output-layer precision sets the loss's and the scores' resolution."""
        return jnp.dot(x.astype(jnp.float32), self.embedding[...].astype(jnp.float32).T)


class RMSNorm(nnx.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias; statistics in float32."""

    def __init__(self, features: int, *, eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.eps, self.dtype = eps, dtype
        self.scale = param(rngs, nnx.initializers.ones, (features,), ("embed",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(variance + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nnx.Module):
    """BERT's layer norm (mean and variance, scale and bias); statistics in float32."""

    def __init__(
        self, features: int, *, eps: float = 1e-12, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs
    ):
        self.eps, self.dtype = eps, dtype
        self.scale = param(rngs, nnx.initializers.ones, (features,), ("embed",), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (features,), ("embed",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(variance + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array,
    dropout_rate: float,
    rngs: nnx.Rngs | None,
) -> jax.Array:
    """Dot-product attention without logit scaling, softmax in float32.

    Args:
      q: [B, Q, heads, d_kv]; k, v: [B, K, heads, d_kv].
      bias: float32 [1, heads, Q, K] relative position bias, or None (cross-attention).
      mask: bool, broadcastable to [B, heads, Q, K]; False = may not attend.

    Returns:
      [B, Q, heads, d_kv] in the dtype of v.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1), dropout_rate, rngs)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def dropout(x: jax.Array, rate: float, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout; the identity when `rngs` is None (evaluation) or `rate` is 0.

    Models hold no RNG state: the train step passes `nnx.Rngs(dropout=fold_in(key, step))`, so a
    resumed run draws exactly the masks an uninterrupted run would have drawn.
    """
    if rngs is None or rate == 0.0:
        return x
    if x.size >= 2**32:
        raise ValueError(f"dropout counts elements in uint32; {x.shape} has {x.size} >= 2**32")
    # jax.random draws only this call's two 32-bit keys; each element's bits are a keyed hash of its index.
    # XLA's CPU random-bit generator (13 ns per 32-bit word) took 3.3 s of an 11.3 s T5-base prompt-tuning
    # step on 2 cores (bench/run.py, B = 8, T = 128); the hash is a few integer ops that XLA fuses into the
    # `where` below (on CPU a [8, 12, 192, 192] dropout went from 30 ms to 5 ms, about a copy of x). The index
    # is the element's position in the global array, so the masks do not depend on how x is sharded.
    k0, k1 = jax.random.bits(rngs.dropout(), (2,), jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    for axis, size in enumerate(x.shape):
        index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis)
    bits = _mix32(_mix32(index ^ k0) ^ k1)
    keep = bits >= jnp.uint32(round(rate * 2**32))  # Drop probability `rate` to within 2**-33.
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _mix32(h: jax.Array) -> jax.Array:
    """C. Wellons' `lowbias32` integer hash: a bijection of uint32 whose every output bit depends on every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)
