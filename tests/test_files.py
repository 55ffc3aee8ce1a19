"""File-backed tasks (tasks/files.py): folders of JSONL / CSV / TSV files read, checked, split, mixed and refused
with one line, against hand-made files; the end-to-end runs are in test_files_runs.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the skills world, mixed below)
from configs import common
from sharpt_jax import build, train
from tasks import files, metrics, registry
from tasks.row_files import DataError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sentiment"
SENTIMENT = {"input": "review: {text}", "target": "label", "labels": ["negative", "positive"]}


def write_folder(folder: Path, spec: dict | None = None, **split_files: str | bytes) -> Path:
    """A task folder: `split_files` {"train_jsonl": text} -> train.jsonl, and task.json from `spec`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in split_files.items():
        path = folder / name.replace("_", ".", 1)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if spec is not None:
        (folder / "task.json").write_text(json.dumps(spec))
    return folder


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def rows_of(task: str, split: str, formatted: bool = False) -> list[dict]:
    """The split's raw rows as strings, or with `formatted` its {"inputs", "targets"} (the task's first
    preprocessor)."""
    registered = seqio.get_mixture_or_task(task)
    ds = registered.source.get_dataset(split)
    ds = registered.preprocessors[0](ds) if formatted else ds
    return [{k: v.decode() for k, v in row.items()} for row in ds.as_numpy_iterator()]


def test_example_folder():
    """The example's three files: JSONL labels given as words or indices, CSV with quoted commas, the template."""
    task = files.register(str(EXAMPLE))
    origins = registry.check_data([task])[task.removeprefix("sharpt_")]
    assert origins == {
        "train": f"{EXAMPLE}/train.jsonl (24 rows)",
        "validation": f"{EXAMPLE}/validation.csv (8 rows)",
        "test": f"{EXAMPLE}/test.csv (8 rows)",
    }
    raw = [json.loads(line) for line in (EXAMPLE / "train.jsonl").read_text().splitlines()]
    words = [r["label"] if isinstance(r["label"], str) else ["negative", "positive"][r["label"]] for r in raw]
    assert any(isinstance(r["label"], int) for r in raw)
    assert rows_of(task, "train") == [{"text": r["text"], "label": w} for r, w in zip(raw, words, strict=True)]
    assert rows_of(task, "validation")[0] == {"text": "a gripping, tense thriller", "label": "positive"}
    test_rows = rows_of(task, "test")
    assert rows_of(task, "test", formatted=True) == [
        {"inputs": "review: " + r["text"], "targets": r["label"]} for r in test_rows
    ]
    task_eval = registry.task_eval(task)
    assert task_eval.label_names == ("negative", "positive") and task_eval.ranks("rank_classification")
    assert registry.row_features(task).keys() == {"text"}  # Serving needs only the input fields.
    assert files.register(str(EXAMPLE)) == task  # Stable, registered once.


def test_templates_numbers_and_tsv(tmp_path):
    folder = write_folder(
        tmp_path / "pairs",
        {"input": "premise: {premise} hypothesis: {hypothesis} {{literal}}", "target": "score", "metric": "pearson"},
        train_tsv='premise\thypothesis\tscore\nA cat.\t"A ""big"" cat."\t3.5\nrain\tsun\t0\n',
        validation_jsonl=jsonl({"premise": "x", "hypothesis": 7, "score": 1.25}),
        test_jsonl=jsonl({"premise": "p", "hypothesis": True, "score": 2}),
    )
    task = files.register(str(folder))
    assert rows_of(task, "train") == [
        {"premise": "A cat.", "hypothesis": 'A "big" cat.', "score": "3.5"},
        {"premise": "rain", "hypothesis": "sun", "score": "0"},
    ]
    assert rows_of(task, "validation") == [{"premise": "x", "hypothesis": "7", "score": "1.25"}]
    assert rows_of(task, "test", formatted=True) == [
        {"inputs": "premise: p hypothesis: true {literal}", "targets": "2"}
    ]
    assert registry.task_eval(task).label_names is None and registry.task_eval(task).always_decode


