import re

import pytest

import generator
import poem_forms
import read_utils
import tuning
from conftest import CHARS, run_script

# name or alias -> (characters per clause, couplet lines)
SHAPES = {"五言绝句": (5, 2), "wujue": (5, 2), "五言律诗": (5, 4), "wulv": (5, 4),
          "七言绝句": (7, 2), "qijue": (7, 2), "七言律诗": (7, 4), "qilv": (7, 4)}
FORMS = ["五言绝句", "wulv", "qijue", "七言律诗"]  # every form, by name or alias


def poem_pattern(clause_length, lines):
    """Written independently of poem_forms: `XXXXX，XXXXX。` lines of CJK ideographs."""
    clause = f"[\u4e00-\u9fff]{{{clause_length}}}"
    return re.compile(f"(?:{clause}，{clause}。\n){{{lines}}}")


def clauses(poem):
    return [clause for clause in re.split("[，。\n]", poem) if clause]


# --- templates --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHAPES)
def test_template_is_the_form(name):
    slots = poem_forms.template(poem_forms.find_form(name))
    text = "".join("字" if slot is poem_forms.OPEN else slot for slot in slots)
    assert poem_pattern(*SHAPES[name]).fullmatch(text)


def test_aliases_name_the_same_forms():
    for form in poem_forms.FORMS:
        assert poem_forms.find_form(form.alias) == poem_forms.find_form(form.name) == form
    with pytest.raises(read_utils.InputError, match="wujue"):
        poem_forms.find_form("sonnet")


def test_acrostic_heads_the_clauses_and_start_string_fills_the_beginning():
    form = poem_forms.find_form("qilv")
    slots = poem_forms.template(form, acrostic="春夏秋", start="春风")
    assert slots[:3] == ["春", "风", poem_forms.OPEN]
    heads = [slots[i] for i in poem_forms.clause_starts(form)]
    assert heads == ["春", "夏", "秋"] + [poem_forms.OPEN] * 5


def test_acrostic_without_a_form_takes_a_five_character_one():
    assert poem_forms.form_for_acrostic("春夏秋冬").name == "五言绝句"
    assert poem_forms.form_for_acrostic("春夏秋冬天地人和").name == "五言律诗"


@pytest.mark.parametrize("form, acrostic, start, message", [
    ("wujue", "春夏秋冬雪", "", "5 characters but a 五言绝句 has only 4 clauses"),
    ("qilv", "春夏秋冬天地人和月", "", "9 characters but a 七言律诗 has only 8 clauses"),
    ("wujue", "春,", "", "','"),
    ("wujue", "", "春风，", "character 3 is '，' where the poem needs a Chinese character"),
    ("wujue", "", "春风不度玉门关", "character 6 is '门' where the poem needs '，'"),
    ("wujue", "秋", "春", "character 1 is '春' where the poem needs '秋'"),
    ("wujue", "", "春" * 30, "more than a whole 五言绝句"),
])
def test_what_does_not_fit_a_form_is_a_clear_error(form, acrostic, start, message):
    with pytest.raises(read_utils.InputError, match=re.escape(message)):
        poem_forms.template(poem_forms.find_form(form), acrostic, start)


def test_only_cjk_ideographs_fill_a_clause():
    assert all(poem_forms.is_ideograph(c) for c in CHARS + "龘㐀")
    assert not any(poem_forms.is_ideograph(c) for c in "，。、？！\n a1《" + read_utils.UNKNOWN)


# --- generation: the toy model knows only five-character couplets ----------------------------------

@pytest.fixture(scope="module")
def gen(trained_run):
    config, vocab, path = generator.load_run(trained_run[0])
    return generator.Generator(config, vocab, path, num_streams=8)


@pytest.mark.parametrize("name", FORMS)
@pytest.mark.parametrize("decoding", [dict(temperature=3.0), dict(temperature=0), dict(temperature=1.5, top_p=0.9)])
def test_every_poem_is_well_formed_whatever_the_decoding(gen, name, decoding):
    poems = gen.generate(form=name, seed=11, max_lines=1, max_length=5, **decoding)
    pattern = poem_pattern(*SHAPES[name])
    assert all(pattern.fullmatch(poem) for poem in poems), poems
    if decoding["temperature"]:
        assert len(set(poems)) == len(poems)  # sampled, not collapsed by the masks


@pytest.mark.slow  # compiles the many-stream loop
def test_many_streams_are_well_formed_too(trained_run):
    config, vocab, path = generator.load_run(trained_run[0])
    many = generator.Generator(config, vocab, path, num_streams=tuning.MANY_STREAMS)
    for name in ("wujue", "qilv"):
        poems = many.generate(form=name, acrostic="春秋", temperature=1.5, top_p=0.9, seed=12)
        assert all(poem_pattern(*SHAPES[name]).fullmatch(poem) for poem in poems), poems
        assert [clause[0] for clause in clauses(poems[0])[:2]] == list("春秋")


@pytest.mark.parametrize("name", ["wujue", "qilv"])
def test_acrostic_poems_begin_each_clause_with_its_character(gen, name):
    poems = gen.generate("春风", form=name, acrostic="春秋月", temperature=2.0, seed=3)
    for poem in poems:
        assert poem_pattern(*SHAPES[name]).fullmatch(poem)
        assert poem.startswith("春风")
        assert [clause[0] for clause in clauses(poem)[:3]] == list("春秋月")


def test_acrostic_alone_writes_a_five_character_poem(gen):
    for poem in gen.generate(acrostic="江山明月夜", temperature=1.0, seed=4):
        assert poem_pattern(5, 4).fullmatch(poem)
        assert [clause[0] for clause in clauses(poem)[:5]] == list("江山明月夜")


def test_a_banned_character_the_form_needs_is_a_clear_error(trained_run):
    config, vocab, path = generator.load_run(trained_run[0])
    banned = generator.Generator(config, vocab, path, num_streams=2, banned="，")
    with pytest.raises(read_utils.InputError, match="banned"):
        banned.generate(form="wujue")


def test_sample_writes_acrostic_poems_of_a_form(trained_run):
    result = run_script("sample.py", "--checkpoint_dir", trained_run[0], "--form", "qijue", "--acrostic", "春花秋月",
                        "--start_string", "春风", "--num_samples", 3, "--temperature", 1.2)
    poems = result.stdout.strip().split("\n\n")
    assert len(poems) == 3
    for poem in poems:
        assert poem_pattern(7, 2).fullmatch(poem + "\n") and poem.startswith("春风")
        assert [clause[0] for clause in clauses(poem)] == list("春花秋月")
