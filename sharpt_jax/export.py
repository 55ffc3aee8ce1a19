"""`python -m sharpt_jax.export RUN_DIR OUT_DIR [--step N]`: a run's checkpoint as an adapter.

The command's entry point; the code is `sharpt_jax.serving.export`.
"""

from sharpt_jax.serving.export import main

if __name__ == "__main__":
    main()
