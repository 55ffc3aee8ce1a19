"""User mistakes as one line: `ConfigError`, the closest names to put in its message, and configs' fields.

Pure Python (no JAX, no TensorFlow), so the command line (run.py, configs/) raises and prints these before anything
slow is imported; `build.ConfigError` is this class. run.py prints a ConfigError as one line and exits with status 2.
"""

import difflib
import json
from collections.abc import Iterable

import ml_collections


class ConfigError(ValueError):
    """A config or command-line mistake; its message is one line that says what to change."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The `n` candidates nearest to `name`, nearest first.

    Nearness is difflib's similarity ratio to the candidate or to its last dotted part, raised to 1 where `name`
    is the initials of the part's words ("lr" -> learning_rate) and to 0.8 where one contains the other
    ("batch" -> batch_size): typed abbreviations are as common as typos.
    """

    def nearness(candidate: str) -> float:
        leaf = candidate.rsplit(".", 1)[-1]
        ratio = max(difflib.SequenceMatcher(None, name, text).ratio() for text in (candidate, leaf))
        if name == "".join(word[:1] for word in leaf.split("_") if word):
            return 1.0
        return max(ratio, 0.8) if name in leaf or leaf in name else ratio

    return sorted(set(candidates), key=lambda candidate: (-nearness(candidate), candidate))[:n]


def not_one_of(what: str, value, allowed: Iterable[str]) -> ConfigError:
    """ConfigError "<what>=<value> is not one of <allowed>; closest: <the nearest allowed value>"."""
    allowed = list(allowed)
    nearest = closest(str(value), allowed, n=1)
    return ConfigError(f"{what}={value!r} is not one of {', '.join(allowed)}; closest: {', '.join(nearest)}")


# Fields that describe an invocation's machines, not the run: the eval mode and a resume take them from the command
# line whatever the run was trained with (configs/command_line.py, sharpt_jax/train.py).
INVOCATION_FIELDS = ("mesh_shape", "distributed", "coordinator_address", "num_processes", "process_id")


def flat(config: dict | ml_collections.ConfigDict) -> dict:
    """{"a.b": value} of every leaf field of a ConfigDict or dict."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict | ml_collections.ConfigDict):
            out.update({f"{key}.{k}": v for k, v in flat(value).items()})
        else:
            out[key] = value
    return out


def same(a, b) -> bool:
    """Equal as JSON says (a tuple equals the list config.json holds for it)."""
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))
