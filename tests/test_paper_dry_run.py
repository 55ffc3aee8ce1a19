"""The paper's commands chained end to end at T5-base shapes: scripts/paper_dry_run.py (scripts/reproduce.py on 2
local processes, a random T5-base, generated rows of all 25 tasks) fills every row of Tables 1-3."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sharpt_jax.experiments import paper_report as report

ROOT = Path(__file__).resolve().parents[1]
TASK = "cb"  # In all three tables.


# google/t5-base-lm-adapt's config.json (T5 v1.1 LM-adapted, base): the shape the dry run must save.
T5_BASE = dict(
    vocab_size=32128,
    d_model=768,
    d_kv=64,
    d_ff=2048,
    num_layers=12,
    num_decoder_layers=12,
    num_heads=12,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
)


@pytest.mark.slow
def test_tables_1_to_3_at_t5_base_shapes_on_two_processes(tmp_path):
    """Every run of Tables 1-3 for one target task, CB (3 source stages, unscored, and 6 targets, each trained and
    scored: 15 run.py commands, each a 2-process jax.distributed job), then the report: each method row of each
    table has a CB score (meaningless: random weights, 2 steps, batch 4, short lengths; scripts/paper_dry_run.py
    lists what is shrunk). The runs record T5-base's shapes. 11 min 50 s on this project's 2 quiet cores, 87 minutes
    under heavy load (docs/paper.md); every task of the tables (46 runs) would take some 7 hours under that load."""
    command = [sys.executable, "scripts/paper_dry_run.py", "--out", str(tmp_path), "--tasks", TASK]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3 * 3600)
    assert proc.returncode == 0, proc.stderr[-3000:] + (tmp_path / "process1.log").read_text()[-3000:]

    runs = tmp_path / "runs"
    configs = [json.loads(p.read_text()) for p in runs.rglob("config.json")]
    assert len(configs) == 9
    for config in configs:
        assert config["size"] == "base" and config["num_processes"] == 2
    t5 = json.loads((tmp_path / "t5-base-random" / "config.json").read_text())
    assert {k: t5[k] for k in T5_BASE} == T5_BASE

    with open(runs / "report" / "results.csv") as f:
        cells = {(r["setting"], r["size"], r["method"], r["task"]): r for r in csv.DictReader(f)}
    for setting, tasks, methods in report.PAPER_TABLES.values():
        for method, paper in methods.items():
            cell = cells[(setting, "base", method, TASK)]
            assert math.isfinite(float(cell["mean"])) and cell["n"] == "1", cell
            assert float(cell["paper"]) == paper[tasks.index(TASK)], cell
