"""`python -m sharpt_jax.report --runs RUNS_DIR --out OUT_DIR`: the paper's tables and figures from runs.

The command's entry point; the code is `sharpt_jax.experiments.paper_report`.
"""

from sharpt_jax.experiments.paper_report import main

if __name__ == "__main__":
    main()
