"""run.py's command line: config overrides, one-line mistakes (exit status 2, nothing built), the eval mode's config
from the run's config.json."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from configs import command_line, common
from configs import target as target_config
from sharpt_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def load(config_arg, *flags, workdir="unused"):
    """command_line.load as run.py calls it, from `--config.x=y` strings."""
    _, overrides = command_line.split_argv(["run.py", *flags])
    return command_line.load(config_arg, overrides, str(workdir))


def test_overrides_take_the_type_of_their_field():
    config = load(
        "configs/target.py:rte,method=prompt_tuning",
        "--config.learning_rate=0.01",
        "--config.num_skills",
        "7",  # `--config.field value`, as absl reads flags.
        "--config.eval.splits=validation,test,train",
        "--config.remat",
        "--noconfig.scan_layers",
        "--config.process_id=-1",
        "--config.mesh_shape=4,2",
    )
    assert (config.task, config.method, config.optimizer) == ("rte", "prompt_tuning", "adafactor")
    assert config.learning_rate == 0.01 and config.num_skills == 7
    assert config.eval.splits == ("validation", "test", "train")
    assert config.remat is True and config.scan_layers is False
    assert config.process_id == -1 and config.mesh_shape == "4,2"
    assert load("configs/target.py", "--config.eval.splits=('validation',)").eval.splits == ("validation",)


@pytest.mark.parametrize(
    "config_arg, flags, message",
    [
        ("configs/target.py:wic", ["--config.lr=0.1"], "unknown config field 'lr'; closest: learning_rate, "),
        (
            "configs/target.py",
            ["--config.eval.batchsize=8"],
            "unknown config field 'eval.batchsize'; closest: eval.batch_size",
        ),
        ("configs/target.py", ["--config.num_skills=1.5"], "config.num_skills: expected an integer, got '1.5'"),
        ("configs/target.py", ["--config.remat=maybe"], "config.remat: expected true or false, got 'maybe'"),
        ("configs/target.py", ["--config.task"], "--config.task needs a value"),
        ("configs/target.py", ["--config.eval=x"], "config.eval is a group of fields"),
        (
            "configs/target.py",
            ["--config.mode=evaluate"],
            "config.mode='evaluate' is not one of train, eval, demo, skills",
        ),
        ("configs/target.py:wic,method=prompt-tuning", [], "method='prompt-tuning' is not one of sharpt, no_latent, "),
        ("configs/target.py:wic,size=3b", [], "size='3b' is not one of small, base, large, xl, xxl; closest: "),
        ("configs/target.py:wic,sise=base", [], "unknown key 'sise'; keys: task, method, size; closest: size"),
        (
            "configs/source_mix.py:catgory",
            [],
            "mixture='catgory' is not one of high_to_low, category; closest: category",
        ),
        ("configs/demo.py:x", [], "configs/demo.py takes no argument"),
        ("configs/nope.py", [], "no config file configs/nope.py"),
        (None, [], "--config is required"),
    ],
)
def test_mistakes_are_config_errors(config_arg, flags, message):
    with pytest.raises(ConfigError) as info:
        load(config_arg, *flags)
    assert message in str(info.value) and "\n" not in str(info.value)
    if "is not one of" in message:  # The allowed values and the closest one.
        assert "closest: " in str(info.value)


def test_method_and_size_mistakes_name_the_closest():
    with pytest.raises(ConfigError, match="closest: prompt_tuning$"):
        common.parse_arg("wic,method=prompt-tuning", common.METHOD_AND_SIZE, task="wic", method="sharpt", size="base")


# ---------------------------------------------------------------------------------------------
# The eval mode: the run's own config.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def prompt_tuning_run(tmp_path):
    """A workdir with the config.json that the train mode writes for configs/target.py:wic,method=prompt_tuning."""
    config = target_config.get_config("wic,method=prompt_tuning")
    config.mesh_shape, config.eval.batch_size = "4,2", 16
    (tmp_path / "config.json").write_text(config.to_json(indent=2) + "\n")
    return config, tmp_path


@pytest.mark.parametrize("config_arg", [None, "configs/target.py:wic", "configs/target.py", "configs/demo.py"])
def test_eval_scores_the_run_with_its_own_config(prompt_tuning_run, config_arg):
    """Forgetting `method=prompt_tuning` (or the whole --config) scores the run as it was trained."""
    run, workdir = prompt_tuning_run
    config = load(config_arg, "--config.mode=eval", workdir=workdir)
    fields, expected = command_line.flat(config), command_line.flat(json.loads((workdir / "config.json").read_text()))
    assert config.mode == "eval" and config.method == "prompt_tuning" and config.optimizer == "adafactor"
    # Every field is the run's (eval.batch_size 16 too), but the mode and this invocation's mesh (the command
    # line's: its default here).
    assert {f for f in expected if not command_line.same(fields[f], expected[f])} == {"mode", "mesh_shape"}
    assert config.mesh_shape == "-1,1" and config.eval.batch_size == 16
    assert config.eval.splits == ("validation", "test")  # A tuple again (config.json holds a list).


def test_eval_takes_scoring_fields_and_refuses_others(prompt_tuning_run):
    run, workdir = prompt_tuning_run
    config = load(
        None,
        "--config.mode=eval",
        "--config.eval.batch_size=8",
        "--config.eval.scoring=rank_classification",
        workdir=workdir,
    )
    assert (config.eval.batch_size, config.eval.scoring, config.eval.max_decode_len) == (8, "rank_classification", 64)
    # The run's own values may be repeated (the train command with the mode added).
    assert load("configs/target.py:wic,method=prompt_tuning", "--config.mode=eval", workdir=workdir).task == "wic"
    with pytest.raises(ConfigError) as info:
        load("configs/target.py:rte", "--config.mode=eval", workdir=workdir)
    assert "config.task (the run's: 'wic', given: 'rte')" in str(info.value)
    with pytest.raises(ConfigError, match=r"config.method \(the run's: 'prompt_tuning', given: 'sharpt'\)"):
        load(None, "--config.mode=eval", "--config.method=sharpt", workdir=workdir)
    with pytest.raises(ConfigError, match="config.json not found"):
        load(None, "--config.mode=eval", workdir=workdir / "nothing")


# ---------------------------------------------------------------------------------------------
# run.py itself: one line on stderr, exit status 2, nothing created.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config=configs/target.py:wic", "--config.lr=0.1"],
            "unknown config field 'lr'; closest: learning_rate",
        ),
        (["--config=configs/target.py:wic,method=prompt-tuning"], "closest: prompt_tuning"),
        (["--config=configs/target.py:wic", "--workdri=x"], "Unknown command line flag 'workdri'"),
        (["--config=configs/target.py:wic", "stray"], "unexpected arguments: stray"),
        # Found after the library is imported, still before any file or model is read.
        (["--config=configs/target.py:wicc"], "config.task='wicc': unknown task wicc; closest: wic"),
    ],
)
def test_run_py_mistakes_are_one_line_and_exit_2(tmp_path, args, message):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "run.py", f"--workdir={workdir}", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert not workdir.exists()  # No lock, checkpoint or config.json: nothing was started.
