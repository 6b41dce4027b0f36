import collections
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import read_utils
from scripts import kneser_ney

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "kneser_ney.py")


def random_text(length, letters="abcdefghij \n", seed=0):
    rng = random.Random(seed)
    return "".join(rng.choice(letters) for _ in range(length))


def english_like(length, seed=0):
    """Text with some structure: random words from a small lexicon, so that contexts repeat."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "off", "to", "see", "dog", "ate"]
    out = []
    while sum(map(len, out)) < length:
        out.append(rng.choice(words) + rng.choice("  \n,"))
    return "".join(out)[:length]


# A slow, plain reference of the same model: string n-grams in Counters, one probability at a time.


def reference_discounts(counts, discount):
    if discount is not None:
        return [0.0, discount, discount, discount]
    n = collections.Counter(c for c in counts.values() if c > 0)
    if not all(n[c] for c in (1, 2, 3, 4)):
        return [0.0] + [kneser_ney.FALLBACK_DISCOUNT] * 3
    y = n[1] / (n[1] + 2 * n[2])
    d = [c - (c + 1) * y * n[c + 1] / n[c] for c in (1, 2, 3)]
    return [0.0] + [max(x, kneser_ney.MIN_DISCOUNT) for x in d]


class Reference:
    def __init__(self, text, order, discount):
        self.order, self.alphabet = order, sorted(set(text))
        raw = [collections.Counter(text[i : i + k] for i in range(len(text) - k + 1)) for k in range(1, order + 2)]
        self.counts, self.discounts = {}, {}
        for k in range(1, order + 1):
            if k == order:
                a = raw[k - 1]
            else:  # continuation count: distinct characters before the k-gram
                a = collections.Counter(g[1:] for g in raw[k])
            self.counts[k] = a
            self.discounts[k] = reference_discounts(a, discount)

    def p(self, context, w, k=None):
        k = self.order if k is None else k
        if k == 0:
            return 1 / (len(self.alphabet) + 1)
        h = context[max(0, len(context) - (k - 1)) :] if k > 1 else ""
        lower = self.p(context, w, k - 1)
        if len(h) < k - 1:
            return lower
        a, d = self.counts[k], self.discounts[k]
        followers = [(g, c) for g, c in a.items() if g[:-1] == h and c > 0]
        total = sum(c for _, c in followers)
        if total == 0:
            return lower
        backoff = sum(d[min(c, 3)] for _, c in followers)
        c = a.get(h + w, 0)
        return (max(c - d[min(c, 3)], 0) + backoff * lower) / total

    def loss(self, text):
        start = self.order - 1
        return -sum(math.log(self.p(text[max(0, i - start) : i], text[i])) for i in range(len(text))) / len(text)


ORDERS = [1, 2, 3, 4]
DISCOUNTS = [None, 0.75]  # modified KN, and one absolute discount


@pytest.fixture(scope="module")
def training_text():
    return english_like(3000, seed=1)


@pytest.mark.parametrize("discount", DISCOUNTS)
@pytest.mark.parametrize("order", ORDERS)
def test_probabilities_sum_to_one_over_the_alphabet_and_unknown(training_text, order, discount):
    model = kneser_ney.train(training_text, order, discount)
    contexts = [
        "",  # the start of the text
        "the",  # seen
        " cat",  # seen, and as long as the order allows
        "zzz",  # unseen characters throughout
        "qat",  # partly seen: its suffix "at" is seen, the whole not
        "the cat sat on",  # longer than the order: only the last n-1 characters count
        "t",  # shorter than the order
        training_text[-3:],  # the end of the training text: possibly a context without followers
    ]
    for context in contexts:
        p = kneser_ney.distribution(model, context)
        assert p.shape == (len(set(training_text)) + 1,)
        assert (p > 0).all(), context
        assert p.sum() == pytest.approx(1.0, abs=1e-12), context


@pytest.mark.parametrize("discount", DISCOUNTS)
@pytest.mark.parametrize("order", ORDERS)
def test_held_out_loss_matches_a_plain_reference(training_text, order, discount):
    held_out = english_like(300, seed=2) + "xyz the"  # with characters unseen in training
    model = kneser_ney.train(training_text, order, discount)
    reference = Reference(training_text, order, discount)
    assert kneser_ney.loss(model, held_out) == pytest.approx(reference.loss(held_out), rel=1e-10)
    for k, level in enumerate(model.levels, 1):
        assert level.discounts.tolist() == pytest.approx(reference.discounts[k])


def test_distribution_matches_the_reference_character_by_character(training_text):
    model = kneser_ney.train(training_text, 3, None)
    reference = Reference(training_text, 3, None)
    for context in ["", "t", "th", "xth", "qz", "at"]:
        p = kneser_ney.distribution(model, context)
        expected = [reference.p(context[-2:], w) for w in reference.alphabet] + [reference.p(context[-2:], "\x00")]
        assert p.tolist() == pytest.approx(expected, rel=1e-12), context


@pytest.mark.parametrize("discount", DISCOUNTS)
@pytest.mark.parametrize("order", ORDERS)
def test_a_context_seen_only_at_the_end_of_training_passes_the_lower_order_on(order, discount):
    # "xyz" ends the training text and occurs nowhere else: as a context it has no followers.
    text = english_like(2000, seed=8) + "xyz"
    model = kneser_ney.train(text, order, discount)
    for context in ["xyz", "yz", "z", "zz"]:
        p = kneser_ney.distribution(model, context)
        assert (p > 0).all() and p.sum() == pytest.approx(1.0, abs=1e-12), context
    held_out = "the cat xyz" + "xyz"
    reference = Reference(text, order, discount)
    assert kneser_ney.loss(model, held_out) == pytest.approx(reference.loss(held_out), rel=1e-10)


def test_an_exactly_repeated_text_scores_far_lower_than_a_shuffled_one():
    text = random_text(20000, letters="abcdefghijklmnopqrstuvwxyz", seed=3)
    letters = list(text)
    random.Random(4).shuffle(letters)
    model = kneser_ney.train(text, 4)
    repeated, shuffled = kneser_ney.loss(model, text), kneser_ney.loss(model, "".join(letters))
    assert shuffled > math.log(26) * 0.95  # the shuffle leaves only the letter frequencies
    assert repeated < 0.5 * shuffled


@pytest.mark.parametrize("order", ORDERS)
def test_a_character_unseen_in_training_has_a_finite_loss(order):
    model = kneser_ney.train(random_text(2000, seed=5), order)
    held_out = "abc" + "\u6625" + "def"  # a Chinese character in Latin text
    p = kneser_ney.text_probabilities(model, held_out)
    assert np.isfinite(np.log(p)).all() and (p > 0).all()
    assert np.isfinite(kneser_ney.loss(model, held_out))
    assert kneser_ney.unseen_share(model, held_out) == pytest.approx(1 / 7)
    # Every unseen character is the one unknown symbol: the same probability in the same context.
    assert kneser_ney.text_probabilities(model, "abc\u4e00def")[3] == pytest.approx(p[3])


def test_order_1_without_discount_is_the_relative_frequency():
    text = "aaab\n"
    model = kneser_ney.train(text, 1, discount=0.0)
    p = kneser_ney.distribution(model, "whatever")
    assert p.tolist() == pytest.approx([1 / 5, 3 / 5, 1 / 5, 0.0])  # "\n", "a", "b", unknown


def test_order_1_with_an_absolute_discount_is_the_closed_form_mixture():
    # counts: "\n" 1, a 3, b 1; N = 5, V = 3 seen characters, the uniform is over V + 1 = 4 symbols
    model = kneser_ney.train("aaab\n", 1, discount=0.5)
    weight = 0.5 * 3 / 5  # what the discounts give to the uniform distribution
    expected = [(c - 0.5) / 5 + weight / 4 for c in (1, 3, 1)] + [weight / 4]
    assert kneser_ney.distribution(model, "").tolist() == pytest.approx(expected, rel=1e-12)


def test_order_1_modified_discounts_are_chen_and_goodmans():
    # counts a 1, b 2, c 3, d 4: n1 = n2 = n3 = n4 = 1, Y = 1/3, D1 = 1/3, D2 = 1, D3+ = 5/3
    model = kneser_ney.train("abbcccdddd", 1)
    assert model.levels[0].discounts.tolist() == pytest.approx([0, 1 / 3, 1, 5 / 3])
    weight = (1 / 3 + 1 + 5 / 3 + 5 / 3) / 10  # the four characters' discounts, over N = 10
    expected = [(1 - 1 / 3) / 10, (2 - 1) / 10, (3 - 5 / 3) / 10, (4 - 5 / 3) / 10, 0.0]
    expected = [e + weight / 5 for e in expected]
    assert kneser_ney.distribution(model, "").tolist() == pytest.approx(expected, rel=1e-12)


def test_modified_discounts_are_floored_and_fall_back_when_counts_are_sparse():
    # counts a 1, b 2, c..g 3, h 4: n1 = 1, n2 = 1, n3 = 5, n4 = 1, Y = 1/3, so D2 = 2 - 5 < 0
    model = kneser_ney.train("abbcccdddeeefffggghhhh", 1)
    discounts = [0, 1 / 3, kneser_ney.MIN_DISCOUNT, 3 - 4 / 3 / 5]
    assert model.levels[0].discounts.tolist() == pytest.approx(discounts)
    p = kneser_ney.distribution(model, "")
    assert (p > 0).all() and p.sum() == pytest.approx(1.0, abs=1e-12)
    # No character seen twice: no estimate, the fallback discount everywhere.
    fallback = kneser_ney.FALLBACK_DISCOUNT
    assert kneser_ney.train("aaab\n", 1).levels[0].discounts.tolist() == [0, fallback, fallback, fallback]


def test_order_2_by_hand():
    # Training "abab", D = 0.5. Unigram continuation counts: a 1 (after b), b 1 (after a); total 2,
    # so p1(a) = p1(b) = 0.5/2 + (2 * 0.5/2) / 3 = 5/12. Bigram counts: ab 2, ba 1 (the last b has
    # no follower). Held-out "ab": p(a) = p1(a) = 5/12 (empty context), p(b | a) = (2 - 0.5)/2 +
    # (0.5/2) * 5/12 = 41/48.
    model = kneser_ney.train("abab", 2, discount=0.5)
    assert kneser_ney.text_probabilities(model, "ab").tolist() == pytest.approx([5 / 12, 41 / 48], rel=1e-12)
    assert kneser_ney.loss(model, "ab") == pytest.approx(-(math.log(5 / 12) + math.log(41 / 48)) / 2, rel=1e-12)
    # After "b": (1 - 0.5)/1 + 0.5 * p1; the unknown symbol gets 0.5 * (0.5 / 3).
    assert kneser_ney.distribution(model, "b").tolist() == pytest.approx(
        [0.5 + 0.5 * 5 / 12, 0.5 * 5 / 12, 0.5 * 1 / 6], rel=1e-12
    )


def test_the_input_is_split_as_train_py_splits_it(tmp_path, capsys):
    path = tmp_path / "corpus.txt"
    path.write_text(english_like(20000, seed=6), encoding="utf-8")
    train_text, val_text = read_utils.split_text(read_utils.read_text(str(path)), 0.1, read_utils.split_kind(str(path)))
    kneser_ney.main(["--input", str(path), "--order", "3", "--val_fraction", "0.1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"training characters: {len(train_text):,}; held-out: {len(val_text):,} (0.00% unseen in training)"
    nats = kneser_ney.loss(kneser_ney.train(train_text, 3), val_text)
    assert lines[1] == f"Kneser-Ney 3-gram held-out loss: {nats:.4f} nats/char ({nats / math.log(2):.4f} bits/char)"
    assert lines[2].startswith("(modified Kneser-Ney")


def test_two_files_and_an_absolute_discount(tmp_path, capsys):
    train_path, heldout_path = tmp_path / "train.txt", tmp_path / "heldout.txt"
    train_path.write_text("abcabcabd\n" * 50, encoding="utf-8")
    heldout_path.write_text("abcabz\n", encoding="utf-8")
    kneser_ney.main(["--train", str(train_path), "--heldout", str(heldout_path), "--order", "2", "--discount", "0.5"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "training characters: 500; held-out: 7 (14.29% unseen in training)"
    assert lines[2] == "(interpolated Kneser-Ney, absolute discount 0.5 at every order)"


def test_a_missing_file_is_one_line_on_stderr_and_a_failure(tmp_path):
    missing = str(tmp_path / "missing.txt")
    result = subprocess.run([sys.executable, SCRIPT, "--input", missing], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"kneser_ney.py: error: input file {missing} does not exist; pass --input with a UTF-8 text file"
    ]


def test_the_script_runs_from_the_repo_root(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(english_like(5000, seed=7), encoding="utf-8")
    result = subprocess.run([sys.executable, SCRIPT, "--input", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Kneser-Ney 4-gram held-out loss: " in result.stdout


@pytest.mark.parametrize(
    "args",
    [[], ["--input", "a", "--train", "b"], ["--train", "b"], ["--input", "a", "--order", "0"],
     ["--input", "a", "--discount", "1.5"], ["--input", "a", "--val_fraction", "0"]],
)
def test_bad_arguments_are_refused(args):
    with pytest.raises(SystemExit) as e:
        kneser_ney.parse_args(args)
    assert e.value.code == 2
