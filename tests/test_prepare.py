"""tasks/prepare.py on small files written in the releases' own formats; the data check of runs and of
`python -m tasks.prepare check` on a small data folder (every kind of bad row, missing files and builders)."""

import json
from pathlib import Path

import pytest

import tasks
from tasks import prepare, registry, samples, sources

STS_HEADER = "caption1,caption2,agg_score,sampling_method\n"


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_coco(path, captions):
    """A Karpathy-split dataset_coco.json holding `captions` ({sentid: raw}), two per image."""
    sentids = sorted(captions)
    images = []
    for i in range(0, len(sentids), 2):
        ids = sentids[i : i + 2]
        images.append(
            {
                "filepath": "val2014",
                "filename": f"COCO_val2014_{i:012d}.jpg",
                "imgid": i,
                "split": "val",
                "cocoid": i,
                "sentids": ids,
                "sentences": [
                    {"tokens": captions[s].lower().split(), "raw": captions[s], "imgid": i, "sentid": s} for s in ids
                ],
            }
        )
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")


@pytest.fixture
def cxc_release(tmp_path):
    src = tmp_path / "release"
    (src / "data").mkdir(parents=True)
    (src / "data" / "sts_val.csv").write_text(
        STS_HEADER
        + "COCO_val2014:sentid:190268,COCO_val2014:sentid:315773,1.24,c2c_isim\n"
        + "COCO_val2014:sentid:98,COCO_val2014:sentid:190268,5.0,c2c_cocaption\n"
    )
    (src / "data" / "sts_test.csv").write_text(
        STS_HEADER + "COCO_val2014:sentid:7,COCO_val2014:sentid:98,0.0,c2c_isim\n"
    )
    _write_coco(
        src / "dataset_coco.json",
        {
            190268: "A kite flying in the air over a sand castle.",
            315773: "Scattered people on a wide dry beach including surfers. ",
            98: "A man standing on a tennis court holding a racquet.\n",
            7: "Café\tlights at night.",
        },
    )
    return src


def test_cxc_joins_caption_ids_with_karpathy_captions(cxc_release, tmp_path):
    out = tmp_path / "data"
    prepare.main(["cxc", "--src", str(cxc_release), "--out", str(out)])
    assert _read_jsonl(out / "cxc" / "validation.jsonl") == [
        {
            "sentence1": "A kite flying in the air over a sand castle.",
            "sentence2": "Scattered people on a wide dry beach including surfers.",
            "score": 1.24,
        },
        {
            "sentence1": "A man standing on a tennis court holding a racquet.",
            "sentence2": "A kite flying in the air over a sand castle.",
            "score": 5.0,
        },
    ]
    assert _read_jsonl(out / "cxc" / "test.jsonl") == [
        {
            "sentence1": "Café lights at night.",
            "sentence2": "A man standing on a tennis court holding a racquet.",
            "score": 0.0,
        },
    ]


