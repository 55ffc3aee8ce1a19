"""Peak host memory of loading a frozen T5 onto a device mesh, against the checkpoint's size.

    python bench/load_memory.py                        # T5-large shape, 8 CPU devices, mesh 1,8 (~3 min, 2 cores)
    python bench/load_memory.py --size quick --mesh 2,4 --json /tmp/load.json

A random checkpoint of the shape (`bench/shapes.py`; T5 v1.1 names and shapes from Hugging Face's own model on
the meta device, float32 safetensors as the hub's LM-adapted checkpoints are) is written once to `--folder`. Each
measurement then runs in a fresh process with `--xla_force_host_platform_device_count=8`, so that its peak
resident memory (VmHWM, reset just before the load) belongs to the load alone: on CPU the "devices" live in host
memory, so the peak counts the placed weights themselves plus whatever the loader held besides them.
Two loaders are measured:
  sharded   `hf.load_t5(folder, mesh=mesh)`: abstract model, then each weight read and placed straight into its
            sharding (the path run.py takes)
  one copy  `hf.load_t5(folder)` then `jax.device_put` onto the mesh's shardings (the whole model on one device
            first, as the loader did before)
The table gives both peaks over the checkpoint's bytes (the sharded loader's bar on a `model`-parallel mesh is about
1.3x) and what each loader held beyond the placed weights. A mesh with a `data` axis holds a replica per data
index, so its placed bytes are that many times the checkpoint's.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOADERS = ("sharded", "one copy")


def make_checkpoint(size: str, folder: Path) -> None:
    """Writes a random float32 Hugging Face T5 folder (config.json + model.safetensors) of `size`'s shape."""
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import save_file

    from bench import shapes

    config = shapes.hf_t5_config(shapes.T5_SHAPES[size])
    with torch.device("meta"):  # Names and shapes only: no 3 GB of torch init.
        names = {k: tuple(v.shape) for k, v in transformers.T5ForConditionalGeneration(config).state_dict().items()}
    names.pop("encoder.embed_tokens.weight", None)  # Copies of shared.weight, as save_pretrained leaves them out.
    names.pop("decoder.embed_tokens.weight", None)
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(shape, dtype=np.float32) * 0.05 for k, shape in names.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)


def measure(folder: Path, loader: str, mesh_shape: str) -> dict:
    """(In a fresh process.) Loads `folder` with `loader`; returns bytes and peak resident memory."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sharpt_jax import hf, sharding

    mesh = sharding.make_mesh(mesh_shape)
    jax.block_until_ready(jnp.zeros(()))  # Backend started before the baseline.
    Path("/proc/self/clear_refs").write_text("5")  # Resets VmHWM to the current resident size.
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    if loader == "sharded":
        model = hf.load_t5(folder, dtype=jnp.float32, mesh=mesh)
    else:
        model = hf.load_t5(folder, dtype=jnp.float32)
        state = nnx.state(model)
        nnx.update(model, jax.device_put(state, sharding.state_shardings(state, mesh)))
    state = nnx.state(model, nnx.Param)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    placed = sum(shard.data.nbytes for leaf in jax.tree.leaves(state) for shard in leaf.addressable_shards)
    return {
        "loader": loader,
        "mesh": dict(mesh.shape),
        "seconds": seconds,
        "placed_bytes": placed,
        "peak_increase_bytes": _status_bytes("VmHWM") - before,
    }


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="large", help="a bench/shapes.py T5 shape (default large)")
    parser.add_argument("--mesh", default="1,8", help="data,model over 8 CPU devices (default 1,8)")
    parser.add_argument("--folder", type=Path, help="checkpoint folder (default /tmp/sharpt-load-<size>)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # A loader's name: measure it in this process.
    args = parser.parse_args()
    folder = args.folder or Path(f"/tmp/sharpt-load-{args.size}")
    if args.child:
        print(json.dumps(measure(folder, args.child, args.mesh)))
        return
    if not (folder / "model.safetensors").exists():
        print(f"writing a random {args.size}-shaped checkpoint to {folder} ...", flush=True)
        make_checkpoint(args.size, folder)
    checkpoint_bytes = (folder / "model.safetensors").stat().st_size
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    for loader in LOADERS:
        cmd = [sys.executable, __file__, f"--size={args.size}", f"--mesh={args.mesh}", f"--folder={folder}"]
        out = subprocess.run([*cmd, f"--child={loader}"], env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gib = 2.0**30
    print(f"\nT5 {args.size} shape, {checkpoint_bytes / gib:.2f} GiB float32 checkpoint, mesh {rows[0]['mesh']}:\n")
    print(
        "| loader | placed on devices GiB | peak host memory increase GiB | over checkpoint bytes "
        "| beyond the placed weights GiB | seconds |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        peak, placed = row["peak_increase_bytes"], row["placed_bytes"]
        print(
            f"| {row['loader']} | {placed / gib:.2f} | {peak / gib:.2f} | {peak / checkpoint_bytes:.2f}x | "
            f"{(peak - placed) / gib:.2f} | {row['seconds']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "checkpoint_bytes": checkpoint_bytes, "rows": rows}))


if __name__ == "__main__":
    main()
