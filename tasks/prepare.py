"""Prepares the rows of every task: the pinned TFDS builders, and the data folder's CxC and CR files.

    python -m tasks.prepare tfds [--tasks rte wic ...] [--data_dir TFDS_DIR] [--dry_run]
    python -m tasks.prepare cxc --src sts_val.csv sts_test.csv dataset_coco.json --out DATA_DIR
    python -m tasks.prepare cr --src SentEval-CR/ --out DATA_DIR
    python -m tasks.prepare check [--tasks rte cxc ...] [--data_dir DATA_DIR]

`tfds` downloads and prepares the pinned builders of the tasks (all TFDS-backed tasks by default; this needs
network access) into TFDS's data folder ($TFDS_DATA_DIR, else ~/tensorflow_datasets), where runs read them; a
builder already prepared is skipped, and `--dry_run` lists the builders and whether each is prepared. `check`
lists, per task, where each official split's rows come from (a data file, with its rows checked, or a
prepared TFDS builder) or what is missing and the command that prepares it; its exit status is 0 when every
task can be read, else 1. Runs make the same check for their tasks before building models.

CxC and CR are in no TFDS release: `cxc` and `cr` turn their public release files into the data folder.

`--src` takes files and/or folders (folders are searched recursively). What it writes, one JSON object per
line, is the canonical raw schema that `tasks.configure(data_dir=DATA_DIR)` reads:

    DATA_DIR/
      cxc/validation.jsonl   {"sentence1": str, "sentence2": str, "score": float in [0, 5]}  <- sts_val.csv
      cxc/test.jsonl         same fields                                                     <- sts_test.csv
      cr/train.jsonl         {"sentence": str, "label": 0 (negative) | 1 (positive)}         <- train split
      cr/test.jsonl          same fields                                                     <- test split

CxC (google-research-datasets/Crisscrossed-Captions, files `data/sts_val.csv` and `data/sts_test.csv`): CSV
with the header `caption1,caption2,agg_score,sampling_method`, one caption pair per row, e.g.
`COCO_val2014:sentid:190268,COCO_val2014:sentid:315773,1.24,c2c_isim`; `agg_score` is the aggregated STS
rating in [0, 5]. The number after `sentid:` is the sentence id of the MS-COCO Karpathy split (the release's
setup.py joins `int(id.split(":")[-1])` with `images[].sentids`), so the caption text comes from that split's
`dataset_coco.json`: `{"images": [{"sentences": [{"sentid": int, "raw": str, ...}], ...}], ...}`.

CR (Hugging Face dataset SetFit/SentEval-CR): its main branch ships `train.jsonl` and `test.jsonl` whose rows
hold `text` and `label` (0 negative, 1 positive); the hub's parquet export of the same splits
(`default/train/0000.parquet`, `default/test/0000.parquet`; also `train.parquet` or `train-*.parquet`) is
read too, with pyarrow. JSONL is used when both are present.
"""

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

CXC_SPLITS = {"validation": "sts_val.csv", "test": "sts_test.csv"}
CXC_CAPTIONS = "dataset_coco.json"
CXC_COLUMNS = ("caption1", "caption2", "agg_score")
CR_SPLITS = ("train", "test")
CR_FIELDS = ("text", "label")

_SENTID = re.compile(r"sentid:(\d+)$")


class PrepareError(ValueError):
    """A missing or malformed release file, with the file and the reason."""


# ---------------------------------------------------------------------------------------------
# Finding and writing files.
# ---------------------------------------------------------------------------------------------


def _collect(srcs: Iterable[str | os.PathLike]) -> list[Path]:
    """Returns the files named in `srcs`, with the files under each named folder."""
    files = []
    for src in map(Path, srcs):
        if src.is_dir():
            files.extend(sorted(p for p in src.rglob("*") if p.is_file()))
        elif src.is_file():
            files.append(src)
        else:
            raise PrepareError(f"{src}: no such file or folder")
    return files


def _one(files: Sequence[Path], name: str) -> Path:
    """Returns the single file called `name` among `files`."""
    found = sorted({f for f in files if f.name == name})
    if not found:
        raise PrepareError(f"{name}: not found in --src (give the file or a folder holding it)")
    if len(found) > 1:
        raise PrepareError(f"{name}: several files of that name in --src ({', '.join(map(str, found))})")
    return found[0]


def _write_splits(splits: dict[str, Iterable[dict]], folder: Path) -> dict[str, int]:
    """Writes `<folder>/<split>.jsonl` for every split; returns {split: number of rows}.

    Every split is read and checked before anything is written, so a bad release file leaves no output.
    """
    splits = {split: list(rows) for split, rows in splits.items()}
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        path = folder / f"{split}.jsonl"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        os.replace(tmp, path)  # Readers never see a half-written file.
    return {split: len(rows) for split, rows in splits.items()}


