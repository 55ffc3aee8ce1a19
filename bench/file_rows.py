"""Peak host memory of counting and reading a file-backed task of 1M rows (tasks/files.py), against the file's size.

    python bench/file_rows.py                                   # 1M rows, JSONL and CSV (~2 min on 2 cores)
    python bench/file_rows.py --rows 100000 --json /tmp/rows.json

A task folder is generated in `--folder` (train.jsonl or train.csv of `--rows` rows of about 120 bytes, a short
test file, task.json with a label set), streaming. Each format is then measured in a fresh process, whose peak
resident memory (VmHWM) is reset (`/proc/self/clear_refs`) before each phase, so a phase's peak is its own:
  start    TensorFlow, seqio and the project imported, the task registered (the floor of every phase);
  count    `registry.check_data`: one streaming pass that counts every split and checks every row;
  read     every training row through the task's seqio source (the tf.data pipeline training reads), with the
           validation split carved from train by the seeded mask (1 byte per row).
A reader that held the file would peak at least the file's size above the floor; the table gives each phase's
peak above the floor beside the file's size.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMATS = ("jsonl", "csv")
WORDS = "the a film story cast music plot scene actor ending dull warm funny slow clever long brilliant".split()


def make_folder(folder: Path, fmt: str, rows: int) -> Path:
    """Writes a sentiment-like task folder of `rows` training rows in `fmt`, one row at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.json").write_text(
        json.dumps({"input": "review: {text}", "target": "label", "labels": ["no", "yes"]})
    )
    with open(folder / f"train.{fmt}", "w") as f, open(folder / f"test.{fmt}", "w") as test:
        if fmt == "csv":
            f.write("text,label\n")
            test.write("text,label\ngood,1\n")
        else:
            test.write('{"text": "good", "label": 1}\n')
        for i in range(rows):
            text = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(14)) + f" {i}"
            f.write(f"{text},{i % 2}\n" if fmt == "csv" else json.dumps({"text": text, "label": i % 2}) + "\n")
    return folder


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Resets VmHWM to the current resident size.


def measure(folder: Path) -> dict:
    """The phases of the module docstring in this process: {phase: {"peak_mb", "seconds"}} and the row counts."""
    from tasks import files, registry

    start = time.perf_counter()
    task = files.register(str(folder))
    out = {"start": {"peak_mb": _peak_mb(), "seconds": time.perf_counter() - start}}
    _reset_peak()
    start = time.perf_counter()
    origins = registry.check_data([task])[task.removeprefix(registry.PREFIX)]
    out["count"] = {"peak_mb": _peak_mb(), "seconds": time.perf_counter() - start}
    _reset_peak()
    start = time.perf_counter()
    import seqio

    ds = seqio.get_mixture_or_task(task).source.get_dataset("train")
    rows = int(ds.reduce(0, lambda n, _: n + 1))
    out["read"] = {"peak_mb": _peak_mb(), "seconds": time.perf_counter() - start, "rows": rows}
    out["origins"] = origins
    return out


def report(record: dict) -> None:
    print(f"{'format':<7}{'rows':>10}{'file MB':>9}{'phase':>7}{'peak MB':>9}{'above start':>13}{'seconds':>9}")
    for fmt, result in record["formats"].items():
        floor = result["start"]["peak_mb"]
        for phase in ("start", "count", "read"):
            peak = result[phase]["peak_mb"]
            print(
                f"{fmt:<7}{record['rows']:>10,}{result['file_mb']:>9.1f}{phase:>7}{peak:>9.1f}"
                f"{peak - floor:>13.1f}{result[phase]['seconds']:>9.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/sharpt_file_rows"))
    parser.add_argument("--json", type=Path, help="where to write the record")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # A child: measure this folder.
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    record = {"command": " ".join(["python", "bench/file_rows.py", *sys.argv[1:]]), "rows": args.rows, "formats": {}}
    for fmt in FORMATS:
        folder = args.folder / fmt
        if not (folder / f"train.{fmt}").is_file() or sum(1 for _ in open(folder / f"train.{fmt}")) < args.rows:
            make_folder(folder, fmt, args.rows)
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result["file_mb"] = (folder / f"train.{fmt}").stat().st_size / 2**20
        record["formats"][fmt] = result
    report(record)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
