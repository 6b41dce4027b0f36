"""Corpora of records (poems separated by empty lines, as tang's): generation starts where a poem
starts and ends with it, titles, and a short train / sample / evaluate on a record corpus."""

import json
import random
import typing

import pytest
import tensorflow as tf

import generator
import poem_forms
import read_utils
import recipes
import run_dir as run_dir_lib  # the tests name their run directories run_dir
from conftest import TINY_MODEL, run_script

# --- the compiled loop, driven by a scripted step ----------------------------------------------------

CHARS = ["<unk>", "\n"] + list("春花秋月夜风山水云雨江天人日明白，。题目甲乙")
WIDTH = generator.BLOCK


class ScriptedStep(typing.NamedTuple):
    """A stand-in for CharStep whose logits at step t pick script[t], whatever it is fed: the
    loop's burn-in, plan and stopping are then seen exactly."""

    script: tf.Tensor  # [steps] ids
    position: None = None  # reads no poem positions (generator.PositionTables)

    def zero_state(self, num_streams, ahead=False):
        return (tf.zeros([num_streams], tf.int32),)

    def __call__(self, ids, state, bfloat16=False, position=None):
        (t,) = state
        logits = tf.one_hot(tf.gather(self.script, t), WIDTH, on_value=10.0, off_value=-10.0)
        return logits, (t + 1,)


def ids_of(text):
    return [CHARS.index(char) for char in text]


def text_of(ids):
    return "".join(CHARS[i] for i in ids)


def run_loop(script, slots="", records=True, model_title=True, length=64, max_lines=0, burn_in=100):
    """The text shown by the loop for one stream that the script drives greedily, and its plan."""
    steps = burn_in + 2 * length
    script_ids = ids_of(script) + [CHARS.index("人")] * (steps + 1 - len(script))
    forced = [-1] * (length + 1)
    for i, char in enumerate(slots):
        forced[i] = CHARS.index(char)
    masks = tf.zeros([generator.RHYME + 1, WIDTH])  # every slot class and one rhyme row: nothing masked
    ids, shown, first, kept, _ = generator.generation_loop(
        ScriptedStep(tf.constant(script_ids)), masks, tf.constant([forced]), tf.zeros([1, length + 1], tf.int32),
        tf.zeros([steps, 1]), tf.constant(length), tf.constant(max_lines), tf.constant(1), tf.constant(burn_in),
        records, model_title, None, None, None, tf.fill([1], generator.RHYME), False, many=False, bfloat16=False,
    )
    row, start, end = ids.numpy()[0], int(shown[0]), int(first[0] + kept[0])
    return text_of(row[start:end])


POEM = "题目\n春花秋月夜，山水云雨江。\n天人日明白，春花秋月夜。\n\n"


def test_on_records_the_burn_in_runs_to_an_empty_line_and_a_poem_ends_at_its_own():
    script = "花月。\n风雨\n\n" + POEM + "甲乙\n春花秋月夜，山水云雨江。\n\n"
    assert run_loop(script) == POEM
    # On a corpus of lines the burn-in ends at the first line break and max_lines stops the text.
    assert run_loop(script, records=False, model_title=False, max_lines=2) == "风雨\n\n"


def test_a_given_title_is_forced_after_the_empty_line_and_the_poem_follows():
    script = "花月\n\n" + POEM
    # The plan starts right after the empty line with the title; the script's own title is overridden.
    assert run_loop(script, slots="甲乙\n", model_title=False) == "甲乙\n" + POEM.split("\n", 1)[1]


def test_the_models_title_comes_first_and_the_plan_follows_it():
    script = "花月\n\n" + POEM
    # With the model writing the title, the plan (here a forced clause head) starts on the next line.
    assert run_loop(script, slots="甲") == "题目\n甲花秋月夜，山水云雨江。\n天人日明白，春花秋月夜。\n\n"


def test_a_stream_without_an_empty_line_starts_after_the_burn_in_limit():
    script = "春花秋月夜\n" * 20
    assert run_loop(script, burn_in=30, length=12) == script[30:42]


# --- a tiny run trained on a record corpus -------------------------------------------------------------

TITLE_CHARS = "甲乙丙丁戊己庚辛"
BODY_CHARS = "春花秋月夜风山水云雨江天人日明白"


def titled_poems(n, seed=0):
    """n records: a title of two or three characters, two or four couplet lines, an empty line."""
    rng = random.Random(seed)
    clause = lambda: "".join(rng.choice(BODY_CHARS) for _ in range(5))  # noqa: E731
    records = []
    for _ in range(n):
        title = "".join(rng.choice(TITLE_CHARS) for _ in range(rng.choice([2, 3])))
        body = "".join(f"{clause()}，{clause()}。\n" for _ in range(rng.choice([2, 4])))
        records.append(f"{title}\n{body}\n")
    return "".join(records)


