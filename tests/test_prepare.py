"""tasks/prepare.py on small files written in the releases' own formats."""

import json

import pytest

from tasks import prepare

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
