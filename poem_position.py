"""Where each character of a poem stands: the second input of a model trained with --poem_position.

A char-LSTM must learn by itself to count characters to a clause's end and to carry the rhyme of
the second clause over the twelve to thirty characters to the next even clause; ten minutes of
training teach it the first, not the second (docs/PERFORMANCE.md, "The Tang recipe"). With
--poem_position the model reads, beside each character, two facts about the text so far that the
text itself determines:

- its slot: in a title (or before any poem), or in which clause of the body (the first ten
  counted, later ones only odd or even), and the place in that clause: how many characters it
  has left to the length of the poem's first clause, or, in the first clause, how many it has;
- the 平水韵 level rhyme group of the character that ended the poem's second clause (none before it,
  or when that character has no level reading).

Both are embedded and added to the character's embedding. The model still chooses every
character from its own distribution: nothing is masked, so a rhyme is learnt, not enforced.

The layout is the record corpus' (read_utils.RECORDS): a poem is its title line, then its body,
then an empty line. The facts after a character follow from the State before it and the character:
State.advance steps each stream's in generator.py's compiled loop, and features() does the same
in Python ints over the training text's ids, which pack() then carries to the model
(tests/test_poem_position.py checks that the two agree).
"""

import hashlib
import json
import os
import typing

import numpy as np
import tensorflow as tf

import metre as metre_lib
import read_utils

NEWLINE = "\n"
CLAUSE_ENDS = "，。？！；"
COUNT_LIMIT = 8  # characters left in a clause, or written in the first, are counted up to this
PLACES = 2 * (COUNT_LIMIT + 1)  # places in a clause: characters left 0 .. 8, then characters written 0 .. 8
COUNTED_CLAUSES = 10  # clauses 1 .. 10 have slots of their own; later ones share two, odd and even
SLOTS = 1 + (COUNTED_CLAUSES + 2) * PLACES  # slot 0: a title, or no poem yet
GROUPS = 1 + len(metre_lib.level_groups())  # group 0: no rhyme yet
STRIDE = read_utils.PACKED  # a packed input is char id + STRIDE * (slot * GROUPS + group) (pack)
OTHER, LINE_BREAK, CLAUSE_END = range(3)  # the kinds of character that move the state
FORMAT = 1  # a change of what the features are bumps it, so cached packed ids are made again (model_ids)


class CharFacts(typing.NamedTuple):
    """Per vocabulary id: its kind (OTHER, LINE_BREAK or CLAUSE_END) and level group (0: none)."""

    kind: np.ndarray
    group: np.ndarray

    @classmethod
    def of(cls, chars):
        kind = np.array([LINE_BREAK if c == NEWLINE else CLAUSE_END if c in CLAUSE_ENDS else OTHER for c in chars])
        groups = [metre_lib.level_groups_of(c) for c in chars]
        group = np.array([1 + min(g.index for g in found) if found else 0 for found in groups])
        return cls(kind.astype(np.int32), group.astype(np.int32))


