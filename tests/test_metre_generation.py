"""Generation under metre (--metre, --rhyme, --best_of): every poem rhymes and follows a pattern
whatever the model would rather write, impossible requests are one-line errors, drafts are chosen
by score."""

import re

import numpy as np
import pytest

import generator
import metre
import metre_plan
import poem_forms
import read_utils
from conftest import run_script, train_toy_run

# A toy corpus over the 平水韵: level characters of two large groups (东, 阳) and of single-character
# groups, oblique ones, three of both tones, and two outside the table that the corpus uses often,
# so the model likes them anywhere.
EAST = "东风红宫"  # 上平声一东, level only
SUN = "光香阳霜"  # 下平声七阳, level only
OTHER_LEVEL = "山人春花天"  # 删, 真, 真, 麻, 先
BOTH = "空中长"  # 空 and 中 in 东, 长 in 阳, each with oblique readings too
OBLIQUE = "月雪夜水雨日白落去"
UNKNOWN = "们这"  # outside the table: no tone
CORPUS_CHARS = EAST + SUN + OTHER_LEVEL + BOTH + OBLIQUE + UNKNOWN * 4
FORMS = [form.name for form in poem_forms.FORMS]
STREAMS = 200


@pytest.fixture(scope="module")
def metre_run(tmp_path_factory):
    run, _ = train_toy_run(tmp_path_factory.mktemp("metre_run"), 600, "--max_steps", 200, "--warmup_steps", 10,
                           "--learning_rate", 0.01, "--eval_every", 200, "--save_every_n", 200, "--eval_poems", 0,
                           chars=CORPUS_CHARS)
    return str(run)


def load(run, num_streams=STREAMS, banned=""):
    config, vocab, path = generator.load_run(run)
    return generator.Generator(config, vocab, path, num_streams, banned=banned)


@pytest.fixture(scope="module")
def gen(metre_run):
    return load(metre_run)


def clauses(poem):
    return [clause for clause in re.split("[，。\n]", poem) if clause]


def is_form(poem, name):
    form = poem_forms.find_form(name)
    clause = f"[\u4e00-\u9fff]{{{form.clause_length}}}"
    return re.fullmatch(f"(?:{clause}，{clause}。\n){{{form.lines}}}", poem) is not None


def constrained_positions(clause_length):
    """0-based positions whose tone every pattern fixes: 2nd, 4th (6th) and the last."""
    return [i for i in range(clause_length) if i % 2 == 1 or i == clause_length - 1]


# --- the four forms, 200 poems each ------------------------------------------------------------------

@pytest.mark.parametrize("name", FORMS)
def test_strict_poems_rhyme_and_follow_a_pattern_with_and_without_an_acrostic(gen, name):
    heads = "月雪夜水雨日白落"[: poem_forms.find_form(name).clauses]  # oblique: against 平平仄仄平's first slot
    for acrostic in ("", heads):
        poems = gen.generate(form=name, acrostic=acrostic, metre="strict", temperature=1.0, seed=5)
        assert len(poems) == STREAMS and len(set(poems)) > STREAMS // 2
        for poem in poems:
            assert is_form(poem, name), poem
            assert metre.rhymes(poem) and metre.follows_pattern(poem), poem
            assert [clause[0] for clause in clauses(poem)][: len(acrostic)] == list(acrostic)
            # A character without a tone never stands where a tone is checked.
            for clause in clauses(poem):
                assert not any(clause[i] in UNKNOWN for i in constrained_positions(len(clause))), poem
        assert any(metre.pattern_of(poem).name.endswith("首句入韵") for poem in poems)  # all four patterns drawn
        assert any(metre.pattern_of(poem).name.endswith("首句不入韵") for poem in poems)


@pytest.mark.parametrize("name", FORMS)
def test_rhyme_metre_always_rhymes_and_off_does_not(gen, name):
    rhyming = gen.generate(form=name, metre="rhyme", temperature=1.0, seed=6)
    assert all(is_form(poem, name) and metre.rhymes(poem) for poem in rhyming)
    assert not all(map(metre.follows_pattern, rhyming))  # the tones are left to the model
    free = gen.generate(form=name, metre="off", temperature=1.0, seed=6)
    assert all(is_form(poem, name) for poem in free)
    assert sum(map(metre.rhymes, free)) < STREAMS // 2  # so the rates above are the metre's doing


