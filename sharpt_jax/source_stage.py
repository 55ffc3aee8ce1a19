"""A target run's start: what the source stage trained (SharPT's codebook and generator, no_latent's generator),
read from a source run's checkpoint or from an exported source adapter, after checking that both stages share the
frozen models and shapes. The method table (`models/methods.py`) says what is transferred.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy
from flax import nnx

from sharpt_jax import checkpoints, optim, storage
from sharpt_jax.errors import ConfigError
from sharpt_jax.models import methods


def needs_source(config: ml_collections.ConfigDict) -> bool:
    """Whether the run starts from a source run: the target stage of a method that transfers."""
    return methods.get(config.method).transferred is not None and config.stage == "target"


def check_same_models(
    saved: dict,
    current: dict,
    where: str,
    error: type[ConfigError] = ConfigError,
    fix: str = "set --config.{part} to that run's",
) -> None:
    """`error` unless the frozen T5 and encoder recorded in `saved` ({"t5": {"path", "checksum"}, "encoder": ...},
    of the run or adapter named by `where`) are the ones of `current` (built here); `fix` ends the message."""
    for part in ("t5", "encoder"):
        theirs, ours = saved[part], current[part]
        if theirs["checksum"] != ours["checksum"]:
            raise error(
                f"{where} was trained with {part} {theirs['path']} (sha256 {theirs['checksum'][:12]}), here it is "
                f"{ours['path']} (sha256 {ours['checksum'][:12]}); " + fix.format(part=part)
            )


# An exported adapter's files (`sharpt_jax.serving.export`): a published source stage, reused without its run.
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter.json", "adapter.safetensors"


def check_given(config: ml_collections.ConfigDict) -> None:
    """ConfigError unless a run that needs a source run names one that holds checkpoints or an exported adapter."""
    if not needs_source(config):
        return
    if not config.source_checkpoint:
        raise ConfigError(
            f"method {config.method} in stage target starts from a source run: set "
            "--config.source_checkpoint=SRC_DIR (the workdir of configs/source_mix.py)"
        )
    source = storage.path(config.source_checkpoint)
    if not ((source / ADAPTER_CONFIG).is_file() or any(source.glob("checkpoints/[0-9]*"))):
        raise _no_source_checkpoints(source)


def _no_source_checkpoints(src: storage.Path) -> ConfigError:
    return ConfigError(
        f"config.source_checkpoint={src}: no checkpoints under {src / 'checkpoints'} (nor an exported source "
        f"adapter, {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})"
    )


def restore_source(model, config: ml_collections.ConfigDict, identity: dict) -> dict:
    """Loads what the source stage of `config.method` trained (SharPT: codebook and generator) from
    `config.source_checkpoint` into `model`, after checking that the source stage used the same frozen T5 and
    instance encoder and the same shapes. The source is a source run's workdir (its checkpoint
    `config.source_step`, default the last) or an exported adapter of a source run (adapter.json and
    adapter.safetensors). Returns {"workdir", "step"} for the records (an adapter's folder and its run's step)."""
    src = storage.path(config.source_checkpoint)
    if (src / ADAPTER_CONFIG).is_file():
        return _restore_source_adapter(model, config, identity, src)
    if not (src / "checkpoints").is_dir():  # Checked before opening it: opening would create the folder.
        raise _no_source_checkpoints(src)
    ckpts = checkpoints.Checkpoints(src)
    try:
        steps = ckpts.all_steps()
        if not steps:
            raise _no_source_checkpoints(src)
        step = steps[-1] if config.source_step < 0 else config.source_step
        if step not in steps:
            raise ConfigError(f"config.source_step={step}: {src} has checkpoints of steps {steps}")
        meta = ckpts.metadata(step)
        _check_source(str(src), meta["method"], meta["stage"], meta["identity"], meta["config"], config, identity)
        source_params = nnx.state(model, optim.path_filter(methods.get(config.method).transferred))
        restored = ckpts.restore_params(step, source_params)
        # Orbax returns arrays committed to this host's device; uncommitted, like the fresh parameters they
        # replace, they can be placed on a mesh of several hosts (jax.device_put refuses a committed array there).
        nnx.update(model, jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored))
    finally:
        ckpts.close()
    return {"workdir": str(storage.absolute(src)), "step": step}


def _restore_source_adapter(model, config: ml_collections.ConfigDict, identity: dict, src: storage.Path) -> dict:
    """`restore_source` from an exported adapter of a source run: same checks, its weights in place of the
    model's initial values."""
    adapter = json.loads((src / ADAPTER_CONFIG).read_text())
    step = adapter["run"]["step"]
    if config.source_step >= 0 and config.source_step != step:
        raise ConfigError(f"config.source_step={config.source_step}: the adapter {src} holds step {step} only")
    _check_source(str(src), adapter["method"], adapter["stage"], adapter, adapter["model"], config, identity)
    weights = safetensors.numpy.load((src / ADAPTER_WEIGHTS).read_bytes())
    flat = nnx.to_flat_state(nnx.state(model, optim.path_filter(methods.get(config.method).transferred)))
    expected = {optim.path_str(path): tuple(v.shape) for path, v in flat}
    if any(name not in weights or weights[name].shape != shape for name, shape in expected.items()):
        found = {name: value.shape for name, value in weights.items()}
        raise ConfigError(f"{src / ADAPTER_WEIGHTS}: weights {found}, a {config.method} source stage has {expected}")
    # Uncommitted, as in restore_source: a mesh of several hosts can then place them.
    restored = [(path, v.replace(jnp.asarray(weights[optim.path_str(path)].astype(v.dtype)))) for path, v in flat]
    nnx.update(model, nnx.from_flat_state(restored))
    return {"workdir": str(storage.absolute(src)), "step": step}


def _check_source(
    where: str, method: str, stage: str, models: dict, fields: dict, config: ml_collections.ConfigDict, identity
) -> None:
    """ConfigError unless the source `where` (a run or an adapter) is a source stage of `config.method` with the
    frozen models of `identity` and the run's num_skills and prompt_length (`fields`)."""
    if (method, stage) != (config.method, "source"):
        raise ConfigError(f"{where} is a {method} {stage}-stage run, not a {config.method} source-stage run")
    check_same_models(models, identity, where)
    for field in ("num_skills", "prompt_length"):
        if fields[field] != config[field]:
            raise ConfigError(
                f"{where} was trained with {field}={fields[field]}, this run has {config[field]}; "
                f"set --config.{field}={fields[field]}"
            )