class State(typing.NamedTuple):
    """Per stream, what the facts after the next character depend on (tensors [n]; features()
    keeps the same as Python ints)."""

    after_newline: tf.Tensor  # bool: the last character was a line break
    in_title: tf.Tensor  # bool: between an empty line (or the start) and the line break that ends the title
    clauses: tf.Tensor  # int32: clauses the poem's body has ended
    written: tf.Tensor  # int32: characters in the current clause
    first_length: tf.Tensor  # int32: the first clause's length, 0 until it ends
    rhyme: tf.Tensor  # int32: the level group that ended the second clause, 0 until then (or none)
    last_group: tf.Tensor  # int32: the level group of the last character

    @classmethod
    def start(cls, n):
        """n streams at the start of a title, as after an empty line."""
        zeros, true = tf.zeros([n], tf.int32), tf.ones([n], tf.bool)
        return cls(true, true, zeros, zeros, zeros, zeros, zeros)

    def advance(self, kind, group):
        """The State after characters of these kinds and level groups ([n] each), as features() steps."""
        newline, clause_end = tf.equal(kind, LINE_BREAK), tf.equal(kind, CLAUSE_END)
        reset = newline & self.after_newline  # an empty line: the next line is a title
        ends = clause_end & ~self.in_title
        clauses = self.clauses + tf.cast(ends, tf.int32)
        written = tf.where(ends, 0, self.written + tf.cast(tf.equal(kind, OTHER) & ~self.in_title, tf.int32))
        return State(
            after_newline=newline,
            in_title=reset | (self.in_title & ~newline),
            clauses=tf.where(reset, 0, clauses),
            written=tf.where(reset, 0, written),
            first_length=tf.where(reset, 0, tf.where(ends & tf.equal(clauses, 1), self.written, self.first_length)),
            rhyme=tf.where(reset, 0, tf.where(ends & tf.equal(clauses, 2), self.last_group, self.rhyme)),
            last_group=group,
        )

    def slots(self):
        """The slot of the next character of each stream (the module's note)."""
        place = tf.where(self.first_length > 0, tf.clip_by_value(self.first_length - self.written, 0, COUNT_LIMIT),
                         COUNT_LIMIT + 1 + tf.minimum(self.written, COUNT_LIMIT))
        clause = tf.where(self.clauses < COUNTED_CLAUSES, self.clauses, COUNTED_CLAUSES + self.clauses % 2)
        return tf.where(self.in_title, 0, 1 + clause * PLACES + place)


def features(ids, facts):
    """[len(ids)] feature ids (slot * GROUPS + group) after each id, from the start of a title."""
    kinds, groups = facts.kind[ids].tolist(), facts.group[ids].tolist()
    out = np.empty(len(ids), np.int32)
    after_newline, in_title, clauses, written, first_length, rhyme, last_group = 1, 1, 0, 0, 0, 0, 0  # State.start
    for i, (kind, group) in enumerate(zip(kinds, groups)):
        if kind == LINE_BREAK:
            if after_newline:
                in_title, clauses, written, first_length, rhyme = 1, 0, 0, 0, 0
            else:
                in_title = 0
        elif kind == CLAUSE_END:
            if not in_title:
                clauses += 1
                if clauses == 1:
                    first_length = written
                elif clauses == 2:
                    rhyme = last_group
                written = 0
        elif not in_title:
            written += 1
        after_newline = kind == LINE_BREAK
        last_group = group
        if in_title:
            slot = 0
        else:
            if first_length:
                place = min(max(first_length - written, 0), COUNT_LIMIT)
            else:
                place = COUNT_LIMIT + 1 + min(written, COUNT_LIMIT)
            clause = clauses if clauses < COUNTED_CLAUSES else COUNTED_CLAUSES + clauses % 2
            slot = 1 + clause * PLACES + place
        out[i] = slot * GROUPS + rhyme
    return out


def model_ids(ids, vocab, reads_positions, cache_dir=None):
    """ids as a model reads them: packed with their positions (pack) when it reads them.

    With a cache_dir (the encoded corpus' cache), the packed ids are kept there, named by a hash of
    the ids, the vocabulary and FORMAT, and read back memory-mapped: features() is a Python pass
    over every character, seconds over the Tang poems at every start of a run.
    """
    if not reads_positions:
        return ids
    if len(vocab) > STRIDE:
        raise read_utils.InputError(
            f"--poem_position packs each character id below {STRIDE:,}, and the vocabulary has {len(vocab):,}: "
            f"train with --max_vocab {STRIDE}"
        )
    if cache_dir is None:
        return pack(ids, CharFacts.of(vocab.chars))
    key = hashlib.sha256(np.ascontiguousarray(ids).tobytes() + json.dumps([FORMAT, vocab.chars]).encode()).hexdigest()
    path = os.path.join(cache_dir, f"positions-{key[:16]}.npy")
    if os.path.isfile(path):
        return np.load(path, mmap_mode="r")
    packed = pack(ids, CharFacts.of(vocab.chars))
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, packed)
    os.replace(tmp, path)  # a crash leaves no half-written file under the name
    return packed


def pack(ids, facts):
    """ids with their features packed in (STRIDE): the model's input for --poem_position."""
    return np.asarray(ids, np.int32) + STRIDE * features(np.asarray(ids), facts)
