"""Hugging Face model folders -> NNX modules.

`sharpt_jax.hf_weights` reads a folder's weights (safetensors, Flax msgpack or PyTorch, in that order of
preference; hub ids, HF_HOME and offline use; why T5X checkpoints are not read) under Hugging Face's PyTorch names
and layouts. Each loader here maps those names onto our NNX parameter paths (a stacked layer parameter onto one
tensor per layer); every model parameter must be set from checkpoint tensors of the right shape and every
checkpoint tensor must be used, otherwise `CheckpointError` names the file and the parameter.

Loading never holds a model twice: the module is built abstractly (`nnx.eval_shape`), every name and
shape is checked from the safetensors headers alone, then each parameter is read (plain file reads)
and placed straight into its sharding on the device mesh, one at a time (`load_params`). Loading a
T5-large-shaped checkpoint onto 8 CPU devices peaks at 1.17x the checkpoint's bytes of host memory,
the placed weights included (`bench/load_memory.py`).
"""

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sharpt_jax import sharding
from sharpt_jax.hf_weights import CheckpointError, read_config, read_weights, resolve_folder
from sharpt_jax.models import encoder, t5

# ---------------------------------------------------------------------------------------------
# Assigning checkpoint tensors to NNX parameters.
# ---------------------------------------------------------------------------------------------


class WeightReader:
    """Hands out checkpoint tensors (unread: see `read_weights`) by Hugging Face name; each may be taken once, and
    all must be."""

    def __init__(self, weights: dict, source: str):
        self.weights, self.source, self.used = weights, source, set()

    def take(self, name: str):
        if name not in self.weights:
            raise CheckpointError(f"{self.source}: missing weight {name!r}")
        if name in self.used:
            raise ValueError(f"{name!r} is mapped onto two parameters (a bug in the loader's name table)")
        self.used.add(name)
        return self.weights[name]

    def check_all_used(self, ignore: Iterable[str] = ()) -> None:
        """Raises if a checkpoint tensor was not used, except names matching an `ignore` regex."""
        unused = sorted(n for n in self.weights if n not in self.used and not any(re.fullmatch(p, n) for p in ignore))
        if unused:
            shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
            raise CheckpointError(f"{self.source}: unused weights (unsupported variant?): {shown}")


# The Hugging Face name(s) of one of our parameters: one tensor, or a list of per-layer tensors that are stacked
# on the parameter's leading 'layers' axis.
HFNames = str | list[str]


def check_shapes(path: str, names: HFNames, tensors: list, shape: tuple[int, ...], source: str) -> None:
    """CheckpointError naming the tensor at fault unless the `tensors` of `names` make our parameter `path` of
    `shape` (per layer for a stacked parameter; a `.../kernel` is a torch Linear weight [out, in], our [in, out])."""
    stacked = isinstance(names, list)
    expected = shape[1:] if stacked else shape
    for name, tensor in zip(names if stacked else [names], tensors, strict=True):
        ours = tuple(reversed(tensor.shape)) if path.endswith("/kernel") else tuple(tensor.shape)
        if ours != expected:
            raise CheckpointError(
                f"{source}: shape mismatch for {name!r} -> {path}: checkpoint {tuple(tensor.shape)}"
                f"{' (transposed: ' + str(ours) + ')' if path.endswith('/kernel') else ''}, config expects "
                f"{expected}" + (" per layer" if stacked else "")
            )


def read_param(path: str, tensors: list, shape: tuple[int, ...], stacked: bool) -> np.ndarray:
    """The value of our parameter `path` of `shape` from its checkpoint tensors, read now (one, or one per layer
    written into its slot of the stacked value), transposed for a `.../kernel`."""
    transpose = path.endswith("/kernel")
    if not stacked:
        array = np.asarray(tensors[0])
        return array.T if transpose else array
    value = np.empty(shape, tensors[0].dtype)
    for i, tensor in enumerate(tensors):
        array = np.asarray(tensor)
        value[i] = array.T if transpose else array
    return value


