"""Dropout: the drop rate, the inverted scaling, independence of the hashed bits, reproducibility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sharpt_jax.models import layers


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_and_scale(rate):
    x = jnp.ones((64, 33, 47), jnp.float32)
    out = np.asarray(layers.dropout(x, rate, nnx.Rngs(dropout=jax.random.key(0, impl="rbg"))))
    dropped = out == 0.0
    # Binomial: n = 99,264 elements, so the fraction has a standard deviation under 0.0016.
    assert abs(dropped.mean() - rate) < 0.006
    np.testing.assert_allclose(out[~dropped], 1.0 / (1.0 - rate), rtol=1e-6)
    # The bits hash consecutive indices: neighbours along every axis must be independent (correlation ~ 0,
    # sd ~ 0.003).
    for axis in range(3):
        a, b = np.moveaxis(dropped, axis, 0)[:-1].ravel(), np.moveaxis(dropped, axis, 0)[1:].ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
    # Every row and position drops some: the bits are not repeated along the leading axes.
    assert dropped.any(axis=(1, 2)).all() and dropped.any(axis=0).mean() > 0.99


def test_dropout_is_a_function_of_the_key():
    x = jnp.ones((4, 8, 16))

    def run(seed):
        return np.asarray(layers.dropout(x, 0.3, nnx.Rngs(dropout=jax.random.key(seed, impl="rbg"))))

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))
    assert layers.dropout(x, 0.3, None) is x and layers.dropout(x, 0.0, nnx.Rngs(dropout=0)) is x


def test_dropout_masks_of_different_keys_are_independent():
    x = jnp.ones((256, 512))
    a, b = (np.asarray(layers.dropout(x, 0.5, nnx.Rngs(dropout=jax.random.key(s, impl="rbg")))) == 0 for s in (3, 4))
    # n = 131,072 pairs: the correlation of independent masks has a standard deviation under 0.003.
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.015


def test_dropout_refuses_arrays_too_large_for_its_uint32_index():
    too_large = jax.ShapeDtypeStruct((2**16, 2**16), jnp.float32)  # 2**32 elements; never materialised.
    with pytest.raises(ValueError, match="2\\*\\*32"):
        jax.eval_shape(lambda x: layers.dropout(x, 0.1, nnx.Rngs(dropout=jax.random.key(0, impl="rbg"))), too_large)