# ---------------------------------------------------------------------------------------------
# CxC.
# ---------------------------------------------------------------------------------------------


def _read_captions(path: Path) -> dict[int, str]:
    """{Karpathy sentid: caption text} from dataset_coco.json."""
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
        return {int(s["sentid"]): " ".join(s["raw"].split()) for image in images for s in image["sentences"]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PrepareError(
            f"{path}: not a Karpathy-split captions file (expected images[].sentences[] with sentid and raw; "
            f"{type(err).__name__}: {err})"
        ) from err


def _cxc_rows(path: Path, captions: dict[int, str]) -> Iterator[dict]:
    """Yields the canonical rows of one CxC STS csv file, in file order."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CXC_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise PrepareError(f"{path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            sentences = []
            for column in CXC_COLUMNS[:2]:
                match = _SENTID.search(row[column] or "")
                if not match:
                    raise PrepareError(
                        f"{path}:{line}: {column}={row[column]!r} is not a caption id like COCO_val2014:sentid:123"
                    )
                sentid = int(match.group(1))
                if sentid not in captions:
                    raise PrepareError(
                        f"{path}:{line}: sentid {sentid} is not in the captions file "
                        f"({CXC_CAPTIONS} of the Karpathy split is needed)"
                    )
                sentences.append(captions[sentid])
            try:
                score = float(row["agg_score"])
            except (TypeError, ValueError):
                score = math.nan
            if not 0 <= score <= 5:
                raise PrepareError(f"{path}:{line}: agg_score={row['agg_score']!r} is not a number in [0, 5]")
            yield {"sentence1": sentences[0], "sentence2": sentences[1], "score": score}


def prepare_cxc(srcs: Iterable[str | os.PathLike], out: str | os.PathLike) -> dict[str, int]:
    """Writes `<out>/cxc/{validation,test}.jsonl`; returns {split: number of rows}."""
    files = _collect(srcs)
    csvs = {split: _one(files, name) for split, name in CXC_SPLITS.items()}
    captions = _read_captions(_one(files, CXC_CAPTIONS))
    rows = {split: _cxc_rows(path, captions) for split, path in csvs.items()}
    return _write_splits(rows, Path(out) / "cxc")


# ---------------------------------------------------------------------------------------------
# CR.
# ---------------------------------------------------------------------------------------------


def _cr_files(files: Sequence[Path], split: str) -> list[Path]:
    """The JSONL file of `split`, else its parquet shards (named by split, or in a folder named by it)."""
    jsonl = [f for f in files if f.name == f"{split}.jsonl"]
    if jsonl:
        return [_one(jsonl, f"{split}.jsonl")]
    parquet = [
        f
        for f in files
        if f.suffix == ".parquet" and (f.stem == split or f.stem.startswith(f"{split}-") or f.parent.name == split)
    ]
    if not parquet:
        raise PrepareError(f"CR split {split!r}: neither {split}.jsonl nor {split} parquet files found in --src")
    return sorted(parquet)


def _read_records(path: Path) -> Iterator[dict]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
        return
    try:
        import pyarrow.parquet as pq  # Only parquet input needs it.
    except ImportError as err:
        raise PrepareError(
            f"{path}: reading parquet needs pyarrow (pip install pyarrow), or give the release's .jsonl files"
        ) from err
    yield from pq.read_table(path).to_pylist()


def _cr_rows(paths: Sequence[Path]) -> Iterator[dict]:
    for path in paths:
        for number, record in enumerate(_read_records(path), start=1):
            missing = [k for k in CR_FIELDS if k not in record]
            if missing:
                raise PrepareError(
                    f"{path}: row {number} lacks field(s) {', '.join(missing)} (has {', '.join(record)})"
                )
            if record["label"] not in (0, 1) or isinstance(record["label"], bool):
                raise PrepareError(f"{path}: row {number} has label {record['label']!r}, expected 0 or 1")
            yield {"sentence": record["text"], "label": int(record["label"])}


def prepare_cr(srcs: Iterable[str | os.PathLike], out: str | os.PathLike) -> dict[str, int]:
    """Writes `<out>/cr/{train,test}.jsonl`; returns {split: number of rows}."""
    files = _collect(srcs)
    paths = {split: _cr_files(files, split) for split in CR_SPLITS}
    return _write_splits({split: _cr_rows(p) for split, p in paths.items()}, Path(out) / "cr")


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# TFDS builders, and what a run can read.
# ---------------------------------------------------------------------------------------------


def _task_names(names: Sequence[str] | None) -> list[str]:
    """The registered tasks named (all when None); PrepareError for an unknown name."""
    import tasks  # Registers the tasks (TensorFlow, seqio): only the subcommands that read them pay for it.

    unknown = [n for n in names or () if n not in tasks.names()]
    if unknown:
        raise PrepareError(f"unknown task {', '.join(unknown)}; tasks are {', '.join(tasks.names())}")
    return list(names or tasks.names())


def tfds_builders(names: Sequence[str] | None = None) -> list[str]:
    """The pinned TFDS builders ("glue/rte:2.0.0") of the tasks `names` (all when None), each once, in task order."""
    from tasks import registry

    builders = [b for name in _task_names(names) for b in registry.raw_data(name).tfds_names]
    return list(dict.fromkeys(builders))


def prepare_tfds(names: Sequence[str] | None, data_dir: str | None, dry_run: bool) -> None:
    """Downloads and prepares the builders of `names` into `data_dir` (TFDS's own folder when None), printing one
    line per builder; a builder already prepared there is skipped. PrepareError at the first that fails."""
    import tensorflow_datasets as tfds

    from tasks import sources

    folder = Path(data_dir).expanduser() if data_dir else sources.tfds_data_dir()
    for name in tfds_builders(names):
        target = sources.tfds_folder(name, folder)
        if sources.tfds_prepared(name, folder):
            print(f"{name}: prepared in {target}")
            continue
        if dry_run:
            print(f"{name}: to prepare into {target}")
            continue
        try:
            tfds.builder(name, data_dir=folder).download_and_prepare()
        except ModuleNotFoundError as err:
            raise PrepareError(f"{name}: TFDS needs the Python package {err.name} (pip install {err.name})") from err
        except Exception as err:  # Offline, a moved URL, a full disk: one line naming the builder.
            reason = (str(err).splitlines() or [""])[0][:300]
            raise PrepareError(
                f"{name}: download_and_prepare failed ({type(err).__name__}: {reason}); this needs network access "
                "to the dataset's host"
            ) from err
        print(f"{name}: prepared in {target}")
    if folder != sources.tfds_data_dir():
        print(f"runs read TFDS from {sources.tfds_data_dir()}: set TFDS_DATA_DIR={folder} for them to read these")


def check(names: Sequence[str] | None, data_dir: str | None) -> bool:
    """Prints, per task, where its rows come from or what is missing; returns whether every task can be read."""
    from tasks import registry, sources

    registry.configure(data_dir=data_dir)
    ok = True
    for name in _task_names(names):
        try:
            origins = registry.check_data([name])[name]
            print(f"{name}: ok: " + "; ".join(f"{split} <- {where}" for split, where in origins.items()))
        except sources.DataError as err:
            print(f"{name}: MISSING: {err}")
            ok = False
    return ok


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------

_PREPARE = {"cxc": prepare_cxc, "cr": prepare_cr}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.prepare", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tfds_cmd = commands.add_parser("tfds", help="download and prepare the pinned TFDS builders (needs network)")
    tfds_cmd.add_argument("--tasks", nargs="+", help="only these tasks' builders (default: every task's)")
    tfds_cmd.add_argument(
        "--data_dir", help="TFDS folder to prepare into (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    tfds_cmd.add_argument("--dry_run", action="store_true", help="list the builders and whether each is prepared")
    check_cmd = commands.add_parser("check", help="list where each task's rows come from; exit 1 if any is missing")
    check_cmd.add_argument("--tasks", nargs="+", help="only these tasks (default: every task)")
    check_cmd.add_argument("--data_dir", help="the data folder of <task>/<split>.jsonl files (--config.data_dir)")
    for name in _PREPARE:
        command = commands.add_parser(name, help=f"write DATA_DIR/{name}/*.jsonl from the release files")
        command.add_argument("--src", nargs="+", required=True, help="release files and/or folders holding them")
        command.add_argument("--out", required=True, help="the data folder (--config.data_dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "tfds":
            prepare_tfds(args.tasks, args.data_dir, args.dry_run)
        elif args.command == "check":
            sys.exit(0 if check(args.tasks, args.data_dir) else 1)
        else:
            for split, count in _PREPARE[args.command](args.src, args.out).items():
                print(f"{Path(args.out) / args.command / split}.jsonl: {count} rows")
    except PrepareError as err:
        sys.exit(f"tasks.prepare {args.command}: {err}")


if __name__ == "__main__":
    main()
