"""Command line: train, evaluate or run the demo, as the config says.

    python run.py --config=configs/source_mix.py --workdir=DIR
    python run.py --config=configs/target.py:wic --workdir=DIR --config.source_checkpoint=SRC_DIR
    python run.py --config=configs/target.py:wic --workdir=DIR --config.mode=eval
    python run.py --config=configs/demo.py --workdir=DIR
    python run.py --config=configs/skills.py --workdir=DIR

Mistakes in the config or the command line end the run with one line on stderr and exit status 1. Library
logs (Orbax, SeqIO, TensorFlow's start-up lines) are off unless asked for with `--verbosity=0` (absl's flag).
"""

import contextlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/target.py:wic.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    verbose = flags.FLAGS["verbosity"].present  # Library logs (Orbax, SeqIO, absl, TensorFlow) only when asked.
    if not verbose:
        logging.set_verbosity(logging.WARNING)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's later C++ warnings (read at import).
    # Imported here so that --help and flag errors do not wait for JAX and TensorFlow.
    with contextlib.nullcontext() if verbose else _native_stderr_off():
        from sharpt_jax import build, data, evaluate, train
        from sharpt_jax.experiments import demo, skills_experiment

        data.keep_tensorflow_off_accelerators()
    runs = {
        "train": train.train,
        "eval": evaluate.evaluate_checkpoints,
        "demo": demo.run,
        "skills": skills_experiment.run,
    }
    try:
        build.initialize_distributed(config)  # Before any JAX computation: every host joins the same runtime.
        if config.mode not in runs:
            raise build.ConfigError(f"config.mode={config.mode!r} is not one of {', '.join(runs)}")
        runs[config.mode](config, _WORKDIR.value)
    except (build.ConfigError, train.TrainingDiverged) as err:
        sys.exit(f"error: {err}")


@contextlib.contextmanager
def _native_stderr_off():
    """Sends file descriptor 2 to /dev/null: TensorFlow's C++ start-up lines (oneDNN, CUDA stubs, some at ERROR
    level, none about the run) are written there before any log level applies (TF_CPP_MIN_LOG_LEVEL included).
    Python's own errors still reach the terminal: an exception propagates after the descriptor is restored. A
    native crash inside these imports would print nothing: run with --verbosity=0 to see it."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if __name__ == "__main__":
    app.run(main)
