"""Converts a Hugging Face model folder's weights to safetensors once, so that runs need neither torch nor msgpack.

    python scripts/convert_weights.py SRC_DIR DST_DIR

SRC_DIR holds config.json and `flax_model.msgpack` or `pytorch_model.bin` (sharded or not; a .bin needs torch:
`pip install torch --index-url https://download.pytorch.org/whl/cpu`); a hub id works too where the network
allows. DST_DIR gets `model.safetensors` with Hugging Face's PyTorch names and layouts (what `sharpt_jax.hf`
and transformers read), and a copy of every other file of SRC_DIR (config.json, spiece.model, tokenizer files,
vocab.txt, README.md), so `--config.t5=DST_DIR` replaces `--config.t5=SRC_DIR`. The tensors are written one at a
time, in the dtypes of the file read (bfloat16 stays bfloat16); msgpack and PyTorch files are read whole, so
converting T5-XXL (45 GB in float32) needs that much host memory once. The output is written to a temporary
name and renamed when complete.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # The repository root, for `sharpt_jax`.

from sharpt_jax import hf_weights  # noqa: E402

# The weights files of the formats hf reads and of TensorFlow; none is copied.
WEIGHT_SUFFIXES = (".safetensors", ".msgpack", ".bin", ".h5", ".index.json")


def convert(src: str, dst: Path) -> Path:
    """Writes `dst`/model.safetensors from the weights of `src` (a folder or hub id) and copies its other files;
    returns the file written. CheckpointError for a folder without weights, or with weights already in
    safetensors, and when `dst` already holds model.safetensors."""
    folder = hf_weights.resolve_folder(src)
    kind, files = hf_weights.weight_files(folder)
    if kind == "safetensors":
        raise hf_weights.CheckpointError(
            f"{folder}: its weights are safetensors already ({files[0].name}); use it as it is"
        )
    out = dst / "model.safetensors"
    if out.exists():
        raise hf_weights.CheckpointError(f"{out} exists; give an empty DST_DIR")
    weights, source = hf_weights.read_weights(folder)
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(path, dst / path.name)
    tmp = out.with_name(out.name + ".tmp")
    hf_weights.write_safetensors(weights, tmp)
    os.replace(tmp, out)
    print(f"{out}: {len(weights)} tensors from {source}")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "src", help="a Hugging Face model folder (or hub id) with flax_model.msgpack or pytorch_model.bin"
    )
    parser.add_argument("dst", type=Path, help="the folder to write model.safetensors and the copied files into")
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.dst)
    except hf_weights.CheckpointError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