def load_params(
    model: nnx.Module,
    reader: WeightReader,
    hf_names: Callable[[str], HFNames],
    dtype: jnp.dtype,
    mesh: jax.sharding.Mesh | None,
    ignore: Iterable[str] = (),
) -> None:
    """Sets every `nnx.Param` of the abstract `model` (`nnx.eval_shape`) from its checkpoint tensors, in place.

    Every name and shape is checked before anything is read. Then the parameters are read one at a time, each
    placed straight into its sharding on `mesh` (`sharding.state_shardings`; every device gets only its shard,
    cast to `dtype`) and dropped from host memory, so loading holds at most one parameter besides the placed
    weights. `mesh` None places everything on this process's first device.
    """
    if mesh is None:
        mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1), sharding.MESH_AXES)
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    placement = dict(nnx.to_flat_state(sharding.state_shardings(state, mesh)))
    sources = {}
    for param_path, variable in flat.items():
        path = "/".join(str(k) for k in param_path)
        names = hf_names(path)
        tensors = [reader.take(name) for name in (names if isinstance(names, list) else [names])]
        check_shapes(path, names, tensors, tuple(variable.shape), reader.source)
        sources[param_path] = (path, tensors, isinstance(names, list))
    reader.check_all_used(ignore)
    for param_path, variable in flat.items():
        path, tensors, stacked = sources.pop(param_path)
        value = read_param(path, tensors, tuple(variable.shape), stacked)
        array = jax.make_array_from_callback(
            value.shape, placement[param_path].get_value(), lambda index, value=value: value[index].astype(dtype)
        )
        flat[param_path] = variable.replace(array)
        del value
    nnx.update(model, nnx.from_flat_state(flat))


# ---------------------------------------------------------------------------------------------
# T5.
# ---------------------------------------------------------------------------------------------

