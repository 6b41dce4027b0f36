import os
import random

import pytest

import corpora
import poem_metrics as pm
import read_utils
from conftest import ROOT

# Two five-character quatrains and a seven-character one, a couplet a line as in poetry.txt.
FIVE = (
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n"
    "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n"
)
SEVEN = "两个黄鹂鸣翠柳，一行白鹭上青天。\n窗含西岭千秋雪，门泊东吴万里船。\n"
REAL_CORPUS = [os.path.join(corpora.DATA_DIR, corpora.POETRY_FILE), os.path.join(ROOT, "..", "shared", "data", "poetry.txt")]


def shuffled(text, seed=0):
    """The same characters, punctuation included, in random order within each line."""
    rng = random.Random(seed)
    return "".join("".join(rng.sample(line, len(line))) + "\n" for line in text.splitlines())


def test_well_formed_needs_the_clause_length_and_punctuation_in_place():
    assert pm.is_well_formed("床前明月光，疑是地上霜。", 5)
    assert pm.is_well_formed("床前明月光，疑是地上霜。举头望明月，低头思故乡。", 5)  # a line of two couplets
    assert not pm.is_well_formed("床前明月光，疑是地上霜。", 7)
    assert not pm.is_well_formed("床前明月光。疑是地上霜，", 5)
    assert not pm.is_well_formed("床前明月，疑是地上霜霜。", 5)
    assert not pm.is_well_formed("床前明月光，疑是地上霜", 5)
    assert not pm.is_well_formed("床前明□光，疑是地上霜。", 5)  # an illegible character is no character


def test_dominant_form_is_the_form_of_most_lines():
    assert pm.dominant_clause_length(pm.lines_of([FIVE])) == 5
    assert pm.dominant_clause_length(pm.lines_of([SEVEN * 3 + FIVE])) == 7
    assert pm.dominant_clause_length(pm.lines_of([FIVE + "\n\n\n\n\n\n"])) == 5  # blank lines do not count
    prose = ["Call me Ishmael.", "Some years ago,", FIVE.splitlines()[0]]
    assert pm.dominant_clause_length(prose) is None
    assert pm.dominant_clause_length(prose, min_share=0) == 5  # the best form, however rare


def test_real_couplets_score_high_and_shuffled_ones_low():
    scorer = pm.PoemScorer.from_training_text(FIVE)
    real, mixed = scorer.score([FIVE]), scorer.score([shuffled(FIVE)])
    assert real["well_formed"] == 1.0 and mixed["well_formed"] <= 0.25
    assert real["copy_rate"] == 1.0 and mixed["copy_rate"] <= 0.25


def test_copy_rate_counts_clauses_found_verbatim():
    known = set(pm.clauses(FIVE))
    # Three of these four clauses are in FIVE; the second differs in one character.
    assert pm.copy_rate(["床前明月光，疑是天上霜。", "举头望明月，低头思故乡。"], known) == 0.75
    assert pm.copy_rate(["两个黄鹂鸣翠柳，一行白鹭上青天。"], known) == 0.0
    assert pm.copy_rate([], known) == 0.0


def test_repetition_lowers_distinct_bigrams():
    real = pm.distinct_bigram_fraction([FIVE])
    assert real == pytest.approx(38 / 39)  # 40 letters, 39 bigrams; 明月 comes twice
    loop = "春风春风春，春风春风春。\n" * 4  # the degenerate loop of an undertrained model
    assert pm.distinct_bigram_fraction([loop]) < 0.1
    # Pooled over samples: the same poem twice repeats every bigram once.
    assert pm.distinct_bigram_fraction([FIVE, FIVE]) == pytest.approx(real / 2)
    assert pm.distinct_bigram_fraction(["", "，。"]) == 0.0


def test_blank_and_truncated_sample_lines_count_as_malformed():
    sample = "床前明月光，疑是地上霜。\n\n举头望明月，低头"
    assert pm.PoemScorer(5).score([sample])["well_formed"] == pytest.approx(1 / 3)


def test_scores_leave_out_what_the_reference_cannot_judge():
    assert set(pm.PoemScorer.from_training_text(FIVE).score([FIVE])) == {"well_formed", "copy_rate", "distinct_bigrams"}
    assert set(pm.PoemScorer(7).score([SEVEN])) == {"well_formed", "distinct_bigrams"}
    prose = pm.PoemScorer.from_training_text("It was the best of times,\nit was the worst of times.\n")
    assert set(prose.score(["it was the age of wisdom"])) == {"distinct_bigrams"}


def test_held_out_lines_of_the_real_corpus_match_the_design_yardsticks():
    path = next((p for p in REAL_CORPUS if os.path.isfile(p)), None)
    if path is None:
        pytest.skip("poetry.txt is not here")
    train_text, val_text = read_utils.split_text(read_utils.read_text(path), 0.05)
    scorer = pm.PoemScorer.from_training_text(train_text)
    assert scorer.clause_length == 5
    real = scorer.score([val_text])
    assert real["well_formed"] == pytest.approx(0.9975, abs=5e-4)
    assert real["copy_rate"] == pytest.approx(0.087, abs=1e-3)
    assert real["distinct_bigrams"] == pytest.approx(0.84, abs=5e-3)
    mixed = scorer.score([shuffled(val_text)])
    assert mixed["well_formed"] < 0.02 and mixed["copy_rate"] < 0.02
