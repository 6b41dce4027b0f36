"""Recipes: the flag defaults a new run takes from its corpus, each the best of those tried for
ten minutes of training on 2 cores (docs/PERFORMANCE.md, "Recipes").

train.py gives the flags that the command line leaves out the values of the recipe chosen here
(choose), and config.json and the log say which recipe was chosen and why. A recipe sets the
model, window, batch, dropout and learning rate; the number of steps is --max_steps, or what
--time_budget allows at the step rate measured after the warmup (trainer.decide_steps).
"""

import typing

import numpy as np

import read_utils

SMALL_CORPUS = 300_000  # characters: below this a corpus is memorised long before ten minutes are up
SMALL_ALPHABET = 300  # distinct characters: letters, digits and punctuation of an alphabetic script
LARGE_CORPUS = 2_000_000  # characters: above this, ten minutes see a large alphabet's text about once


class Recipe(typing.NamedTuple):
    name: str
    when: str  # the corpora it is for, as the log says it
    flags: dict  # train.py flag: value


RECIPES = {
    # The Complete Tang Poems (--input tang): wider windows and batches and a wider LSTM, and each
    # character's place in its poem and the rhyme so far fed beside it (poem_position.py).
    "tang": Recipe("tang", "the built-in Complete Tang Poems",
                   {"batch_size": 64, "seq_length": 32, "lstm_size": 256, "poem_position": True}),
    # poetry.txt (0.9 M characters, 5,400 distinct) and the like: a wide LSTM, and dropout enough
    # that ten minutes do not memorise it.
    "ideographic": Recipe("ideographic", f"{SMALL_CORPUS:,} to {LARGE_CORPUS:,} characters of a large alphabet",
                          {"lstm_size": 512, "dropout": 0.5}),
    "ideographic_large": Recipe("ideographic_large", f"over {LARGE_CORPUS:,} characters of a large alphabet",
                                {"batch_size": 64, "seq_length": 32, "lstm_size": 256}),
    # A small alphabet leaves the output layer cheap: a wider LSTM over longer windows, regularised.
    "alphabetic": Recipe("alphabetic", f"{SMALL_CORPUS:,} characters or more of at most {SMALL_ALPHABET} distinct ones",
                         {"lstm_size": 512, "seq_length": 64, "dropout": 0.25}),
    # Heavy dropout, and a schedule of a few passes that ends before the corpus is memorised,
    # validated often enough to keep the best weights of it.
    "small": Recipe("small", f"fewer than {SMALL_CORPUS:,} characters",
                    {"dropout": 0.5, "max_epochs": 15, "eval_every": 200, "save_every_n": 200}),
}
BY_CORPUS_NAME = {"tang": "tang", "poetry": "ideographic"}  # the built-in corpora (corpora.NAMES)


def choose(corpus_name, path):
    """(Recipe, why) for a new run on the text file path, which is the built-in corpus corpus_name
    (None for a user's file)."""
    if corpus_name in BY_CORPUS_NAME:
        recipe = RECIPES[BY_CORPUS_NAME[corpus_name]]
        return recipe, f"--input {corpus_name}"
    characters, alphabet = size_of(path)
    if characters < SMALL_CORPUS:
        name = "small"
    elif alphabet <= SMALL_ALPHABET:
        name = "alphabetic"
    elif characters > LARGE_CORPUS:
        name = "ideographic_large"
    else:
        name = "ideographic"
    return RECIPES[name], f"{characters:,} characters, {alphabet:,} distinct"


def size_of(path):
    """(characters, distinct characters) of a UTF-8 text file, read in pieces."""
    characters, seen = 0, np.zeros(read_utils.UNICODE_SIZE, bool)
    for piece in read_utils.text_chunks(path):
        cps = read_utils.codepoints(piece)
        characters += len(cps)
        seen[cps] = True
    return characters, int(seen.sum())