# Our '/'-joined parameter path (regex) -> Hugging Face name. Every `.../kernel` is a torch Linear weight
# [out, in] and is transposed; the embedding table and the relative position bias are stored as we use them.
# A name with {i} is a per-layer tensor: the parameter stacks layers i = 0, 1, ... on its leading 'layers' axis.
_T5_NAMES = (
    (r"shared/embedding", r"shared.weight"),
    (r"lm_head/kernel", r"lm_head.weight"),
    (r"(encoder|decoder)/relpos", r"\1.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"(encoder|decoder)/final_norm/scale", r"\1.final_layer_norm.weight"),
    (r"(encoder|decoder)/blocks/self_norm/scale", r"\1.block.{i}.layer.0.layer_norm.weight"),
    (r"(encoder|decoder)/blocks/self_attn/(\w)/kernel", r"\1.block.{i}.layer.0.SelfAttention.\2.weight"),
    (r"decoder/blocks/cross_norm/scale", r"decoder.block.{i}.layer.1.layer_norm.weight"),
    (r"decoder/blocks/cross_attn/(\w)/kernel", r"decoder.block.{i}.layer.1.EncDecAttention.\1.weight"),
    (r"encoder/blocks/ffn_norm/scale", r"encoder.block.{i}.layer.1.layer_norm.weight"),
    (r"encoder/blocks/ffn/(\w+)/kernel", r"encoder.block.{i}.layer.1.DenseReluDense.\1.weight"),
    (r"decoder/blocks/ffn_norm/scale", r"decoder.block.{i}.layer.2.layer_norm.weight"),
    (r"decoder/blocks/ffn/(\w+)/kernel", r"decoder.block.{i}.layer.2.DenseReluDense.\1.weight"),
)
# Checkpoint tensors that need no parameter of their own: copies of `shared.weight` (the tied lm_head is one
# when the model is tied; an untied lm_head is used, so never reported), and a cross-attention position bias
# that some old checkpoints carry although T5 never uses it (Hugging Face ignores it too).
_T5_IGNORED = (
    r"(encoder|decoder)\.embed_tokens\.weight",
    r"lm_head\.weight",
    r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",
)


def _t5_hf_names(path: str, config) -> HFNames:
    """The Hugging Face name(s) of our T5 parameter `path` (see `_T5_NAMES`) for a model of `config`."""
    for pattern, template in _T5_NAMES:
        match = re.fullmatch(pattern, path)
        if match:
            name = match.expand(template)
            if "{i}" not in name:
                return name
            num_layers = config.num_decoder_layers if path.startswith("decoder/") else config.num_layers
            return [name.format(i=i) for i in range(num_layers)]
    raise ValueError(f"T5 parameter {path} has no Hugging Face name in _T5_NAMES")


def load_t5(
    path: str | os.PathLike,
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype | None = None,
    scan_layers: bool = True,
    remat: bool = False,
    mesh: jax.sharding.Mesh | None = None,
):
    """Builds our `T5` from a Hugging Face `T5ForConditionalGeneration` folder (or hub id).

    The model is built abstractly and each weight is read and placed straight into its sharding on `mesh` (see
    `load_params`): a model larger than one device, or than twice the host's memory, loads.

    Args:
      path: a folder holding config.json and the weights, or a hub model id.
      dtype: compute dtype of the returned model (float32 or bfloat16).
      param_dtype: storage dtype of its weights; None means `dtype` (a frozen backbone); float32 with a
        bfloat16 `dtype` keeps trained weights exact (ModelTuning).
      scan_layers, remat: how the model runs its layers (`sharpt_jax.models.t5`); the weights are the same.
      mesh: the device mesh to place the weights on (`sharpt_jax.sharding`); None: this process's first device.

    Returns:
      `sharpt_jax.models.t5.T5` holding the checkpoint's weights.

    Raises:
      CheckpointError: unsupported config, no weights, or a missing, unused or misshapen tensor.
    """
    folder = resolve_folder(path)
    try:
        config = t5.T5Config.from_hf(read_config(folder))
    except ValueError as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    weights, source = read_weights(folder)
    lm_head, shared = weights.get("lm_head.weight"), weights.get("shared.weight")
    if config.tie_word_embeddings and lm_head is not None and shared is not None:
        # transformers 5 writes tie_word_embeddings=true into every T5 config, also for v1.1 models whose
        # lm_head differs from the embedding; like Hugging Face, a distinct lm_head in the file wins.
        if not np.array_equal(np.asarray(lm_head), np.asarray(shared)):
            config = dataclasses.replace(config, tie_word_embeddings=False)
    # Abstract build: the random init of a large model would only be thrown away.
    param_dtype = dtype if param_dtype is None else param_dtype
    model = nnx.eval_shape(
        lambda: t5.T5(
            config, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers, remat=remat, rngs=nnx.Rngs(0)
        )
    )
    hf_names = functools.partial(_t5_hf_names, config=config)
    load_params(model, WeightReader(weights, source), hf_names, param_dtype, mesh, ignore=_T5_IGNORED)
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


def load_encoder(
    path: str | os.PathLike,
    pooling: str = "cls",
    dtype: jnp.dtype = jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
):
    """Builds our `InstanceEncoder` from a Hugging Face BERT or RoBERTa folder (or hub id).

    Reads `BertModel` / `RobertaModel` folders and the task-model folders that wrap them
    (`BertForMaskedLM`, `BertForPreTraining`, `RobertaForMaskedLM`, ...), whose encoder tensors carry a
    `bert.` / `roberta.` prefix; the wrappers' task heads are ignored, and so are the pooler weights unless
    `pooling` is 'pooler'.

    Args:
      path: a folder holding config.json and the weights, or a hub model id.
      pooling: 'cls', 'pooler' or 'mean' (see `sharpt_jax.models.encoder`).
      dtype: storage and compute dtype of the returned encoder (float32 or bfloat16); it returns float32.
      mesh: the device mesh to place the weights on, each read and placed into its sharding (`load_params`);
        None: this process's first device.

    Returns:
      `sharpt_jax.models.encoder.InstanceEncoder` holding the checkpoint's weights.

    Raises:
      CheckpointError: unsupported config, no weights, no pooler weights for pooling='pooler', or a missing,
        unused or misshapen tensor.
    """
    folder = resolve_folder(path)
    try:
        config = encoder.BertConfig.from_hf(read_config(folder))
    except ValueError as err:
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
    escaped = re.escape(prefix)
    ignore = [rf"{escaped}embeddings\.(position_ids|token_type_ids)"]  # Buffers, not parameters.
    if prefix:
        ignore.append(rf"(?!{escaped}).*")  # Everything outside the prefix belongs to the task heads.
    if pooling != "pooler":
        ignore.append(rf"{escaped}pooler\..*")
    load_params(model, WeightReader(weights, source), lambda name: prefix + _encoder_hf_name(name), dtype, mesh, ignore)
    return model
