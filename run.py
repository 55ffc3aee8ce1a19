"""Command line: train, evaluate or run the demo, as the config says.

    python run.py --config=configs/source_mix.py --workdir=DIR
    python run.py --config=configs/target.py:wic --workdir=DIR --config.source_checkpoint=SRC_DIR
    python run.py --workdir=DIR --config.mode=eval
    python run.py --config=configs/demo.py --workdir=DIR
    python run.py --config=configs/skills.py --workdir=DIR

`--config=FILE[:ARGUMENT]` names a config file of configs/ and its argument; `--config.FIELD=VALUE` sets any
field (`--config.eval.batch_size=64`; a tuple as `a,b`; a true/false field also as `--config.FIELD` or
`--noconfig.FIELD`). configs/command_line.py reads them.

The eval mode scores the run in DIR with the run's own config, DIR/config.json (its task, method, lengths, models:
everything that defines it), so it needs no `--config`; one given is read only for what it sets away from its
file's defaults. The command line may change only how the run is scored (config.eval.*: splits, scoring, batch
size, decode length) and on which machines (mesh_shape and the multi-host fields); any other field it sets to
another value than the run's (`configs/target.py:rte` on a wic run, `--config.method=...`) is refused. A run
moved to another machine keeps the paths it was trained with: edit them in DIR/config.json.

Every mistake of the config or the command line (an unknown field or flag, a value of the wrong type or outside
its allowed values, an unknown task, a missing file) ends the run with one line on stderr and exit status 2,
before any model is loaded or downloaded; so does a DIR in use by another run (sharpt_jax/workdir_lock.py). A
training that diverges ends with one line and exit status 1. Library logs (Orbax, SeqIO, TensorFlow's start-up
lines) are off unless asked for with `--verbosity=0` (absl's flag).
"""

import contextlib
import functools
import os
import sys

from absl import app, flags, logging

from configs import command_line
from sharpt_jax.errors import ConfigError

_CONFIG = flags.DEFINE_string(
    "config", None, "Config file and argument, e.g. configs/target.py:wic (optional with --config.mode=eval)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
flags.mark_flags_as_required(["workdir"])


def main(argv, overrides):
    try:
        if len(argv) > 1:
            raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
        config = command_line.load(_CONFIG.value, overrides, _WORKDIR.value)
    except ConfigError as err:
        command_line.fail(err)
    verbose = flags.FLAGS["verbosity"].present  # Library logs (Orbax, SeqIO, absl, TensorFlow) only when asked.
    if not verbose:
        logging.set_verbosity(logging.WARNING)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's later C++ warnings (read at import).
    # Imported here so that --help and flag errors do not wait for JAX and TensorFlow.
    with contextlib.nullcontext() if verbose else _native_stderr_off():
        from sharpt_jax import build, data, evaluate, train, workdir_lock
        from sharpt_jax.experiments import demo, skills_experiment

        data.keep_tensorflow_off_accelerators()
    runs = {  # One per command_line.MODES.
        "train": train.train,
        "eval": evaluate.evaluate_checkpoints,
        "demo": demo.run,
        "skills": skills_experiment.run,
    }
    try:
        build.check_config(config)  # Every field's value and the task names, before anything is built.
        build.initialize_distributed(config)  # Before any JAX computation: every host joins the same runtime.
        runs[config.mode](config, _WORKDIR.value)
    except (ConfigError, workdir_lock.WorkdirInUse) as err:
        command_line.fail(err)
    except train.TrainingDiverged as err:
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
    # The config overrides are taken out of argv before absl parses the other flags (configs/command_line.py).
    argv, overrides = command_line.split_argv(sys.argv)
    app.run(functools.partial(main, overrides=overrides), argv=argv, flags_parser=command_line.parse_flags)