def test_rhyme_groups_are_drawn_per_poem_or_named(gen):
    drawn = {metre.rhyme_groups(poem)[0].name for poem in gen.generate(form="wujue", metre="rhyme", seed=7)}
    assert {"上平声一东", "下平声七阳"} <= drawn
    for poem in gen.generate(form="wujue", metre="strict", rhyme="霜", seed=7):
        assert [group.name for group in metre.rhyme_groups(poem)] == ["下平声七阳"]
        assert all(clause[-1] in SUN + "长" for clause in clauses(poem)[1::2])


def test_same_seed_same_poems(gen):
    first = gen.generate(form="qilv", acrostic="春", metre="strict", seed=8)
    assert first == gen.generate(form="qilv", acrostic="春", metre="strict", seed=8)
    assert first != gen.generate(form="qilv", acrostic="春", metre="strict", seed=9)


# --- fixed characters against the pattern ---------------------------------------------------------

def test_a_fixed_head_that_cannot_be_level_moves_the_lone_level_guard():
    form = poem_forms.find_form("wujue")
    planner = metre_plan.Planner(form, poem_forms.template(form, "月月月月"), "strict", writable=frozenset(CORPUS_CHARS))
    pattern = {p.name: p for p in metre.patterns(5, 4)}["仄起首句不入韵"]
    assert pattern.slots[1][0] == metre.LEVEL  # 平平仄仄平: the first slot averts 孤平
    choice = next(choice for choice in planner.choices if choice.name == pattern.name)
    second = poem_forms.clause_starts(form)[1]
    assert second not in choice.requirements  # the head 月 stands there
    assert choice.requirements[second + 2] == metre.LEVEL  # 仄平平仄平 instead


def test_a_start_string_limits_the_patterns_and_the_rhyme(gen):
    # 风 (level only) at the 2nd position: only the patterns whose first clause is 平起 in 五言.
    for poem in gen.generate("东风", form="wujue", metre="strict", temperature=1.0, seed=10):
        assert poem.startswith("东风") and metre.follows_pattern(poem)
        assert metre.pattern_of(poem).name.startswith("平起")
    # A start string ending the second clause fixes the rhyme group to that character's.
    start = "春月夜山水，白雨落光阳"  # 阳 ends the first rhyming clause
    for poem in gen.generate(start, form="wujue", metre="rhyme", temperature=1.0, seed=10):
        assert poem.startswith(start) and "下平声七阳" in [g.name for g in metre.rhyme_groups(poem)]


@pytest.mark.parametrize("start, metre_name, message", [
    ("东风东风", "strict", "fit none of the four tonal patterns of a 五言绝句"),  # 2nd and 4th level: no pattern
    ("春月夜山水，白雨落光月", "rhyme", "share no level rhyme group"),  # an oblique rhyme
    ("春月夜山水，山风雨夜们", "strict", "share no level rhyme group"),  # tones right, a rhyme without a tone
])
def test_a_start_string_against_every_pattern_is_a_one_line_error(gen, start, metre_name, message):
    with pytest.raises(read_utils.InputError, match=message) as raised:
        gen.generate(start, form="wujue", metre=metre_name)
    assert "\n" not in str(raised.value)
    assert is_form(gen.generate(start, form="wujue", metre="off")[0], "wujue")  # the form alone is fine


# --- impossible masks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("banned, metre_name, rhyme, message", [
    (EAST + SUN + OTHER_LEVEL + BOTH, "strict", "", "no level (平) character"),
    (OBLIQUE + BOTH, "strict", "", "no oblique (仄) character"),
    (EAST + SUN + OTHER_LEVEL + BOTH, "rhyme", "", "no character of any level rhyme group"),
    (EAST + "空中", "strict", "东", "names 上平声一东, of which the model can write no character"),
    ("", "rhyme", "咸", "names 下平声十五咸, of which the model can write no character"),  # never seen
])
def test_a_slot_nothing_can_fill_is_a_one_line_error_before_generating(metre_run, banned, metre_name, rhyme, message):
    small = load(metre_run, num_streams=2, banned=banned)
    with pytest.raises(read_utils.InputError, match=re.escape(message)) as raised:
        small.generate(form="qijue", metre=metre_name, rhyme=rhyme)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("rhyme, message", [
    ("月", "has only oblique (仄) readings"), ("们", "is outside the 平水韵 table"), ("东风", "one character"),
])
def test_a_rhyme_that_names_no_level_group_is_a_one_line_error(gen, rhyme, message):
    with pytest.raises(read_utils.InputError, match=re.escape(message)):
        gen.generate(form="wujue", metre="strict", rhyme=rhyme)
    with pytest.raises(read_utils.InputError, match="add --form or --acrostic"):
        gen.generate("春", metre="strict", rhyme="东")
    with pytest.raises(read_utils.InputError, match="under --metre rhyme or strict, not off"):
        gen.generate(form="wujue", metre="off", rhyme="东")