def test_carved_validation_is_seeded_and_recorded(tmp_path):
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(50)]
    folder = write_folder(tmp_path / "carve", SENTIMENT, train_jsonl=jsonl(*rows), test_csv="text,label\nz,1\n")
    task = files.register(str(folder))
    train_rows, validation = rows_of(task, "train"), rows_of(task, "validation")
    assert (len(train_rows), len(validation)) == (45, 5)  # 10% by default.
    chosen = np.random.default_rng(42).permutation(50)[:5]
    assert [r["text"] for r in validation] == [f"row {i}" for i in sorted(chosen)]
    assert {r["text"] for r in train_rows} | {r["text"] for r in validation} == {r["text"] for r in rows}
    assert "validation 0.1 of the train rows drawn by a permutation seeded with 42" in registry.split_protocol(task)
    # The config's value overrides task.json's default, and makes another task.
    other = files.register(str(folder), {"validation_fraction": 0.2, "input": "", "labels": ()})
    assert other != task and len(rows_of(other, "validation")) == 10


def test_mixture_of_folders_and_registered_tasks(tmp_path):
    a = write_folder(
        tmp_path / "a",
        SENTIMENT,
        train_jsonl=jsonl(*[{"text": "t", "label": 0}] * 30),
        test_jsonl=jsonl({"text": "t", "label": 1}),
    )
    b = write_folder(
        tmp_path / "b", {"input": "q", "target": "a"}, train_csv="q,a\n" + "x,y\n" * 12, test_csv="q,a\nx,y\n"
    )
    config = common.get_config()
    config.task = f"files:{a},files:{b},skills_swap_n16"
    train_task, eval_tasks = build.configure_tasks(config, files=None)
    mixture = seqio.get_mixture_or_task(train_task)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates == {eval_tasks[0]: 27, eval_tasks[1]: 11, "sharpt_skills_swap_n16": 16}  # Training rows.
    assert registry.task_eval(eval_tasks[1]).metric_fns == (metrics.exact_match,)


@pytest.mark.parametrize(
    "split_files,error",
    [
        (
            {"train_jsonl": '{"text": "a", "label": 1}\n{"text": "b"}\n'},
            r"train.jsonl:2: field 'label' missing \(the row has 'text'\)",
        ),
        (
            {"train_jsonl": '{"text": "a", "label": "meh"}\n'},
            r"train.jsonl:1: label 'meh' \(field 'label'\) is not one of the labels negative, positive "
            r"nor an index 0-1",
        ),
        ({"train_jsonl": '{"text": "a", "label": 2}\n'}, r"train.jsonl:1: label '2' \(field 'label'\) is not one"),
        (
            {"train_jsonl": '{"text": "a", "label": 1}\n\n{"text": "b" "label": 1}\n'},
            r"train.jsonl:3: not valid JSON \(Expecting ',' delimiter at column 14\)",
        ),
        (
            {"train_jsonl": b'{"text": "a", "label": 1}\n{"text": "\xff", "label": 1}\n'},
            r"train.jsonl:2: not UTF-8 text \(byte 0xff at column 11\)",
        ),
        (
            {"train_jsonl": '{"text": ["a"], "label": 1}\n'},
            r"train.jsonl:1: field 'text' is a list, expected text or a number",
        ),
        ({"train_jsonl": ""}, r"train.jsonl: no rows \(an empty file\)"),
        ({"test_csv": "text,label\n"}, r"test.csv: no rows \(an empty file\)"),
        ({"test_csv": 'text,label\na,1\n"b,\nc,0\n'}, r"test.csv:3: not valid CSV \(unexpected end of data\)"),
        ({"test_csv": "text,label\na,1\nb,0,extra\n"}, r"test.csv:3: 3 values, the header has 2 \(text, label\)"),
        ({"test_csv": 'text,label\n"multi\nline",1\nb,7\n'}, r"test.csv:4: label '7'"),
        ({"test_csv": "review,label\na,1\n"}, r"test.csv:2: field 'text' missing \(the row has 'review', 'label'\)"),
        ({"test_csv": "text,text\na,1\n"}, r"test.csv:1: the header repeats the column name\(s\) text"),
    ],
)
def test_bad_rows_are_one_line(tmp_path, split_files, error):
    good = {"train_jsonl": jsonl({"text": "a", "label": 1}), "test_csv": "text,label\na,0\n"}
    folder = write_folder(tmp_path / "bad", SENTIMENT, **{**good, **split_files})
    task = files.register(str(folder))
    with pytest.raises(DataError, match=rf"^{folder}/{error}") as info:
        registry.check_data([task])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "spec,error",
    [
        ({**SENTIMENT, "metric": "bleu"}, "metric 'bleu' is not one of exact_match, accuracy, f1, macro_f1"),
        ({**SENTIMENT, "labels": ["a", "b", "c"], "metric": "f1"}, "use macro_f1 with 3"),
        ({"input": "text", "target": "label", "metric": "accuracy"}, "metric accuracy compares labels"),
        ({**SENTIMENT, "metric": "pearson"}, "a label set makes no sense"),
        ({**SENTIMENT, "labels": ["a", "a"]}, r"repeat a label"),
        ({**SENTIMENT, "inputs": "x"}, "unknown setting\\(s\\) inputs; the settings are input, target"),
        ({"target": "label"}, "no 'input' field name; set it in task.json or with --config.files.input"),
        ({**SENTIMENT, "input": "{text!r}"}, "write fields as {name}"),
        ({**SENTIMENT, "input": "a {text"}, "expected '}' before end of string"),
        ({**SENTIMENT, "validation_fraction": 1.5}, "validation_fraction 1.5 must be a number between 0 and 1"),
    ],
)
def test_bad_settings(tmp_path, spec, error):
    folder = write_folder(
        tmp_path / "s", spec, train_jsonl=jsonl({"text": "a", "label": 1}), test_jsonl=jsonl({"text": "a", "label": 1})
    )
    with pytest.raises(DataError, match=error):
        files.register(str(folder))


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match=rf"^files:{tmp_path}/nothing: no folder"):
        files.register(str(tmp_path / "nothing"))
    folder = write_folder(tmp_path / "f", SENTIMENT, test_csv="text,label\na,1\n")
    with pytest.raises(DataError, match=r"no train file \(train.jsonl, train.csv or train.tsv\)"):
        files.register(str(folder))
    write_folder(folder, train_jsonl=jsonl({"text": "a", "label": 1}), train_csv="text,label\na,1\n")
    with pytest.raises(DataError, match="train.jsonl and train.csv are both the train split; keep one"):
        files.register(str(folder))
    (folder / "task.json").write_text('{"input": "text",\n "target": label}')
    with pytest.raises(DataError, match=rf"^{folder}/task.json:2: not valid JSON \(Expecting value at column 12\)"):
        files.register(str(folder))
    one = write_folder(
        tmp_path / "one",
        SENTIMENT,
        train_jsonl=jsonl({"text": "a", "label": 1}),
        test_jsonl=jsonl({"text": "a", "label": 1}),
    )
    with pytest.raises(DataError, match="1 row\\(s\\), too few to carve a validation split; add a validation file"):
        registry.check_data([files.register(str(one))])


