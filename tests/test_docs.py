"""The README and docs/ cannot rot: their links resolve, every command names files and modules that exist, and every
command block marked runnable runs as written.

A block is runnable when the line before its fence is `<!-- runnable[ slow][ tiny][: FLAGS] -->`. The test runs
it with bash (`set -e`) in a fresh folder that links the repository's top-level entries, so relative paths such as
`runs/` land there, and `/tmp/` becomes a folder of the test's. `DATA` is the bundled sample rows of every task
(`tasks.samples`). `tiny` appends flags that shrink a paper-scale run (a random tiny T5, a tiny BERT, a few steps)
to every `python run.py` and `scripts/reproduce.py` line, and FLAGS are appended the same way. `slow` blocks run
with `pytest -m slow`.
"""

import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from tiny_run import make_tiny_bert

from tasks import samples

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"<!-- runnable(?P<words>[^:>]*)(?::(?P<flags>[^>]*))? -->\n```bash\n(?P<body>.*?)\n```", re.S)
BLOCK = re.compile(r"```bash\n(?P<body>.*?)\n```", re.S)
TINY = (
    "--config.t5=random --config.t5_vocab=DATA/spm.model --config.encoder=TINY_BERT --config.encoder_pooling=cls"
    " --config.t5_random.d_model=32 --config.t5_random.d_kv=8 --config.t5_random.d_ff=64"
    " --config.t5_random.num_layers=1 --config.t5_random.num_decoder_layers=1 --config.t5_random.num_heads=4"
    " --config.num_skills=4 --config.prompt_length=4 --config.batch_size=8 --config.num_train_steps=4"
    " --config.save_every=2 --config.warmup_steps=1 --config.log_every=2 --config.backbone_dtype=float32"
    " --config.sequence_length.inputs=48 --config.sequence_length.targets=8"
    " --config.sequence_length.instance_inputs=32 --config.eval.batch_size=8 --config.eval.max_decode_len=6"
)


def _blocks(runnable_only: bool) -> list:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in (MARK if runnable_only else BLOCK).finditer(text):
            line = text[: m.start()].count("\n") + 1
            found.append(pytest.param(page, m, id=f"{page.relative_to(ROOT)}:{line}"))
    return found


def _commands(body: str) -> list[list[str]]:
    """The words of every command in a block (comments dropped, `&&` and `\\` continuations split)."""
    body = body.replace("\\\n", " ")
    commands = []
    for line in body.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            words = shlex.split(line)  # Before splitting at `&&`: a quoted remote command may hold one.
            starts = [0] + [i + 1 for i, word in enumerate(words) if word == "&&"]
            commands += [words[a : b - 1] for a, b in zip(starts, starts[1:] + [len(words) + 1], strict=True)]
    return commands


def test_readme_is_short_and_links_resolve():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


@pytest.mark.parametrize("page,match", _blocks(runnable_only=False))
def test_commands_name_existing_files(page, match):
    """Every `python X.py`, `python -m module` and `--config=FILE.py` in a command block exists."""
    for words in _commands(match["body"]):
        if words[0] != "python":
            continue
        if words[1] == "-m":
            module = words[2].replace(".", "/")
            if (ROOT / module.split("/")[0]).exists():  # Ours; else an installed tool (pytest).
                assert (ROOT / f"{module}.py").exists() or (ROOT / module / "__init__.py").exists(), words[2]
            else:
                assert importlib.util.find_spec(words[2]) is not None, words[2]
        elif words[1].endswith(".py"):
            assert (ROOT / words[1]).exists(), words[1]
        for word in words:
            if word.startswith("--config=configs/"):
                assert (ROOT / word.split("=", 1)[1].split(":")[0]).exists(), word


def test_runnable_blocks_are_found():
    """The README marks the paper's path, the plan and serving as runnable (a typo in a marker would skip them)."""
    assert len([b for b in _blocks(runnable_only=True) if b.values[0].name == "README.md"]) >= 3


def _params():
    out = []
    for param in _blocks(runnable_only=True):
        words = param.values[1]["words"].split()
        marks = [pytest.mark.slow] if "slow" in words else []
        out.append(pytest.param(*param.values, id=param.id, marks=marks))
    return out


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("docs_assets")
    data = samples.write_samples(folder / "data")
    samples.train_sentencepiece(data, data / "spm")
    return {"DATA": data, "TINY_BERT": make_tiny_bert(folder / "tiny_bert")}


@pytest.mark.parametrize("page,match", _params())
def test_runnable_block_runs(page, match, sample_data, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    (work / "DATA").symlink_to(sample_data["DATA"])
    extra = (TINY if "tiny" in match["words"].split() else "") + " " + (match["flags"] or "")
    extra = extra.replace("DATA/", f"{sample_data['DATA']}/").replace("TINY_BERT", str(sample_data["TINY_BERT"]))
    lines = []
    for line in match["body"].replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].rstrip().replace("/tmp/", f"{tmp_path}/")  # Not in `extra`'s paths.
        if re.match(r"python (run\.py|scripts/reproduce\.py) ", line):
            line += " " + extra.strip()
        lines.append(line)
    env = dict(os.environ, PYTHONPATH=str(work))
    env.pop("XLA_FLAGS", None)  # As a user runs them: the machine's own devices, not conftest's 8 fake ones.
    result = subprocess.run(
        ["bash", "-ec", "\n".join(lines)], cwd=work, env=env, capture_output=True, text=True, timeout=3000
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
