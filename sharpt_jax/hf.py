"""Hugging Face model folders -> NNX modules.

A folder (or a hub id, when the network allows) holds `config.json` and the weights as
`model.safetensors` (possibly sharded, with `model.safetensors.index.json`) or, only when nothing
else exists, `pytorch_model.bin` (read through torch). Each loader maps Hugging Face parameter
names onto our NNX parameter paths; every model parameter must be set from exactly one checkpoint
tensor of the right shape and every checkpoint tensor must be used, otherwise `CheckpointError`
names the file and the parameter.
"""

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx


class CheckpointError(ValueError):
    """A Hugging Face folder that cannot be turned into our model, with the reason and the file."""


# ---------------------------------------------------------------------------------------------
# Reading a folder.
# ---------------------------------------------------------------------------------------------

# What a download fetches: config, weights, and the vocabulary files the input pipeline reads.
_MODEL_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "spiece.model",
    "vocab.txt",
]


def resolve_folder(path: str | os.PathLike) -> Path:
    """Returns a local folder for `path`: the folder itself, or a hub snapshot of a model id."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists() or str(path).startswith((".", "/", "~")):
        raise CheckpointError(f"{path}: not a model folder (expected a directory holding config.json)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), allow_patterns=_MODEL_PATTERNS))
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

        files = (
            [single]
            if single.is_file()
            else sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
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
        return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}, str(
            bin_file
        )
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
        unused = sorted(n for n in self.weights if n not in self.used and not any(re.fullmatch(p, n) for p in ignore))
        if unused:
            shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
            raise CheckpointError(f"{self.source}: unused weights (unsupported variant?): {shown}")


def take_params(
    model: nnx.Module, reader: WeightReader, hf_name: Callable[[str], str]
) -> dict[str, tuple[str, np.ndarray]]:
    """{our parameter path: (hf name, array)} for every `nnx.Param` of `model`, named by `hf_name(path)`.

    Every `.../kernel` is a torch Linear weight [out, in] in the checkpoint and is transposed to our [in, out].
    """
    values = {}
    for param_path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = "/".join(str(k) for k in param_path)
        array = reader.take(hf_name(name))
        values[name] = (hf_name(name), array.T if name.endswith("/kernel") else array)
    return values


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


# ---------------------------------------------------------------------------------------------
# T5.
# ---------------------------------------------------------------------------------------------

# Our '/'-joined parameter path (regex) -> Hugging Face name. Every `.../kernel` is a torch Linear weight
# [out, in] and is transposed; the embedding table and the relative position bias are stored as we use them.
_T5_NAMES = (
    (r"shared/embedding", r"shared.weight"),
    (r"lm_head/kernel", r"lm_head.weight"),
    (r"(encoder|decoder)/relpos", r"\1.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"(encoder|decoder)/final_norm/scale", r"\1.final_layer_norm.weight"),
    (r"(encoder|decoder)/blocks/(\d+)/self_norm/scale", r"\1.block.\2.layer.0.layer_norm.weight"),
    (r"(encoder|decoder)/blocks/(\d+)/self_attn/(\w)/kernel", r"\1.block.\2.layer.0.SelfAttention.\3.weight"),
    (r"decoder/blocks/(\d+)/cross_norm/scale", r"decoder.block.\1.layer.1.layer_norm.weight"),
    (r"decoder/blocks/(\d+)/cross_attn/(\w)/kernel", r"decoder.block.\1.layer.1.EncDecAttention.\2.weight"),
    (r"encoder/blocks/(\d+)/ffn_norm/scale", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"encoder/blocks/(\d+)/ffn/(\w+)/kernel", r"encoder.block.\1.layer.1.DenseReluDense.\2.weight"),
    (r"decoder/blocks/(\d+)/ffn_norm/scale", r"decoder.block.\1.layer.2.layer_norm.weight"),
    (r"decoder/blocks/(\d+)/ffn/(\w+)/kernel", r"decoder.block.\1.layer.2.DenseReluDense.\2.weight"),
)
# Checkpoint tensors that need no parameter of their own: copies of `shared.weight` (the tied lm_head is one
# when the model is tied; an untied lm_head is used, so never reported), and a cross-attention position bias
# that some old checkpoints carry although T5 never uses it (Hugging Face ignores it too).
_T5_IGNORED = (
    r"(encoder|decoder)\.embed_tokens\.weight",
    r"lm_head\.weight",
    r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",
)


def _t5_hf_name(path: str) -> str:
    for pattern, template in _T5_NAMES:
        match = re.fullmatch(pattern, path)
        if match:
            return match.expand(template)
    raise ValueError(f"T5 parameter {path} has no Hugging Face name in _T5_NAMES")


def load_t5(path: str | os.PathLike, dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype | None = None):
    """Builds our `T5` from a Hugging Face `T5ForConditionalGeneration` folder (or hub id).

    Args:
      path: a folder holding config.json and the weights, or a hub model id.
      dtype: compute dtype of the returned model (float32 or bfloat16).
      param_dtype: storage dtype of its weights; None means `dtype` (a frozen backbone); float32 with a
        bfloat16 `dtype` keeps trained weights exact (ModelTuning).

    Returns:
      `sharpt_jax.models.t5.T5` holding the checkpoint's weights.

    Raises:
      CheckpointError: unsupported config, no weights, or a missing, unused or misshapen tensor.
    """
    from sharpt_jax.models import t5  # Here, not at the top: t5 imports this module for CheckpointError.

    folder = resolve_folder(path)
    try:
        config = t5.T5Config.from_hf(read_config(folder))
    except CheckpointError as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    weights, source = read_weights(folder)
    lm_head, shared = weights.get("lm_head.weight"), weights.get("shared.weight")
    if config.tie_word_embeddings and lm_head is not None and shared is not None:
        # transformers 5 writes tie_word_embeddings=true into every T5 config, also for v1.1 models whose
        # lm_head differs from the embedding; like Hugging Face, a distinct lm_head in the file wins.
        if not np.array_equal(lm_head, shared):
            config = dataclasses.replace(config, tie_word_embeddings=False)
    # Abstract build: the random init of a large model would only be thrown away.
    param_dtype = dtype if param_dtype is None else param_dtype
    model = nnx.eval_shape(lambda: t5.T5(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
    reader = WeightReader(weights, source)
    values = take_params(model, reader, _t5_hf_name)
    reader.check_all_used(ignore=_T5_IGNORED)
    assign_params(model, values, source, param_dtype)
    return model


# ---------------------------------------------------------------------------------------------
# BERT-family instance encoder.
# ---------------------------------------------------------------------------------------------

# Our '/'-joined module path (regex) -> Hugging Face module name (after the model's prefix, see load_encoder).
_ENCODER_MODULES = (
    (r"embeddings/(word|position|token_type)", r"embeddings.\1_embeddings"),
    (r"embeddings/norm", r"embeddings.LayerNorm"),
    (r"layers/(\d+)/(query|key|value)", r"encoder.layer.\1.attention.self.\2"),
    (r"layers/(\d+)/attention_output", r"encoder.layer.\1.attention.output.dense"),
    (r"layers/(\d+)/attention_norm", r"encoder.layer.\1.attention.output.LayerNorm"),
    (r"layers/(\d+)/(intermediate|output)", r"encoder.layer.\1.\2.dense"),
    (r"layers/(\d+)/output_norm", r"encoder.layer.\1.output.LayerNorm"),
    (r"pooler", r"pooler.dense"),
)
# Our leaf name -> Hugging Face's. A `kernel` is a torch Linear weight [out, in] and is transposed.
_ENCODER_LEAVES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}


def _modern_norm_name(match: re.Match) -> str:
    return "LayerNorm.weight" if match[1] == "gamma" else "LayerNorm.bias"


def _encoder_hf_name(path: str) -> str:
    module, leaf = path.rsplit("/", 1)
    for pattern, template in _ENCODER_MODULES:
        match = re.fullmatch(pattern, module)
        if match:
            return f"{match.expand(template)}.{_ENCODER_LEAVES[leaf]}"
    raise ValueError(f"encoder parameter {path} has no Hugging Face name in _ENCODER_MODULES")


def load_encoder(path: str | os.PathLike, pooling: str = "cls", dtype: jnp.dtype = jnp.float32):
    """Builds our `InstanceEncoder` from a Hugging Face BERT or RoBERTa folder (or hub id).

    Reads `BertModel` / `RobertaModel` folders and the task-model folders that wrap them
    (`BertForMaskedLM`, `BertForPreTraining`, `RobertaForMaskedLM`, ...), whose encoder tensors carry a
    `bert.` / `roberta.` prefix; the wrappers' task heads are ignored, and so are the pooler weights unless
    `pooling` is 'pooler'.

    Args:
      path: a folder holding config.json and the weights, or a hub model id.
      pooling: 'cls', 'pooler' or 'mean' (see `sharpt_jax.models.encoder`).
      dtype: storage and compute dtype of the returned encoder (float32 or bfloat16); it returns float32.

    Returns:
      `sharpt_jax.models.encoder.InstanceEncoder` holding the checkpoint's weights.

    Raises:
      CheckpointError: unsupported config, no weights, no pooler weights for pooling='pooler', or a missing,
        unused or misshapen tensor.
    """
    from sharpt_jax.models import encoder  # Here, not at the top: encoder imports this module.

    folder = resolve_folder(path)
    try:
        config = encoder.BertConfig.from_hf(read_config(folder))
    except CheckpointError as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    weights, source = read_weights(folder)
    # Checkpoints converted from Google's TensorFlow BERT (e.g. bert-base-uncased's pytorch_model.bin) call
    # the layer norm parameters gamma and beta; Hugging Face renames them on load, and so do we.
    weights = {re.sub(r"LayerNorm\.(gamma|beta)$", _modern_norm_name, k): v for k, v in weights.items()}
    prefix = f"{config.model_type}."
    if not any(name.startswith(prefix) for name in weights):
        prefix = ""
    if pooling == "pooler" and f"{prefix}pooler.dense.weight" not in weights:
        raise CheckpointError(
            f"{source}: pooling='pooler' needs the pooler weights ({prefix}pooler.dense.*), which this "
            f"checkpoint does not have; use pooling='cls' or 'mean'"
        )
    model = nnx.eval_shape(
        lambda: encoder.InstanceEncoder(config, pooling, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    )
    reader = WeightReader(weights, source)
    values = take_params(model, reader, lambda name: prefix + _encoder_hf_name(name))
    escaped = re.escape(prefix)
    ignore = [rf"{escaped}embeddings\.(position_ids|token_type_ids)"]  # Buffers, not parameters.
    if prefix:
        ignore.append(rf"(?!{escaped}).*")  # Everything outside the prefix belongs to the task heads.
    if pooling != "pooler":
        ignore.append(rf"{escaped}pooler\..*")
    reader.check_all_used(ignore=ignore)
    assign_params(model, values, source, dtype)
    return model