def test_changed_file_is_refused_on_resume(tmp_path):
    folder = write_folder(
        tmp_path / "r",
        SENTIMENT,
        train_jsonl=jsonl(*[{"text": "a", "label": 1}] * 3),
        test_jsonl=jsonl({"text": "a", "label": 0}),
    )
    task = files.register(str(folder))
    before = {"task": task, "data_files": files.checksums([task])}
    assert set(before["data_files"]) == {str(folder / n) for n in ("train.jsonl", "test.jsonl", "task.json")}
    train.check_same_run(before, before, tmp_path)
    with open(folder / "train.jsonl", "a") as f:
        f.write(jsonl({"text": "b", "label": 0}))
    after = {"task": task, "data_files": files.checksums([task])}
    with pytest.raises(
        build.ConfigError,
        match=rf"^{tmp_path}: the data file {folder}/train.jsonl changed since the run started "
        r"\(sha256 \w{12}, now \w{12}\); put the original back",
    ):
        train.check_same_run(before, after, tmp_path)


def test_run_py_stops_at_a_bad_row_with_one_line(tmp_path):
    """Before any model is resolved (the default T5 is a hub id, and the tests run offline)."""
    folder = write_folder(
        tmp_path / "bad",
        SENTIMENT,
        train_jsonl=jsonl({"text": "a", "label": 1}) + '{"text": "b", "label": "maybe"}\n',
        test_jsonl=jsonl({"text": "a", "label": 1}),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "run.py",
            f"--config=configs/target.py:files:{folder},method=prompt_tuning",
            f"--workdir={tmp_path / 'w'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {folder}/train.jsonl:2: label 'maybe' (field 'label') is not one of the labels negative, positive "
        "nor an index 0-1"
    )
