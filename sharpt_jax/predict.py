"""`python -m sharpt_jax.predict --adapter A [--adapter B ...] --input rows.jsonl --output preds.jsonl`.

The command's entry point; the code is `sharpt_jax.serving.predict` (mixed-task serving of adapters).
"""

from sharpt_jax.serving.predict import main

if __name__ == "__main__":
    main()
