"""Hugging Face model folders -> {PyTorch parameter name: tensor}, whatever the weights format.

A folder (or a hub id, when the network allows) holds `config.json` and the weights in one of three formats,
read in this order of preference when it holds several (`weight_files`):
1. `model.safetensors` (or shards listed by `model.safetensors.index.json`): read tensor by tensor, when used;
2. `flax_model.msgpack` (Hugging Face's Flax format; several Google T5 repositories ship it beside the PyTorch
   pickle): read natively with flax.serialization, no torch, and renamed as Hugging Face converts Flax to
   PyTorch (`kernel` -> `weight` transposed, `embedding`/`scale` -> `weight`);
3. `pytorch_model.bin` (or shards listed by `pytorch_model.bin.index.json`): read through torch, an optional
   dependency (`pip install torch --index-url https://download.pytorch.org/whl/cpu`); without it the error says
   so in one line, when the folder is resolved, before any model is built.
The msgpack and PyTorch files are read whole into host memory; `python scripts/convert_weights.py SRC DST`
writes a safetensors copy once (`write_safetensors`), the format for large models.

Hub ids are downloaded into Hugging Face's cache (`HF_HOME`, default ~/.cache/huggingface); offline
(`HF_HUB_OFFLINE=1`, or no network) a model must be there already, or be downloaded once elsewhere with
`hf download ID --local-dir DIR` and passed as DIR. On several hosts, process 0 downloads first and the others
then take the commit it found (`resolve_folder_on_hosts`).

T5X checkpoints (gs://t5-data/pretrained_models/t5x/, a tensorstore layout indexed by a msgpack `checkpoint`
file) are not read: reading them needs t5x, whose releases pin older jax, flax and orbax than this project's
(jax 0.10), and the T5 checkpoints of the paper (T5 v1.1 and LM-adapted, all sizes) are on the hub in Hugging
Face's formats (google/t5-v1_1-*, google/t5-base-lm-adapt, ...), converted from the same T5 (Mesh TF) weights.
"""

import dataclasses
import json
import mmap
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util
from jax.experimental import multihost_utils

from sharpt_jax import checkpoints


class CheckpointError(ValueError):
    """A Hugging Face folder that cannot be turned into our model, with the reason and the file."""


# What a download fetches: config, weights, and the vocabulary files the input pipeline reads.
_MODEL_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "spiece.model",
    "vocab.txt",
]


def resolve_folder(path: str | os.PathLike, revision: str | None = None) -> Path:
    """Returns a local folder for `path`: the folder itself, or a hub snapshot of a model id (at `revision`, a
    commit hash, branch or tag; default the main branch; offline, HF_HUB_OFFLINE=1, a snapshot already in the hub
    cache is found without the network). Its config and weights must be readable here (`read_config`,
    `weight_files`), so a missing file or a missing torch is reported before any model is built."""
    local = Path(path).expanduser()
    if local.is_dir():
        read_config(local)
        weight_files(local)
        return local
    if local.exists() or str(path).startswith((".", "/", "~")):
        raise CheckpointError(f"{path}: not a model folder (expected a directory holding config.json)")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(path), revision=revision, allow_patterns=_MODEL_PATTERNS))
    except Exception as err:  # Offline, unknown id, or no access: one clear message.
        raise CheckpointError(
            f"{path}: no local folder of that name and the hub download failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Offline (HF_HUB_OFFLINE=1, or no network), "
            f"download the model once elsewhere with `hf download {path} --local-dir DIR` and pass DIR "
            "instead (or copy Hugging Face's cache, HF_HOME, to this machine)."
        ) from err
    read_config(folder)
    weight_files(folder)
    return folder


def hub_reference(path: str | os.PathLike, folder: Path) -> dict:
    """{"hub_id": path, "revision": commit hash} when `resolve_folder(path)` found the hub model `path` as
    `folder` (a hub cache snapshot, named by its commit); {} when `path` is a local folder, which stays a path."""
    if Path(path).expanduser().is_dir():
        return {}
    return {"hub_id": str(path), "revision": folder.name}


def resolve_folder_on_hosts(path: str | os.PathLike) -> Path:
    """`resolve_folder(path)` on every process of a run, process 0 first: it downloads a hub id (once, into a shared
    HF_HOME) and saves the folder's checksum there (`checkpoints.folder_checksum`); the other processes then
    resolve the commit it found, which a shared HF_HOME holds already (no call to the hub) and a host's own
    HF_HOME downloads. A failure on process 0 raises on every process."""
    revision, error = "", None
    if jax.process_index() == 0:
        try:
            folder = resolve_folder(path)
            checkpoints.folder_checksum(folder)  # Kept in the folder, where the other processes will find it.
            revision = hub_reference(path, folder).get("revision", "")
        except CheckpointError as err:
            error = err
    if jax.process_count() > 1:
        revision = _from_process_0(None if error else revision)
        if jax.process_index() > 0:
            if revision is None:
                raise CheckpointError(f"{path}: process 0 could not resolve it (its output says why)")
            folder = resolve_folder(path, revision or None)
    if error is not None:
        raise error
    return folder


def _from_process_0(text: str | None) -> str | None:
    """Process 0's `text` (ASCII, at most 64 characters, or None) on every process."""
    buffer = np.zeros(65, np.uint8)
    if text is not None:
        buffer[0], buffer[1 : 1 + len(text)] = 1, np.frombuffer(text.encode(), np.uint8)
    buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(buffer[1:]).rstrip(b"\0").decode() if buffer[0] else None


def read_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: missing (every model folder needs its config.json)")
    return json.loads(config_file.read_text())