def test_cxc_accepts_single_files(cxc_release, tmp_path):
    files = [
        cxc_release / "data" / "sts_val.csv",
        cxc_release / "data" / "sts_test.csv",
        cxc_release / "dataset_coco.json",
    ]
    assert prepare.prepare_cxc(files, tmp_path / "out") == {"validation": 2, "test": 1}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda src: (src / "data" / "sts_test.csv").unlink(), "sts_test.csv: not found"),
        (lambda src: (src / "dataset_coco.json").unlink(), "dataset_coco.json: not found"),
        (
            lambda src: (src / "data" / "sts_val.csv").write_text("caption1,caption2,score\n"),
            "missing column.*agg_score",
        ),
        (
            lambda src: (src / "data" / "sts_val.csv").write_text(STS_HEADER + "COCO:sentid:5,sentid:98,1,x\n"),
            "sentid 5 is not in the captions",
        ),
        (
            lambda src: (src / "data" / "sts_val.csv").write_text(STS_HEADER + "98,COCO:sentid:98,1,x\n"),
            "is not a caption id",
        ),
        (
            lambda src: (src / "data" / "sts_val.csv").write_text(STS_HEADER + "sentid:98,sentid:98,6.5,x\n"),
            r"not a number in \[0, 5\]",
        ),
        (
            lambda src: (src / "dataset_coco.json").write_text('{"annotations": []}'),
            "not a Karpathy-split captions file",
        ),
    ],
)
def test_cxc_errors_name_the_problem(cxc_release, tmp_path, edit, message):
    edit(cxc_release)
    with pytest.raises(prepare.PrepareError, match=message):
        prepare.prepare_cxc([cxc_release], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written, not even the split that was fine


CR_ROWS = {
    "train": [
        {"text": "the battery life is great .", "label": 1, "label_text": "positive"},
        {"text": "the screen scratches easily .", "label": 0, "label_text": "negative"},
    ],
    "test": [{"text": "works as advertised .", "label": 1, "label_text": "positive"}],
}
CR_EXPECTED = {split: [{"sentence": r["text"], "label": r["label"]} for r in rows] for split, rows in CR_ROWS.items()}


def test_cr_from_jsonl(tmp_path):
    src = tmp_path / "SentEval-CR"
    src.mkdir()
    for split, rows in CR_ROWS.items():
        (src / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (src / "custrev.pos").write_text("unrelated original release file\n")
    prepare.main(["cr", "--src", str(src), "--out", str(tmp_path / "data")])
    for split, expected in CR_EXPECTED.items():
        assert _read_jsonl(tmp_path / "data" / "cr" / f"{split}.jsonl") == expected


def test_cr_from_the_hub_parquet_export(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    for split, rows in CR_ROWS.items():
        (tmp_path / "default" / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "default" / split / "0000.parquet")
    assert prepare.prepare_cr([tmp_path / "default"], tmp_path / "data") == {"train": 2, "test": 1}
    for split, expected in CR_EXPECTED.items():
        assert _read_jsonl(tmp_path / "data" / "cr" / f"{split}.jsonl") == expected


@pytest.mark.parametrize(
    "train_line, message",
    [
        (None, "'train': neither train.jsonl"),
        ('{"sentence": "no text field", "label": 1}\n', "row 1 lacks field.*text"),
        ('{"text": "bad label", "label": "positive"}\n', "label 'positive', expected 0 or 1"),
    ],
)
def test_cr_errors_name_the_problem(tmp_path, train_line, message):
    (tmp_path / "test.jsonl").write_text(json.dumps(CR_ROWS["test"][0]) + "\n")
    if train_line is not None:
        (tmp_path / "train.jsonl").write_text(train_line)
    with pytest.raises(prepare.PrepareError, match=message):
        prepare.prepare_cr([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line_reports_errors_without_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match="tasks.prepare cxc: .*missing: no such file or folder"):
        prepare.main(["cxc", "--src", str(tmp_path / "missing"), "--out", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# What a run can read: the data check.
# ---------------------------------------------------------------------------------------------

RTE_ROW = {"sentence1": "A man walks.", "sentence2": "A man moves.", "label": 0, "idx": 0}


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """The bundled samples of every task (4 rows per split); TFDS reads an empty folder."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(sources.tfds.core.constants, "DATA_DIR", str(tmp_path / "tfds"))
    samples.write_samples(tmp_path / "data", num_per_split=4)
    yield tmp_path / "data"
    tasks.configure(data_dir=None)


def _rte_train_with_line_5(data_dir: Path, line: bytes) -> Path:
    path = data_dir / "rte" / "train.jsonl"
    good = json.dumps(RTE_ROW).encode() + b"\n"
    path.write_bytes(good * 4 + line + b"\n" + good)
    return path


@pytest.mark.parametrize(
    "line,message",
    [
        (json.dumps({k: v for k, v in RTE_ROW.items() if k != "label"}).encode(), "field 'label' missing"),
        (b'{"sentence1": "a" "sentence2": "b"}', "not valid JSON (Expecting ',' delimiter at column 19)"),
        (b'{"sentence1": "a\tb"}', "not valid JSON (Invalid control character at column 17)"),
        (json.dumps({**RTE_ROW, "label": "0"}).encode(), """field 'label' is a string ("0"), expected an integer"""),
        (json.dumps({**RTE_ROW, "label": True}).encode(), "field 'label' is true/false (true), expected an integer"),
        (json.dumps({**RTE_ROW, "sentence1": None}).encode(), "field 'sentence1' is null (null), expected a string"),
        (json.dumps([RTE_ROW]).encode(), "a list, expected a JSON object (one row per line)"),
        ('{"sentence1": "caf\xe9"}'.encode("latin-1"), "not UTF-8 text (byte 0xe9 at column 19)"),
    ],
)
def test_a_bad_row_is_named_by_file_and_line(data_dir, line, message):
    path = _rte_train_with_line_5(data_dir, line)
    tasks.configure(data_dir=data_dir)
    with pytest.raises(sources.DataError) as info:
        registry.check_data(["sharpt_rte"])
    assert str(info.value) == f"{path}:5: {message}"


def test_nested_and_list_fields_are_checked(data_dir):
    path = data_dir / "race" / "train.jsonl"
    row = json.loads(path.read_text().splitlines()[0])
    path.write_text(json.dumps({**row, "options": [["a", "b"], ["c", 3]]}) + "\n")
    record = data_dir / "record" / "validation.jsonl"
    record_row = json.loads(record.read_text().splitlines()[0])
    del record_row["idx"]["query"]
    record.write_text(json.dumps(record_row) + "\n")
    tasks.configure(data_dir=data_dir)
    with pytest.raises(sources.DataError, match=rf"^{path}:1: field 'options' is an integer \(3\), expected a string$"):
        registry.check_data(["race"])
    with pytest.raises(sources.DataError, match=rf"^{record}:1: field 'idx.query' missing$"):
        registry.check_data(["record"])


def test_an_empty_file_and_blank_lines(data_dir):
    path = data_dir / "rte" / "validation.jsonl"
    path.write_text("\n\n")
    tasks.configure(data_dir=data_dir)
    with pytest.raises(sources.DataError, match=rf"^{path}: no rows \(an empty file\)$"):
        registry.check_data(["rte"])
    path.write_text(json.dumps(RTE_ROW) + "\n\n" + json.dumps(RTE_ROW) + "\n")  # Blank lines are no rows.
    assert registry.check_data(["rte"])["rte"]["validation"] == f"{path} (2 rows)"
    assert tasks.info("rte").split_protocol.startswith("train = official train (4);")


def test_missing_data_names_the_builder_or_file_and_the_command(data_dir, tmp_path):
    (data_dir / "wic" / "train.jsonl").unlink()
    (data_dir / "cxc" / "test.jsonl").unlink()
    tasks.configure(data_dir=data_dir)
    with pytest.raises(sources.DataError) as info:
        registry.check_data(["sharpt_wic"])
    assert str(info.value) == (
        f"wic: no rows for split 'train': no file {data_dir}/wic/train.jsonl, and TFDS super_glue/wic:1.0.2 is not "
        f"prepared in {tmp_path}/tfds ($TFDS_DATA_DIR); run `python -m tasks.prepare tfds --tasks wic` on a machine "
        "with network access"
    )
    with pytest.raises(sources.DataError) as info:
        registry.check_data(["cxc"])
    assert str(info.value) == (
        f"cxc: no file {data_dir}/cxc/test.jsonl (cxc is not in TFDS); write it with `python -m tasks.prepare cxc "
        "--src sts_val.csv sts_test.csv dataset_coco.json --out DATA_DIR` and run with --config.data_dir=DATA_DIR"
    )
    # A prepared builder (its dataset_info.json, which download_and_prepare writes last) is read from TFDS.
    (tmp_path / "tfds" / "super_glue" / "wic" / "1.0.2").mkdir(parents=True)
    (tmp_path / "tfds" / "super_glue" / "wic" / "1.0.2" / "dataset_info.json").write_text("{}")
    origins = registry.check_data(["wic", "skills_swap_n16"])  # The skills world makes its rows: not checked.
    assert origins == {
        "wic": {
            "train": f"TFDS super_glue/wic:1.0.2 ({tmp_path}/tfds/super_glue/wic/1.0.2)",
            "validation": f"{data_dir}/wic/validation.jsonl (4 rows)",
        }
    }


def _prepare_cli(capsys, *args) -> tuple[int, list[str]]:
    """(exit status, lines printed) of `python -m tasks.prepare ARGS`."""
    try:
        prepare.main(args)
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().out.splitlines()


def test_check_command_lists_every_task_and_exits_1_when_one_is_missing(data_dir, capsys):
    (data_dir / "cb" / "validation.jsonl").unlink()
    _rte_train_with_line_5(data_dir, b"{")
    code, printed = _prepare_cli(capsys, "check", "--data_dir", str(data_dir))
    assert code == 1
    lines = dict(line.split(": ", 1) for line in printed)
    assert list(lines) == tasks.names()
    assert lines["rte"] == (
        f"MISSING: {data_dir}/rte/train.jsonl:5: not valid JSON (Expecting property name enclosed in double quotes "
        "at column 2)"
    )
    assert lines["cb"].startswith("MISSING: cb: no rows for split 'validation': no file")
    assert [n for n, line in lines.items() if not line.startswith("ok: ")] == ["rte", "cb"]  # The samples are valid.
    assert lines["wic"] == (
        f"ok: train <- {data_dir}/wic/train.jsonl (4 rows); validation <- {data_dir}/wic/validation.jsonl (4 rows)"
    )
    code, printed = _prepare_cli(capsys, "check", "--data_dir", str(data_dir), "--tasks", "wic", "cxc")
    assert code == 0
    assert [line.split(": ")[:2] for line in printed] == [["wic", "ok"], ["cxc", "ok"]]


def test_tfds_command_lists_the_pinned_builders(data_dir, tmp_path, capsys):
    prepared = tmp_path / "tfds" / "glue" / "rte" / "2.0.0"
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    assert _prepare_cli(capsys, "tfds", "--dry_run", "--tasks", "rte", "race", "mnli") == (
        0,
        [
            f"glue/rte:2.0.0: prepared in {prepared}",
            f"race/high:2.0.0: to prepare into {tmp_path}/tfds/race/high/2.0.0",
            f"race/middle:2.0.0: to prepare into {tmp_path}/tfds/race/middle/2.0.0",
            f"glue/mnli:2.0.0: to prepare into {tmp_path}/tfds/glue/mnli/2.0.0",
        ],
    )
    # Another folder than the one runs read: the listing says how to point runs at it.
    code, printed = _prepare_cli(capsys, "tfds", "--dry_run", "--tasks", "rte", "--data_dir", str(tmp_path / "x"))
    assert printed[-1] == f"runs read TFDS from {tmp_path}/tfds: set TFDS_DATA_DIR={tmp_path}/x for them to read these"
    # One builder per TFDS task (race has two), each once: every builder the registry reads.
    builders = prepare.tfds_builders()
    assert len(builders) == len(set(builders)) == 24
    assert set(builders) == {b for n in tasks.names() for b in registry.raw_data(n).tfds_names}
    with pytest.raises(SystemExit, match="^tasks.prepare tfds: unknown task wicc; tasks are docnli, "):
        prepare.main(["tfds", "--tasks", "wicc"])
