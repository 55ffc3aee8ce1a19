"""run.py's command line: the config file, its `--config.FIELD=VALUE` overrides, and the eval mode's config.

Everything here is pure Python (absl flags, ml_collections, no JAX or TensorFlow), so that `--help` is instant
and every mistake of the command line ends, before anything slow starts, with one line on stderr and exit
status 2 (`fail`): an unknown flag or config field (with the closest names), a value of the wrong type, a bad
config argument (configs/common.parse_arg), a missing config file.

The overrides are parsed here rather than by ml_collections' `DEFINE_config_file`, whose mistakes are
AttributeError, KeyError or ValueError tracebacks: `split_argv` takes every `--config.FIELD[=VALUE]` out of argv
before absl parses the rest, and `load` applies them to the config file's config, each converted to the type of
the field it replaces (configs/common.parse_value).

The eval mode scores a run with the run's own config, `WORKDIR/config.json` (written by the train mode), so
that a run is never scored as another task or method (`eval_config`).
"""

import importlib.util
import re
import sys
from pathlib import Path

import ml_collections
from absl import flags

from configs import common
from sharpt_jax import errors, storage
from sharpt_jax.errors import INVOCATION_FIELDS, ConfigError, flat, same

# The modes of run.py (config.mode).
MODES = ("train", "eval", "demo", "skills")
# `--config.a.b=value`, `--config.a.b value`, `--config.flag` and `--noconfig.flag` (booleans, as absl writes them).
_OVERRIDE = re.compile(r"^--?(no)?config\.([^=]+)(?:=(.*))?$", re.DOTALL)
_NUMBER = re.compile(r"^-\d")
# Fields an evaluation may set differently from the run's config.json: the scoring protocol (config.eval.*: the
# splits, decoding or rank classification, batch size, decode length) and the invocation's fields.
EVAL_PREFIX = "eval."


def fail(err: Exception | str) -> None:
    """Ends the program with `error: <err>` as one line on stderr and exit status 2."""
    line = "; ".join(part.strip() for part in str(err).splitlines() if part.strip())
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (app.run's `flags_parser`) with its mistakes (an unknown flag, a missing --workdir) as
    one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(err)


def split_argv(argv: list[str]) -> tuple[list[str], list[tuple[str, str | None, bool]]]:
    """(argv without the config overrides, [(field, value text or None when bare, negated)])."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        match = _OVERRIDE.match(argv[i])
        i += 1
        if not match:
            rest.append(argv[i - 1])
            continue
        negated, field, text = bool(match[1]), match[2], match[3]
        if text is None and not negated and i < len(argv) and (not argv[i].startswith("-") or _NUMBER.match(argv[i])):
            text, i = argv[i], i + 1  # `--config.field value`, as absl reads other flags.
        overrides.append((field, text, negated))
    return rest, overrides


def load(
    config_arg: str | None, overrides: list[tuple[str, str | None, bool]], workdir: str
) -> ml_collections.ConfigDict:
    """The config of a run.py invocation: `config_arg` (FILE[:ARGUMENT]) with `overrides` applied; in the eval
    mode, the run's own config (`eval_config`). Without `config_arg` the fields and defaults are
    configs/common.py's, which only the eval mode accepts.

    Raises:
      ConfigError: any mistake of the command line.
    """
    config, file_defaults = config_file(config_arg) if config_arg else (common.get_config(), common.get_config())
    for field, text, negated in overrides:
        set_field(config, field, text, negated)
    if config.mode not in MODES:
        raise errors.not_one_of("config.mode", config.mode, MODES)
    if config.mode == "eval":
        given = {field for field, _, _ in overrides} | set(changed(config, file_defaults))
        return eval_config(config, given, workdir)
    if not config_arg:
        raise ConfigError(
            "--config is required (e.g. --config=configs/target.py:wic); only the eval mode reads "
            "the run's config from WORKDIR/config.json"
        )
    return config


def config_file(config_arg: str) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(`get_config(ARGUMENT)`, `get_config()`) of the config file of `config_arg` (FILE[:ARGUMENT])."""
    path, _, arg = config_arg.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"--config={config_arg}: no config file {path} (the configs are in configs/*.py)")
    spec = importlib.util.spec_from_file_location(f"config_file_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config={config_arg}: {path} defines no get_config()")
    try:
        return module.get_config(arg) if arg else module.get_config(), module.get_config()
    except ValueError as err:  # A config file's own check of its argument (ours raise ConfigError, a ValueError).
        raise ConfigError(f"--config={config_arg}: {err}") from err