@dataclasses.dataclass(frozen=True)
class SafetensorsTensor:
    """One tensor of a .safetensors file, read only when asked (`np.asarray(tensor)`): a large checkpoint is never
    held in host memory at once, and plain reads (no memory map) leave no file pages in the process."""

    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # Of the tensor's first byte in the file.

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        count = int(np.prod(self.shape))
        array = np.fromfile(self.file, dtype=self.dtype, count=count, offset=self.offset).reshape(self.shape)
        return array if dtype is None else array.astype(dtype)


# The safetensors format's dtype names; ml_dtypes' bfloat16 (jnp.bfloat16) keeps bfloat16 tensors bfloat16.
_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": jnp.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def safetensors_index(file: Path) -> dict[str, SafetensorsTensor]:
    """{name: SafetensorsTensor} from the file's header: an 8-byte little-endian header size, a JSON header of
    {name: {"dtype", "shape", "data_offsets": [begin, end]}} and the data, offsets counted from its start."""
    with open(file, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {info['dtype']}, which we do not read")
        tensors[name] = SafetensorsTensor(
            file,
            np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]),
            tuple(info["shape"]),
            8 + header_size + info["data_offsets"][0],
        )
    return tensors


def write_safetensors(tensors: dict, file: Path) -> None:
    """Writes {name: array-like} as a .safetensors file that PyTorch-side Hugging Face code reads too (format "pt"),
    one tensor at a time (each is read with `np.asarray` only when written: a large checkpoint is never held)."""
    dtype_names = {np.dtype(dtype): name for name, dtype in _SAFETENSORS_DTYPES.items()}
    header, offset = {}, 0
    for name, tensor in tensors.items():
        dtype = np.dtype(tensor.dtype)
        if dtype not in dtype_names:
            raise CheckpointError(f"tensor {name!r} has dtype {dtype}, which safetensors does not store")
        size = int(np.prod(tensor.shape)) * dtype.itemsize
        header[name] = {
            "dtype": dtype_names[dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    encoded += b" " * (-len(encoded) % 8)  # The format aligns the data to 8 bytes.
    with open(file, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        for tensor in tensors.values():
            f.write(np.ascontiguousarray(np.asarray(tensor)).tobytes())


# The weights formats in order of preference: (format, file, index of its shards or None).
_FORMATS = (
    ("safetensors", "model.safetensors", "model.safetensors.index.json"),
    ("msgpack", "flax_model.msgpack", None),
    ("torch", "pytorch_model.bin", "pytorch_model.bin.index.json"),
)
# How to read a PyTorch pickle without torch: one line, in every error about it.
TORCH_FIX = (
    "pip install torch --index-url https://download.pytorch.org/whl/cpu, or convert the folder once where torch is "
    "installed: python scripts/convert_weights.py {folder} DST_DIR"
)


def weight_files(folder: Path) -> tuple[str, list[Path]]:
    """(format, files) of the weights that `read_weights` reads from `folder` (see the module docstring for the
    order of preference). CheckpointError when there are none, or when only PyTorch weights exist and torch is
    not installed."""
    for kind, single, index in _FORMATS:
        if (folder / single).is_file():
            files = [folder / single]
        elif index and (folder / index).is_file():
            files = sorted({folder / f for f in json.loads((folder / index).read_text())["weight_map"].values()})
        else:
            continue
        if kind == "torch":
            _torch(folder)
        return kind, files
    names = [name for _, single, index in _FORMATS for name in (single, index) if name]
    raise CheckpointError(f"{folder}: no weights (looked for {', '.join(names)})")


def _torch(folder: Path):
    try:
        import torch  # Only for checkpoints that exist solely as a PyTorch pickle.
    except ImportError as err:
        raise CheckpointError(
            f"{folder}: its weights are a PyTorch pickle (pytorch_model.bin), and reading it needs torch, which is "
            "not installed: " + TORCH_FIX.format(folder=folder)
        ) from err
    return torch


def _read_msgpack(file: Path) -> dict[str, np.ndarray]:
    """{Hugging Face PyTorch name: array in PyTorch's layout} of a Flax msgpack file, renamed as transformers'
    `load_flax_weights_in_pytorch_model` renames: a Dense `kernel` [in, out] becomes `weight` [out, in], an
    `embedding` or LayerNorm `scale` becomes `weight`. The file is memory-mapped: only the arrays are held."""
    with open(file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        tree = serialization.msgpack_restore(data)
    weights = {}
    for key, value in traverse_util.flatten_dict(tree).items():
        *module, leaf = key
        if leaf == "kernel":
            leaf, value = "weight", value.T
        elif leaf in ("embedding", "scale"):
            leaf = "weight"
        weights[".".join([*module, leaf])] = value
    return weights


def read_weights(folder: Path) -> tuple[dict[str, SafetensorsTensor | np.ndarray], str]:
    """Returns ({hf_name: tensor}, description of the file(s) read), names and layouts as in Hugging Face's PyTorch
    models whatever the format (`weight_files`). Safetensors tensors are read when used (`np.asarray`); msgpack
    and PyTorch files are read whole. bfloat16 stays bfloat16."""
    kind, files = weight_files(folder)
    weights = {}
    for file in files:
        if kind == "safetensors":
            weights.update(safetensors_index(file))
        elif kind == "msgpack":
            weights.update(_read_msgpack(file))
        else:
            torch = _torch(folder)
            state = torch.load(file, map_location="cpu", weights_only=True)
            # numpy has no bfloat16: its bits are viewed as ml_dtypes' bfloat16 (jnp.bfloat16).
            weights.update(
                {
                    k: v.view(torch.int16).numpy().view(jnp.bfloat16) if v.dtype == torch.bfloat16 else v.numpy()
                    for k, v in state.items()
                }
            )
    return weights, ", ".join(str(f) for f in files)