@pytest.fixture(scope="module")
def record_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    corpus = root / "poems.txt"
    corpus.write_text(titled_poems(400), encoding="utf-8")
    run_dir = root / "run"
    # Reading poem positions, as tang's recipe does (poem_position.py).
    run_script("train.py", "--input", corpus, "--checkpoint_dir", run_dir, *TINY_MODEL, "--max_steps", 300,
               "--warmup_steps", 10, "--learning_rate", 0.01, "--eval_every", 150, "--save_every_n", 150,
               "--poem_position")
    return run_dir, corpus


def test_a_record_corpus_is_split_by_poems_and_config_json_says_so(record_run):
    run_dir, corpus = record_run
    record = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert record["corpus"]["split"] == read_utils.RECORDS and record["model"]["poem_position"]
    assert record["corpus"]["name"] is None
    # A small corpus gets the small recipe, whose flags TINY_MODEL gives (test_small_corpora.py tests them).
    assert record["corpus"]["recipe"] == {"name": "small", "why": recipes.choose(None, str(corpus))[1], "flags": {}}
    assert run_dir_lib.trained_on_records(run_dir_lib.read_run(str(run_dir)).record)


def load(run_dir, num_streams):
    config, vocab, path = generator.load_run(str(run_dir))
    return generator.Generator(config, vocab, path, num_streams, records=run_dir_lib.trained_on_records(run_dir_lib.read_run(str(run_dir)).record))


def test_samples_are_whole_poems_title_first(record_run):
    texts = load(record_run[0], 8).generate("", 300, max_lines=2, temperature=0.5, seed=1)
    # Each sample is one record: no empty line inside; the 300 characters are never reached.
    assert all(text.endswith("\n\n") and "\n\n" not in text[:-2] for text in texts)
    # max_lines does not cut a poem: most have more than two lines, and most begin with a title.
    assert sum(text.count("\n") > 3 for text in texts) >= 6
    assert sum(set(text.split("\n")[0]) <= set(TITLE_CHARS) for text in texts) >= 6


@pytest.mark.parametrize("form", ["wujue", "qilv"])
def test_a_title_then_a_form_keeps_the_forms_guarantee(record_run, form):
    texts = load(record_run[0], 4).generate("", form=form, acrostic="春秋", title="甲乙", temperature=1.5, seed=2)
    shape = poem_forms.find_form(form)
    for text in texts:
        title, *lines = text.rstrip("\n").split("\n")
        assert title == "甲乙" and len(lines) == shape.lines
        clauses = [clause for line in lines for clause in line.replace("。", "，").split("，") if clause]
        assert [len(clause) for clause in clauses] == [shape.clause_length] * shape.clauses
        assert clauses[0][0] == "春" and clauses[1][0] == "秋"


def test_without_a_title_the_model_writes_one_before_the_form(record_run):
    texts = load(record_run[0], 4).generate("", form="wujue", temperature=0.8, seed=3)
    for text in texts:
        title, *lines = text.rstrip("\n").split("\n")
        assert title and "，" not in title and len(lines) == 2
        assert all(poem_forms.is_ideograph(char) for char in title)


def test_sample_py_writes_the_title_given(record_run):
    result = run_script("sample.py", "--checkpoint_dir", record_run[0], "--title", "丙丁", "--num_samples", 3,
                        "--seed", 4)
    poems = result.stdout.rstrip("\n").split("\n\n")
    assert len(poems) == 3 and all(poem.startswith("丙丁\n") and poem.count("\n") >= 1 for poem in poems)


def test_a_title_is_refused_on_a_corpus_of_lines_and_with_unseen_characters(trained_run, record_run):
    assert not run_dir_lib.trained_on_records(run_dir_lib.read_run(trained_run[0]).record)
    with pytest.raises(read_utils.InputError, match="--input tang"):
        load(trained_run[0], 1).generate("", title="春日")
    with pytest.raises(read_utils.InputError, match="the title has characters the model never saw: 晓"):
        load(record_run[0], 1).generate("", title="春晓")
    with pytest.raises(read_utils.InputError, match="one line"):
        load(record_run[0], 1).generate("", title="甲\n乙")


def test_evaluate_scores_a_record_run(record_run):
    run_dir, corpus = record_run
    result = run_script("evaluate.py", "--checkpoint_dir", run_dir, "--input", corpus, "--num_samples", 4)
    assert "loss:" in result.stdout and "whole poems" in result.stdout


@pytest.mark.slow  # an export, and a client process that loads it
def test_the_export_of_a_run_reading_poem_positions_writes_what_the_generator_writes(record_run, tmp_path):
    from test_export import call_exported, request

    out = tmp_path / "exported" / "1"
    run_script("export.py", "--checkpoint_dir", record_run[0], "--out", out)
    cases = [(1, dict(form="五言绝句", seed=5)), (2, dict(max_length=80, temperature=0.8, seed=3))]
    answers = call_exported(out, [request([""] * streams, **settings) for streams, settings in cases], tmp_path)
    for (streams, settings), answer in zip(cases, answers["signature"]):
        assert answer["error"] == ""
        assert answer["texts"] == load(record_run[0], streams).generate("", metre="off", **settings)
        assert all(text.count("\n") >= 3 for text in answer["texts"])  # a title line and a body
