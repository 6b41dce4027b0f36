"""Small corpora and unseen characters: the weights that validate best are kept, --patience stops a
run that no longer improves, rare characters are trained as the unknown one, and evaluate.py
reports the unseen share and the loss without them. Recipes are chosen by the corpus."""

import json
import random
import re

import pytest

import read_utils
import recipes
from conftest import CHARS, TINY_MODEL, couplets, run_script

# A run that memorises 60 lines of random couplets: its held-out loss falls, then rises.
OVERFIT = [*TINY_MODEL, "--lstm_size", 96, "--learning_rate", 0.02, "--warmup_steps", 0, "--min_lr_fraction", 1,
           "--dropout", 0, "--val_fraction", 0.25, "--eval_every", 25, "--save_every_n", 25, "--eval_poems", 0]


def validation_losses(stderr):
    """{step: loss} of the validations train.py logged."""
    return {int(step): float(loss) for step, loss in re.findall(r"step (\d+): validation loss ([\d.]+)", stderr)}


def evaluated_loss(run_dir, text_path):
    result = run_script("evaluate.py", "--checkpoint_dir", run_dir, "--input", text_path)
    return float(re.search(r"^loss: ([\d.]+) nats/char", result.stdout, re.M).group(1)), result.stdout


@pytest.fixture(scope="module")
def overfit_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("overfit")
    corpus = root / "small.txt"
    corpus.write_text(couplets(60, seed=3), encoding="utf-8")
    held_out = root / "held_out.txt"
    held_out.write_text(read_utils.split_text(corpus.read_text(encoding="utf-8"), 0.25)[1], encoding="utf-8")
    return root, corpus, held_out


@pytest.mark.process
def test_a_run_that_memorises_its_corpus_keeps_the_weights_that_validated_best_and_patience_stops_it(overfit_corpus):
    root, corpus, held_out = overfit_corpus
    run_dir = root / "run"
    args = ["--input", corpus, "--checkpoint_dir", run_dir, *OVERFIT, "--max_steps", 2000, "--patience", 2]
    result = run_script("train.py", *args)
    losses = validation_losses(result.stderr)
    last, best_step = max(losses), min(losses, key=losses.get)
    assert "stopping early" in result.stderr and last < 2000
    assert last == best_step + 2 * 25, losses  # two validations after the best, no better
    assert losses[last] > losses[best_step] + 0.02, losses  # it did memorise
    assert f"keeping the weights of step {best_step}" in result.stderr
    record = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert record["training"]["max_steps"] == last
    assert record["kept"]["step"] == last and record["kept"]["weights_of_step"] == best_step
    # The last checkpoint, which sample.py and evaluate.py read, scores as the best validation did.
    loss, _ = evaluated_loss(run_dir, held_out)
    assert abs(loss - losses[best_step]) < 2e-3 and abs(record["kept"]["val_loss"] - losses[best_step]) < 1e-3
    resumed = run_script("train.py", *args[:4], "--eval_poems", 0)  # the same run again: it is finished
    assert f"already at step {last}" in resumed.stderr


@pytest.mark.process
def test_max_epochs_ends_a_budgeted_schedule_before_the_budget(overfit_corpus):
    root, corpus, _ = overfit_corpus
    run_dir = root / "epochs"
    # 45 training lines of 13 characters, 8 streams of 16: 4 windows an epoch, so 30 epochs are 120
    # steps, which a budget of five minutes would far exceed.
    result = run_script("train.py", "--input", corpus, "--checkpoint_dir", run_dir, *OVERFIT, "--time_budget", "5m",
                        "--max_epochs", 30)
    assert "--max_epochs 30 ends it before the budget" in result.stderr
    assert json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["training"]["max_steps"] == 120
    assert (run_dir / "ckpt-120.index").exists()


def sprinkled(text, rare, share, seed):
    """text with a share of its CJK characters replaced by characters of rare, each used once."""
    rng = random.Random(seed)
    rare = iter(rare)
    return "".join(next(rare) if c in CHARS and rng.random() < share else c for c in text)


@pytest.mark.process
@pytest.mark.slow  # four processes: two runs, each evaluated
def test_rare_characters_train_the_unknown_token_so_unseen_ones_cost_little(tmp_path):
    # Training text where 2% of the characters are ones seen once; held-out text where 5% are new.
    rare = [chr(0x4E00 + i) for i in range(20000)]
    corpus = tmp_path / "rare.txt"
    corpus.write_text(sprinkled(couplets(600), rare[:10000], 0.02, 0), encoding="utf-8")
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(sprinkled(couplets(100, seed=9), rare[10000:], 0.05, 1), encoding="utf-8")
    results = {}
    for min_count in (1, 2):
        run_dir = tmp_path / f"min_count_{min_count}"
        train = run_script("train.py", "--input", corpus, "--checkpoint_dir", run_dir, *TINY_MODEL, "--max_steps", 150,
                           "--learning_rate", 0.01, "--eval_poems", 0, "--min_count", min_count)
        results[min_count] = evaluated_loss(run_dir, held_out)
        assert f"--min_count {min_count}" in train.stderr
    (loss_1, report_1), (loss_2, report_2) = results[1], results[2]
    share = float(re.search(r"outside the vocabulary: [\d,]+ \(([\d.]+)%\)", report_2).group(1))
    known = float(re.search(r"in the vocabulary alone: ([\d.]+)", report_2).group(1))
    assert 3 < share < 6
    # Seen once, a character kept in the vocabulary leaves the unknown id no probability: unseen
    # characters then cost far more than with the rare ones trained as unknown.
    assert loss_1 > loss_2 + 0.3, (report_1, report_2)
    assert known < loss_2  # the unseen ones are the expensive ones


@pytest.mark.process
def test_a_small_corpus_trains_with_the_small_recipe_and_config_json_says_so(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(couplets(200), encoding="utf-8")
    run_dir = tmp_path / "run"
    result = run_script("train.py", "--input", corpus, "--checkpoint_dir", run_dir, *TINY_MODEL[:8], "--max_steps", 2,
                        "--eval_poems", 0)
    record = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    small = recipes.RECIPES["small"]
    assert record["corpus"]["recipe"] == {"name": "small", "why": "2,600 characters, 19 distinct", "flags": small.flags}
    assert record["model"]["dropout"] == small.flags["dropout"]
    assert record["training"]["max_epochs"] == small.flags["max_epochs"]
    assert "recipe small, for fewer than 300,000 characters (2,600 characters, 19 distinct)" in result.stderr


@pytest.mark.parametrize("text, recipe", [
    ("春花秋月，夜风山水。\n" * 1000, "small"),  # 10,000 characters
    ("To be, or not to be, that is the question.\n" * 8000, "alphabetic"),  # 344,000
    ("".join(chr(0x4E00 + i % 3000) for i in range(400_000)), "ideographic"),
    ("".join(chr(0x4E00 + i % 3000) for i in range(2_100_000)), "ideographic_large"),
])
def test_the_recipe_follows_the_size_and_alphabet_of_the_corpus(tmp_path, text, recipe):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    chosen, why = recipes.choose(None, str(path))
    assert chosen.name == recipe and f"{len(text):,} characters, {len(set(text)):,} distinct" == why


def test_the_built_in_corpora_have_their_own_recipes():
    assert recipes.choose("tang", None)[0].name == "tang"
    assert recipes.choose("poetry", None)[0].name == "ideographic"
