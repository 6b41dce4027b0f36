"""The held-out loss of an interpolated Kneser-Ney character n-gram model: a baseline for CharRNN.

    python scripts/kneser_ney.py --input data/poetry.txt [--order 4] [--val_fraction 0.05] [--discount 0.75]
    python scripts/kneser_ney.py --train first90.txt --heldout last10.txt [--order 4]

With --input the file is split exactly as train.py splits it (read_utils.split_text with
read_utils.split_kind: whole lines, or whole records, one in 1/val_fraction held out); with
--train and --heldout the two files are used as they are. The model is trained on the training
text and the held-out text is scored as one sequence that starts with an empty context (its first
n-1 characters see shorter contexts, and so the lower orders' distributions). It prints the numbers of characters, the share of held-out
characters never seen in training, and the mean loss in nats per character (and bits), the number
to compare with a trained model's held-out loss on the same split.

The model is interpolated Kneser-Ney (Chen & Goodman, "An empirical study of smoothing techniques
for language modeling", 1998). At order n, for a context h of length k-1 and a character w:

    p_k(w | h) = (max(a_k(hw) - D_k(a_k(hw)), 0) + B_k(h) * p_{k-1}(w | h')) / A_k(h)

where h' is h without its first character, A_k(h) is the sum of a_k(hv) over all v and B_k(h) is
the sum of the discounts taken from the characters that follow h, so that the distribution sums
to 1. a_n is the raw count of the n-gram; the lower orders (k < n) use continuation counts, a_k(hw)
= the number of distinct characters that precede hw in the training text. A context never seen at
a level passes the lower level's distribution on unchanged. Below the unigram level is a uniform
distribution p_0 over the training alphabet plus one unknown symbol, which stands for every
character not seen in training (as the vocabulary's <unk> entry does for CharRNN): such a character
gets a small but finite probability.

Without --discount the model is modified Kneser-Ney: each level has three discounts D1, D2, D3+ for
n-grams seen once, twice and three or more times, estimated from that level's count-of-counts n_c
(Y = n1 / (n1 + 2 n2), D_c = c - (c + 1) Y n_{c+1} / n_c). With --discount D it is the original
interpolated Kneser-Ney, one absolute discount D at every level and count.

Everything is done on numpy arrays (one np.unique per order to number the n-grams), so a training
text of a few million characters takes seconds at order 4.
"""

import argparse
import math
import os
import sys
import typing

import numpy as np

# Run as `python scripts/kneser_ney.py` from the repo root, Python puts scripts/ on sys.path, not the
# root that read_utils.py sits in; `python -m scripts.kneser_ney` and the tests need nothing.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import read_utils  # noqa: E402  (after the sys.path line above)

DEFAULT_ORDER = 4
DEFAULT_VAL_FRACTION = 0.05  # train.py's default
FALLBACK_DISCOUNT = 0.75  # modified KN's three discounts, at a level whose count-of-counts are too sparse
MIN_DISCOUNT = 0.05  # estimated discounts are kept at least this: every seen context passes mass down


class Level(typing.NamedTuple):
    """The counts of one order k of the model: the k-grams of the training text, numbered.

    A k-gram's number is its rank in `grams`, the sorted values prefix * V + last character, where
    prefix is the number of its first k-1 characters at level k-1 (0 for the empty prefix at k=1)
    and V the size of the training alphabet.
    """

    grams: np.ndarray  # int64, sorted: prefix number * V + id of the last character
    counts: np.ndarray  # a_k of each k-gram: raw count at the top order, continuation count below
    discounts: np.ndarray  # float64 [0, D1, D2, D3+]: the discount of a count c is discounts[min(c, 3)]
    context_total: np.ndarray  # A_k(h) of each context h, indexed by h's number at level k-1
    context_backoff: np.ndarray  # B_k(h): the discount mass that the characters after h give up


class Model(typing.NamedTuple):
    alphabet: np.ndarray  # sorted code points of the training text; a character's id is its index
    levels: list  # Level of order 1, 2, ..., n

    @property
    def order(self):
        return len(self.levels)

    @property
    def size(self):
        """The number of symbols the model predicts: the training alphabet plus the unknown symbol."""
        return len(self.alphabet) + 1


# ---------------------------------------------------------------------------------------------
# Training


def train(text, order=DEFAULT_ORDER, discount=None):
    """The Model of a training text; discount None for modified KN, else one absolute discount."""
    if order < 1:
        raise ValueError(f"the order must be at least 1, not {order}")
    alphabet, ids = np.unique(read_utils.codepoints(text), return_inverse=True)
    grams, counts, suffixes = number_grams(ids.astype(np.int64), len(alphabet), order)
    levels = []
    for k in range(1, order + 1):
        # Continuation count of a k-gram: the distinct (k+1)-grams that end in it (k < n).
        a = counts[k - 1] if k == order else np.bincount(suffixes[k], minlength=len(grams[k - 1]))
        num_contexts = 1 if k == 1 else len(grams[k - 2])
        levels.append(make_level(grams[k - 1], a, len(alphabet), num_contexts, discount))
    return Model(alphabet, levels)