# --- best of several drafts ------------------------------------------------------------------------------

def test_best_of_keeps_each_poems_highest_scoring_draft(metre_run):
    drafts = load(metre_run, num_streams=12).generate(form="wulv", metre="strict", temperature=1.2, seed=11, scored=True)
    best = load(metre_run, num_streams=3).generate(form="wulv", metre="strict", temperature=1.2, seed=11, best_of=4,
                                                   scored=True)
    # The three poems' drafts are the twelve streams, four by four: the same draws of the same seed.
    assert len(best) == 3 and len({draft.score for draft in drafts}) == 12
    for i, kept in enumerate(best):
        mine = drafts[4 * i : 4 * i + 4]
        assert kept == max(mine, key=lambda draft: draft.score)
        assert kept.score > min(draft.score for draft in mine)
    texts = load(metre_run, num_streams=3).generate(form="wulv", metre="strict", temperature=1.2, seed=11, best_of=4)
    assert texts == [draft.text for draft in best]


def test_scores_are_the_models_log_probability_of_the_sampled_characters():
    import tensorflow as tf

    logits = np.array([[1.0, 2.0, -np.inf, 0.5], [0.0, 0.0, 3.0, -1.0]], np.float32)
    ids = np.array([1, 2], np.int32)
    expected = tf.nn.log_softmax(np.where(np.isinf(logits), -1e30, logits)).numpy()[[0, 1], ids]
    np.testing.assert_allclose(generator.log_softmax_at(tf.constant(logits), tf.constant(ids)), expected, rtol=1e-6)
    # Kept characters 0-5 of a plan that forces 1 and 3: stream 0 kept 5 (three sampled), stream 1 none.
    forced = np.array([-1, 7, -1, 7, -1, -1, -1], np.int32)
    scores = generator.mean_scores(np.array([-6.0, 0.0]), np.array([5, 0]), forced)
    np.testing.assert_allclose(scores, [-2.0, 0.0])


# --- sample.py --------------------------------------------------------------------------------------------

def test_sample_writes_metrical_poems_with_their_scores(metre_run):
    result = run_script("sample.py", "--checkpoint_dir", metre_run, "--form", "qijue", "--rhyme", "东",
                        "--num_samples", 3, "--best_of", 4, "--show_scores", "--seed", 2)
    samples = result.stdout.strip().split("\n\n")
    assert len(samples) == 3
    for sample in samples:
        poem, score = sample.rsplit("\n", 1)
        assert is_form(poem + "\n", "qijue") and metre.follows_pattern(poem)
        assert [group.name for group in metre.rhyme_groups(poem)] == ["上平声一东"]
        assert re.fullmatch(r"\(score -\d+\.\d{3}\)", score)


@pytest.mark.parametrize("args, message", [
    (["--rhyme", "月", "--form", "wujue"], "--rhyme 月 has only oblique (仄) readings"),
    (["--rhyme", "东"], "add --form or --acrostic"),
    (["--metre", "rhyme"], "--metre applies to poems of a form"),
])
def test_sample_refuses_metre_flags_that_cannot_apply_in_one_line(metre_run, args, message):
    result = run_script("sample.py", "--checkpoint_dir", metre_run, *args, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_evaluate_scores_poems_of_a_form_in_that_form(metre_run):
    """The toy corpus is of five-character clauses; a 七言绝句 is judged well-formed as one all the same."""
    result = run_script("evaluate.py", "--checkpoint_dir", metre_run, "--num_samples", 20, "--form", "qijue",
                        "--metre", "strict", "--best_of", 2)
    out = result.stdout
    assert "poems sampled: 20 七言绝句, --metre strict, best of 2" in out
    assert "well-formed lines (7-character couplets): 100.0%" in out
    assert "rhyming (even clauses in one 平水韵 level group): 100.0%" in out
    assert "following a standard tonal pattern: 100.0%" in out
    assert re.search(r"mean log-probability per sampled character \(the model's own, nats\): -\d+\.\d{4}", out)
    refused = run_script("evaluate.py", "--checkpoint_dir", metre_run, "--num_samples", 4, "--metre", "off", check=False)
    assert refused.returncode != 0 and "--metre applies to poems of a form: add --form" in refused.stderr
