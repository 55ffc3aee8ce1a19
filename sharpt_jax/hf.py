"""Hugging Face model folders -> NNX modules.

A folder (or a hub id, when the network allows) holds `config.json` and the weights as
`model.safetensors` (possibly sharded, with `model.safetensors.index.json`) or, only when nothing
else exists, `pytorch_model.bin` (read through torch). Each loader maps Hugging Face parameter
names onto our NNX parameter paths; every model parameter must be set from exactly one checkpoint
tensor of the right shape and every checkpoint tensor must be used, otherwise `CheckpointError`
names the file and the parameter.
"""

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx


class CheckpointError(ValueError):
    """A Hugging Face folder that cannot be turned into our model, with the reason and the file."""


# ---------------------------------------------------------------------------------------------
# Reading a folder.
# ---------------------------------------------------------------------------------------------

_WEIGHT_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]


def resolve_folder(path: str | os.PathLike) -> Path:
    """Returns a local folder for `path`: the folder itself, or a hub snapshot of a model id."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists() or str(path).startswith((".", "/", "~")):
        raise CheckpointError(f"{path}: not a model folder (expected a directory holding config.json)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), allow_patterns=_WEIGHT_PATTERNS))
    except Exception as err:  # Offline, unknown id, or no access: one clear message.
        raise CheckpointError(
            f"{path}: no local folder of that name and the hub download failed ({type(err).__name__}: "
            f"{err}). Offline, download the model once elsewhere (huggingface-cli download {path} "
            f"--local-dir DIR) and pass DIR instead."
        ) from err


def read_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: missing (every model folder needs its config.json)")
    return json.loads(config_file.read_text())


def read_weights(folder: Path) -> tuple[dict[str, np.ndarray], str]:
    """Returns ({hf_name: array}, description of the file(s) read). bfloat16 stays bfloat16."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if single.is_file() or index.is_file():
        from safetensors import safe_open

        files = [single] if single.is_file() else sorted(
            {folder / f for f in json.loads(index.read_text())["weight_map"].values()}
        )
        weights = {}
        for file in files:
            # framework="flax" keeps bfloat16 tensors, which the numpy reader rejects.
            with safe_open(file, framework="flax") as f:
                for name in f.keys():
                    weights[name] = np.asarray(f.get_tensor(name))
        return weights, ", ".join(str(f) for f in files)
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        import torch  # Only for checkpoints that exist solely as a PyTorch pickle.

        state = torch.load(bin_file, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}, str(bin_file)
    raise CheckpointError(
        f"{folder}: no weights (looked for model.safetensors, model.safetensors.index.json and pytorch_model.bin)"
    )


# ---------------------------------------------------------------------------------------------
# Assigning checkpoint tensors to NNX parameters.
# ---------------------------------------------------------------------------------------------


class WeightReader:
    """Hands out checkpoint tensors by Hugging Face name and remembers which ones were used."""

    def __init__(self, weights: dict[str, np.ndarray], source: str):
        self.weights, self.source, self.used = weights, source, set()

    def has(self, name: str) -> bool:
        return name in self.weights

    def take(self, name: str) -> np.ndarray:
        if name not in self.weights:
            raise CheckpointError(f"{self.source}: missing weight {name!r}")
        self.used.add(name)
        return self.weights[name]

    def check_all_used(self, ignore: Iterable[str] = ()) -> None:
        """Raises if a checkpoint tensor was not used, except names matching an `ignore` regex."""
        unused = sorted(
            n for n in self.weights if n not in self.used and not any(re.fullmatch(p, n) for p in ignore)
        )
        if unused:
            shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
            raise CheckpointError(f"{self.source}: unused weights (unsupported variant?): {shown}")


def assign_params(
    model: nnx.Module,
    values: dict[str, tuple[str, np.ndarray]],
    source: str,
    dtype: jnp.dtype,
) -> None:
    """Sets every `nnx.Param` of `model` from `values` in place.

    Args:
      model: the freshly built module (its random values are replaced).
      values: {our '/'-joined parameter path: (hf name it came from, array)}.
      source: the file(s) read, for error messages.
      dtype: storage dtype of the loaded parameters.
    """
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    ours = {"/".join(str(k) for k in path): path for path in flat}
    missing = sorted(set(ours) - set(values))
    if missing:
        raise CheckpointError(f"{source}: no checkpoint tensor for model parameter(s) {', '.join(missing[:8])}")
    extra = sorted(set(values) - set(ours))
    if extra:
        raise CheckpointError(f"{source}: mapped onto unknown model parameter(s) {', '.join(extra[:8])}")
    for name, path in ours.items():
        hf_name, array = values[name]
        expected = tuple(flat[path].shape)
        if tuple(array.shape) != expected:
            raise CheckpointError(
                f"{source}: shape mismatch for {hf_name!r} -> {name}: checkpoint {tuple(array.shape)}, "
                f"config expects {expected}"
            )
        flat[path] = flat[path].replace(jnp.asarray(array, dtype=dtype))
    nnx.update(model, nnx.from_flat_state(flat))
