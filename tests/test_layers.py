"""Dropout: the drop rate, the inverted scaling, independence of the packed random bits, reproducibility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sharpt_jax.models import layers


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_and_scale(rate):
    x = jnp.ones((64, 33, 47), jnp.float32)  # An odd last axis: its final 16-bit half is cut off.
    out = np.asarray(layers.dropout(x, rate, nnx.Rngs(dropout=jax.random.key(0, impl="rbg"))))
    dropped = out == 0.0
    # Binomial: n = 99,264 elements, so the fraction has a standard deviation under 0.0016.
    assert abs(dropped.mean() - rate) < 0.006
    np.testing.assert_allclose(out[~dropped], 1.0 / (1.0 - rate), rtol=1e-6)
    # Neighbours share a 32-bit word: their masks must still be independent (correlation ~ 0, sd ~ 0.005).
    a, b = dropped[..., :-1:2].ravel(), dropped[..., 1::2].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    # Every row and position drops some: the bits are not repeated along the leading axes.
    assert dropped.any(axis=(1, 2)).all() and dropped.any(axis=0).mean() > 0.99


def test_dropout_is_a_function_of_the_key():
    x = jnp.ones((4, 8, 16))

    def run(seed):
        return np.asarray(layers.dropout(x, 0.3, nnx.Rngs(dropout=jax.random.key(seed, impl="rbg"))))

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))
    assert layers.dropout(x, 0.3, None) is x and layers.dropout(x, 0.0, nnx.Rngs(dropout=0)) is x
