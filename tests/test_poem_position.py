"""Where each character stands in a poem (poem_position.py): the slots and rhyme of a known poem,
the generator's tensor State against the corpus' features, and packing."""

import numpy as np
import pytest
import tensorflow as tf

import metre
import poem_position as pp
import read_utils

# 霜 and 乡 rhyme in 下平七阳; 鸟 has no level reading.
TEXT = "静夜思\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n\n春晓\n春眠不觉晓，处处闻啼鸟。\n\n"
VOCAB = read_utils.Vocab.build(TEXT)
FACTS = pp.CharFacts.of(VOCAB.chars)


def facts_after_each(text):
    """[(character, slot, rhyme group)] after each character of text, by features()."""
    found = pp.features(VOCAB.encode(text), FACTS)
    return [(char, *divmod(int(f), pp.GROUPS)) for char, f in zip(text, found)]


def slot(clauses, left=None, written=None):
    """The slot after this many clauses of the body, with this many characters left in the next
    (or written, while the first clause's length is not known)."""
    place = left if written is None else pp.COUNT_LIMIT + 1 + written
    return 1 + clauses * pp.PLACES + place


def test_the_slots_and_rhyme_of_a_known_poem():
    facts = facts_after_each(TEXT)
    yang = 1 + min(group.index for group in metre.level_groups_of("霜"))
    assert [group.name for group in metre.level_groups_of("乡")][0] == metre.level_groups_of("霜")[0].name
    title = facts[:3]
    assert all(s == 0 and g == 0 for _, s, g in title)  # a title: slot 0
    first_clause = facts[3:9]  # the title's line break, then 床前明月光: the clause length is not known yet
    assert [s for _, s, _ in first_clause] == [slot(0, written=n) for n in range(6)]
    comma = facts[9]
    assert comma == ("，", slot(1, 5), 0)  # the second clause, five characters to go
    second = facts[10:15]  # 疑是地上霜: 4, 3, 2, 1, 0 left; before 霜 the slot is "one left"
    assert [s for _, s, _ in second] == [slot(1, left) for left in (4, 3, 2, 1, 0)]
    stop = facts[15]
    assert stop == ("。", slot(2, 5), yang)  # the rhyme is set by the second clause's end
    empty_line = TEXT.index("\n\n春晓") + 1
    assert facts[empty_line] == ("\n", 0, 0)  # the empty line: a title comes, no rhyme yet
    assert {g for _, _, g in facts[empty_line:]} == {0}  # 鸟 has no level reading


def test_the_generators_state_steps_as_the_features_of_the_corpus():
    rng = np.random.default_rng(0)
    pieces = [*"，。！\n", *"东风明月光霜乡春花鸟"]
    texts = [TEXT[:40]] + ["".join(rng.choice(pieces, 40)) for _ in range(3)]
    vocab = read_utils.Vocab.build("".join(texts))
    facts = pp.CharFacts.of(vocab.chars)
    ids = np.stack([vocab.encode(text) for text in texts]).astype(np.int32)
    expected = np.stack([pp.features(row, facts) for row in ids])
    state, found = pp.State.start(len(ids)), []
    for t in range(ids.shape[1]):
        state = state.advance(tf.gather(facts.kind, ids[:, t]), tf.gather(facts.group, ids[:, t]))
        found.append(state.slots() * pp.GROUPS + state.rhyme)
    np.testing.assert_array_equal(np.stack(found, 1), expected)


def test_packed_ids_keep_the_character_and_unpack_to_slot_and_rhyme():
    import model as model_lib

    ids = VOCAB.encode(TEXT)
    packed = pp.model_ids(ids, VOCAB, True)
    chars, slots, groups = (np.asarray(x) for x in model_lib.unpack(tf.constant(packed)))
    np.testing.assert_array_equal(chars, ids)
    np.testing.assert_array_equal(slots * pp.GROUPS + groups, pp.features(ids, FACTS))
    assert pp.model_ids(ids, VOCAB, False) is ids
    assert (packed % read_utils.PACKED == ids).all()  # the readers' targets: the characters alone


def test_a_vocabulary_too_large_to_pack_is_refused():
    chars = [read_utils.UNKNOWN] + [chr(0x4E00 + i) for i in range(read_utils.PACKED)]  # one id too many
    with pytest.raises(read_utils.InputError, match="--max_vocab"):
        pp.model_ids(np.zeros(3, np.int32), read_utils.Vocab(chars), True)


def test_packed_ids_are_kept_in_the_cache_and_made_anew_for_other_ids_or_vocabulary(tmp_path):
    ids = VOCAB.encode(TEXT)
    made = pp.model_ids(ids, VOCAB, True, str(tmp_path))
    assert len(list(tmp_path.glob("positions-*.npy"))) == 1 and not list(tmp_path.glob("*.tmp*"))
    read = pp.model_ids(ids, VOCAB, True, str(tmp_path))
    assert isinstance(read, np.memmap)  # read back, not made again
    np.testing.assert_array_equal(read, made)
    np.testing.assert_array_equal(made, pp.model_ids(ids, VOCAB, True))
    reordered = read_utils.Vocab(VOCAB.chars[:1] + VOCAB.chars[:0:-1])
    np.testing.assert_array_equal(pp.model_ids(reordered.encode(TEXT), reordered, True, str(tmp_path)) % pp.STRIDE,
                                  reordered.encode(TEXT))
    pp.model_ids(ids[:-3], VOCAB, True, str(tmp_path))
    assert len(list(tmp_path.glob("positions-*.npy"))) == 3