def number_grams(ids, size, order):
    """The distinct k-grams of a text of ids, for k = 1..order.

    Returns three lists indexed by k-1: the sorted gram values (Level.grams), the raw count of each
    gram and the number of each gram's suffix (its last k-1 characters) at level k-1.
    """
    grams, counts, suffixes = [], [], []
    keys = np.zeros(len(ids), np.int64)  # number of the gram ending at each position; k=0: empty
    for k in range(1, order + 1):
        prefixes = shifted(keys, 0 if k == 1 else -1)  # the (k-1)-gram before the last character
        valid = prefixes >= 0  # the first k-1 positions have no k-gram
        values, first, inverse, count = np.unique(
            prefixes[valid] * size + ids[valid], return_index=True, return_inverse=True, return_counts=True
        )
        suffixes.append(keys[valid][first])  # the (k-1)-gram ending where each k-gram first ends
        keys = np.full(len(ids), -1, np.int64)
        keys[valid] = inverse.reshape(-1)
        grams.append(values)
        counts.append(count)
    return grams, counts, suffixes


def shifted(keys, before_start):
    """keys moved one position later: position i gets keys[i-1], position 0 gets before_start."""
    return np.concatenate([[before_start], keys[:-1]]).astype(np.int64)


def make_level(grams, a, size, num_contexts, discount):
    """The Level of some k-grams with counts a (raw or continuation) over num_contexts contexts."""
    discounts = estimate_discounts(a) if discount is None else np.array([0.0, discount, discount, discount])
    taken = np.where(a > 0, discounts[np.minimum(a, 3)], 0.0)  # what each k-gram gives to the lower level
    contexts = grams // size
    return Level(
        grams=grams,
        counts=a,
        discounts=discounts,
        context_total=np.bincount(contexts, weights=a, minlength=num_contexts),
        context_backoff=np.bincount(contexts, weights=taken, minlength=num_contexts),
    )


def estimate_discounts(a):
    """Modified KN's [0, D1, D2, D3+] from the count-of-counts of counts a (Chen & Goodman, eq. 26).

    When a level has no n-gram seen once, twice, three or four times the estimate is undefined;
    then all three are FALLBACK_DISCOUNT. D_c is below c (what it subtracts from c is positive), so
    no count goes negative; but it can come out at or below 0 (D2 when n3 is large beside n2), so
    it is kept at least MIN_DISCOUNT: every seen context leaves some probability to the lower orders
    and so to unknown characters.
    """
    n = np.bincount(a[a > 0], minlength=5)[:5].astype(np.float64)  # n[c]: grams counted c times
    if not n[1:5].all():
        d = np.full(3, FALLBACK_DISCOUNT)
    else:
        y = n[1] / (n[1] + 2 * n[2])
        d = np.array([c - (c + 1) * y * n[c + 1] / n[c] for c in (1, 2, 3)])
    return np.concatenate([[0.0], np.maximum(d, MIN_DISCOUNT)])


# ---------------------------------------------------------------------------------------------
# Scoring


def find(level, contexts, ids, size):
    """The numbers at a level of the grams context + character (-1 where the model has none).

    contexts: numbers of the contexts at the level below (-1: unseen); ids: the next characters'
    ids (size: the unknown symbol, never part of a gram).
    """
    values = contexts * size + ids
    index = np.searchsorted(level.grams, values)
    inside = index < len(level.grams)
    found = (contexts >= 0) & (ids < size) & inside
    found[inside] &= level.grams[index[inside]] == values[inside]
    return np.where(found, index, -1)


def encode(model, text):
    """The ids of a text's characters; characters outside the training alphabet get the unknown id."""
    cps = read_utils.codepoints(text)
    index = np.minimum(np.searchsorted(model.alphabet, cps), len(model.alphabet) - 1)
    return np.where(model.alphabet[index] == cps, index, len(model.alphabet)).astype(np.int64)


def gram_keys(model, ids):
    """For k = 0..n-1, the number of the k-gram of the text ending at each position (-1: none).

    k = 0 is the empty gram, numbered 0 everywhere.
    """
    size = len(model.alphabet)
    keys = [np.zeros(len(ids), np.int64)]
    for k in range(1, model.order):
        keys.append(find(model.levels[k - 1], shifted(keys[-1], 0 if k == 1 else -1), ids, size))
    return keys