def changed(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> list[str]:
    """The leaf fields of `config` whose value is not `reference`'s (or that `reference` lacks)."""
    theirs = flat(reference)
    return [field for field, value in flat(config).items() if field not in theirs or not same(value, theirs[field])]


def set_field(config: ml_collections.ConfigDict, field: str, text: str | None, negated: bool = False) -> None:
    """Sets `config.<field>` (dotted) from the command line's text, converted to the field's type."""
    *groups, name = field.split(".")
    node = config
    for depth, key in enumerate([*groups, name]):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            fields = flat(config)
            raise ConfigError(f"unknown config field {field!r}; closest: {', '.join(errors.closest(field, fields))}")
        if depth < len(groups):
            node = node[key]
    current = node[name]
    if isinstance(current, ml_collections.ConfigDict):
        inner = ", ".join(f"{field}.{key}" for key in current)
        raise ConfigError(f"config.{field} is a group of fields; set one of them: {inner}")
    if isinstance(current, bool) and (text is None or negated):
        if negated and text is not None:
            raise ConfigError(f"--noconfig.{field} takes no value, got {text!r}")
        node[name] = not negated
        return
    if text is None or negated:
        raise ConfigError(
            f"--config.{field} needs a value (--config.{field}=VALUE); only true/false fields stand alone"
        )
    node[name] = common.parse_value(text, current, f"config.{field}")


def eval_config(config: ml_collections.ConfigDict, given: set[str], workdir: str) -> ml_collections.ConfigDict:
    """The config that scores the run in `workdir`: its config.json, with mode "eval", the scoring fields the
    command line gives (config.eval.*) and this invocation's machines (INVOCATION_FIELDS, always the command
    line's). Any other field `given` (set by the command line away from its config file's default) must equal the
    run's.

    Raises:
      ConfigError: no config.json, or a given field that differs from the run's (all of them named, one line).
    """
    path = storage.path(workdir) / "config.json"
    run = storage.read_json(path)
    if run is None:
        raise ConfigError(
            f"{path} not found: the eval mode scores the run trained in --workdir with its own config; train "
            "there first (the demo's runs are its subfolders: source, <target>, ...)"
        )
    run_fields, given_values = flat(run), flat(config)

    def differs(field: str) -> bool:
        return field not in run_fields or not same(given_values[field], run_fields[field])

    def describe(field: str) -> str:
        theirs = f"the run's: {run_fields[field]!r}" if field in run_fields else "the run has no such field"
        return f"config.{field} ({theirs}, given: {given_values[field]!r})"

    differing = [
        describe(field)
        for field in sorted(given)
        if field != "mode" and field not in INVOCATION_FIELDS and not field.startswith(EVAL_PREFIX) and differs(field)
    ]
    if differing:
        raise ConfigError(
            f"{path}: the eval mode scores the run with its own config, and the command line changes "
            f"{'; '.join(differing)}; drop these (only config.eval.* and the mesh and host fields may differ)"
        )
    out = config.copy_and_resolve_references()
    _update(out, run)
    for field in [*INVOCATION_FIELDS, *(f for f in given if f.startswith(EVAL_PREFIX))]:
        _assign(out, field, flat(config)[field])
    out.mode = "eval"
    return out


def _update(config: ml_collections.ConfigDict, values: dict) -> None:
    """Sets every field of `values` (a run's config.json) in `config`, adding the fields `config` lacks."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
            _update(config[key], value)
            continue
        try:
            config[key] = value  # Cast to the field's type where ml_collections can (a list to a tuple).
        except TypeError:  # The run's field has another type than this file's (an older run): the run's wins.
            del config[key]
            config[key] = value


def _assign(config: ml_collections.ConfigDict, field: str, value) -> None:
    *groups, name = field.split(".")
    for key in groups:
        config = config[key]
    config[name] = value
