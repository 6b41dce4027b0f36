"""How often real Tang poems rhyme and follow a standard tonal pattern, by metre.py's checker.

    python -m scripts.metre_rates --tang_dir ../shared/data/chinese-poetry/全唐诗 --poetry ../shared/data/poetry.txt

For each form (五绝, 七绝, 五律, 七律) of the Complete Tang Poems: the share of poems whose even
clauses rhyme in one level group and the share that follow a standard pattern; the same with each
poem's characters shuffled (punctuation kept in place), which is what chance alone gives; and the
same again with characters outside the table counting as either tone and any rhyme group, which
is what the table's gaps cost. Then the table's coverage of the characters of all the Tang poems
and of poetry.txt, and the rates of poetry.txt cut into pieces of 2 and 4 lines, the yardstick for
poems sampled from a model trained on it (its lines run on across poems).
"""

import os
import random

from absl import app, flags

import metre
from scripts import tang_poems

flags.DEFINE_string("tang_dir", tang_poems.DEFAULT_FOLDER, "folder of the Tang poems' poet.tang.*.json")
flags.DEFINE_string("poetry", "data/poetry.txt", "the poetry.txt corpus (one five-character couplet a line)")
flags.DEFINE_integer("seed", 0, "seed of the shuffles")
FLAGS = flags.FLAGS

LAYOUT = "，。？！\n"  # what a shuffle leaves in place


def shuffled(poem, rng):
    """The poem with the characters of its body (all lines but the title) in random order."""
    title, body = poem.split("\n", 1)
    letters = [char for char in body if char not in LAYOUT]
    rng.shuffle(letters)
    shuffled_letters = iter(letters)
    return title + "\n" + "".join(char if char in LAYOUT else next(shuffled_letters) for char in body)


def rates(table, poems):
    """(share rhyming, share following a standard pattern) of some poems."""
    rhyming = sum(map(table.rhymes, poems))
    following = sum(map(table.follows_pattern, poems))
    return rhyming / len(poems), following / len(poems)


def coverage(text):
    """(share of the text's ideographs in the table, of its distinct ideographs in the table)."""
    chars = [char for char in text if tang_poems.is_ideograph(char)]
    return known_share(chars), known_share(set(chars))


def known_share(chars):
    return sum(not metre.table().is_unknown(char) for char in chars) / len(chars)


def pieces(lines, size):
    """Consecutive runs of size lines, without a title line (an empty one stands for it)."""
    return ["\n" + "\n".join(lines[i : i + size]) for i in range(0, len(lines) - size + 1, size)]


def print_rates(label, poems, rng, lenient):
    """The rates of the poems, of their shuffles, and of the poems by lenient, a table that lets
    characters outside it count as either tone."""
    real, chance = rates(metre.table(), poems), rates(metre.table(), [shuffled(poem, rng) for poem in poems])
    gaps_ignored = rates(lenient, poems)
    print(
        f"{label}: {len(poems):>6,} poems | rhyme {real[0]:6.1%}, pattern {real[1]:6.1%} | "
        f"shuffled: rhyme {chance[0]:5.1%}, pattern {chance[1]:5.2%} | "
        f"unknown as either: rhyme {gaps_ignored[0]:6.1%}, pattern {gaps_ignored[1]:6.1%}"
    )


def main(argv):
    del argv
    if not os.path.isfile(FLAGS.poetry):
        raise SystemExit(f"no file {FLAGS.poetry}; give --poetry the path of poetry.txt")
    rng = random.Random(FLAGS.seed)
    lenient = metre.RhymeTable.from_file(unknown_as_either=True)
    by_form = {name: [] for name in tang_poems.FORMS.values()}
    bodies = []
    for title, body in tang_poems.read_poems(FLAGS.tang_dir):
        bodies.append(body)
        form = tang_poems.form_of(body)
        if form:
            by_form[form].append(tang_poems.layout(title, body))
    for form, poems in by_form.items():
        print_rates(form, poems, rng, lenient)
    tokens, distinct = coverage("".join(bodies))
    print(f"table coverage, Tang poems: {tokens:.2%} of characters, {distinct:.2%} of distinct ones")
    with open(FLAGS.poetry, encoding="utf-8") as f:
        text = f.read()
    tokens, distinct = coverage(text)
    print(f"table coverage, poetry.txt: {tokens:.2%} of characters, {distinct:.2%} of distinct ones")
    lines = text.splitlines()
    for size in (2, 4):
        print_rates(f"poetry.txt in {size} lines", pieces(lines, size), rng, lenient)


if __name__ == "__main__":
    app.run(main)