def probabilities(model, contexts, ids):
    """p(id | context) for a batch of queries, each context given by its numbers at every level.

    contexts[k] holds the number of each query's last k context characters as a k-gram (-1 when
    the training text does not have it or the context is shorter than k); ids are the predicted
    characters. The levels are applied from the uniform distribution upwards.
    """
    size = len(model.alphabet)
    p = np.full(len(ids), 1.0 / model.size)
    for k, level in enumerate(model.levels, start=1):
        context = contexts[k - 1]
        seen = context >= 0
        total = np.where(seen, level.context_total[np.maximum(context, 0)], 0.0)
        seen &= total > 0  # a context seen only at the very end of the training text has no followers
        total = np.where(seen, total, 1.0)
        backoff = np.where(seen, level.context_backoff[np.maximum(context, 0)], 0.0)
        gram = find(level, context, ids, size)
        count = np.where(gram >= 0, level.counts[np.maximum(gram, 0)], 0)
        own = np.where(count > 0, count - level.discounts[np.minimum(count, 3)], 0.0)
        p = np.where(seen, (own + backoff * p) / total, p)
    return p


def distribution(model, context):
    """p(w | context) for every w: the training alphabet in order, then the unknown symbol.

    Only the last n-1 characters of the context count.
    """
    ids = encode(model, context[max(0, len(context) - (model.order - 1)) :] if model.order > 1 else "")
    keys = gram_keys(model, ids)
    last = [key[-1] if len(key) else -1 for key in keys]
    last[0] = 0  # the empty context, even for an empty context string
    queries = np.arange(model.size, dtype=np.int64)
    return probabilities(model, [np.full(model.size, key, np.int64) for key in last], queries)


def text_probabilities(model, text):
    """p of each character of a text given the characters before it, from an empty context."""
    ids = encode(model, text)
    keys = gram_keys(model, ids)
    contexts = [keys[0]] + [shifted(key, -1) for key in keys[1:]]  # what precedes each character
    return probabilities(model, contexts, ids)


def loss(model, text):
    """The mean loss of a text under the model, in nats per character."""
    if not text:
        raise read_utils.InputError("the held-out text is empty")
    return float(-np.log(text_probabilities(model, text)).mean())


def unseen_share(model, text):
    """The share of a text's characters that are not in the training alphabet."""
    return float((encode(model, text) == len(model.alphabet)).mean())


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="kneser_ney.py", description="Held-out loss of an interpolated Kneser-Ney character n-gram model."
    )
    parser.add_argument("--input", help="a text file, split into training and held-out text as train.py splits it")
    parser.add_argument("--train", help="the training text file (with --heldout, instead of --input)")
    parser.add_argument("--heldout", help="the held-out text file (with --train)")
    parser.add_argument("--order", type=int, default=DEFAULT_ORDER, help="n of the n-gram model (default 4)")
    parser.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="with --input: the fraction of lines (or records) held out, as train.py's (default 0.05)")
    parser.add_argument("--discount", type=float, default=None,
                        help="one absolute discount in (0, 1] at every level (interpolated KN); "
                        "without it: modified KN, three discounts per level estimated from the counts")
    args = parser.parse_args(argv)
    if (args.input is None) == (args.train is None and args.heldout is None):
        parser.error("give either --input, or --train and --heldout")
    if args.input is None and (args.train is None or args.heldout is None):
        parser.error("--train and --heldout go together")
    if args.order < 1:
        parser.error("--order must be at least 1")
    if not 0 < args.val_fraction <= 0.5:
        parser.error("--val_fraction must be in (0, 0.5]")
    if args.discount is not None and not 0 < args.discount <= 1:
        parser.error("--discount must be in (0, 1]")
    return args


def texts(args):
    """(training text, held-out text) of the command line's files."""
    if args.input is not None:
        path = args.input
        return read_utils.split_text(read_utils.read_text(path), args.val_fraction, read_utils.split_kind(path))
    return read_utils.read_text(args.train), read_utils.read_text(args.heldout)


def report(train_text, heldout_text, order, discount):
    """The lines to print: the sizes of the texts, then the model's held-out loss."""
    if not train_text:
        raise read_utils.InputError("the training text is empty")
    model = train(train_text, order, discount)
    nats = loss(model, heldout_text)
    return [
        f"training characters: {len(train_text):,}; held-out: {len(heldout_text):,} "
        f"({100 * unseen_share(model, heldout_text):.2f}% unseen in training)",
        f"Kneser-Ney {order}-gram held-out loss: {nats:.4f} nats/char ({nats / math.log(2):.4f} bits/char)",
        describe_discounts(model, discount),
    ]


def describe_discounts(model, discount):
    if discount is not None:
        return f"(interpolated Kneser-Ney, absolute discount {discount:g} at every order)"
    per_level = "; ".join(
        f"{k}: " + " ".join(f"{d:.3f}" for d in level.discounts[1:]) for k, level in enumerate(model.levels, 1)
    )
    return f"(modified Kneser-Ney, discounts D1 D2 D3+ by order: {per_level})"


def main(argv=None):
    args = parse_args(argv)
    try:
        lines = report(*texts(args), args.order, args.discount)
    except read_utils.InputError as e:
        sys.exit(f"kneser_ney.py: error: {e}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
