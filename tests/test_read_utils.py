import json
import os

import numpy as np
import pytest

import read_utils
import trainer
from read_utils import InputError, StreamReader, Vocab


def test_vocab_is_most_frequent_first_with_unknown_at_zero():
    vocab = Vocab.build("aaabbc\n")
    assert vocab.chars == [read_utils.UNKNOWN, "a", "b", "\n", "c"]
    assert vocab.encode("abcz").tolist() == [1, 2, 4, 0]


def test_vocab_cap_keeps_the_most_frequent():
    vocab = Vocab.build("aaaabbbcc d", max_vocab=3)
    assert vocab.chars == [read_utils.UNKNOWN, "a", "b"]
    assert vocab.encode("abcd").tolist() == [1, 2, 0, 0]


def test_characters_rarer_than_min_count_are_left_to_the_unknown_entry():
    vocab = Vocab.build("aaabbcd\n", min_count=2)
    assert vocab.chars == [read_utils.UNKNOWN, "a", "b"]
    assert vocab.encode("abcd").tolist() == [1, 2, 0, 0]


def test_rare_characters_are_trained_as_unknown_and_a_resume_does_not_miss_them(tmp_path):
    path, cache = tmp_path / "corpus.txt", str(tmp_path / "cache")
    path.write_text("aaab\nbbc\n" * 50 + "xy\n", encoding="utf-8")  # x and y once, in training lines
    corpus = read_utils.encode_corpus(str(path), cache, 0.1, min_count=2)
    assert "x" not in corpus.vocab.chars and "y" not in corpus.vocab.chars
    assert corpus.counts[0] == 2 and (corpus.train_ids == 0).sum() == 2
    # The run's saved vocabulary lacks them by design: resuming on the same text names nothing unseen.
    resumed = read_utils.encode_corpus(str(path), str(tmp_path / "resumed"), 0.1, vocab=corpus.vocab, min_count=2)
    assert resumed.unseen == []
    # With every character kept, the cache is made again rather than reused.
    every = read_utils.encode_corpus(str(path), cache, 0.1, min_count=1)
    assert "x" in every.vocab.chars and every.counts[0] == 0


def test_vocab_json_round_trip(tmp_path):
    text = "春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n"
    vocab = Vocab.build(text)
    path = tmp_path / "vocab.json"
    vocab.save(str(path))
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk["chars"][0] == read_utils.UNKNOWN and "春" in on_disk["chars"]
    loaded = Vocab.load(str(path))
    assert loaded.chars == vocab.chars
    assert loaded.decode(loaded.encode(text)) == text


def test_encoding_is_compact_and_exact_for_a_large_alphabet():
    rng = np.random.default_rng(0)
    text = "".join(chr(c) for c in rng.integers(0x4E00, 0x4E00 + 3000, 200_000))
    vocab = Vocab.build(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.uint16
    assert vocab.decode(ids) == text


def test_decode_skips_the_unknown_token():
    vocab = Vocab.build("ab")
    assert vocab.decode([1, 0, 2]) == "ab"


def test_split_holds_out_every_twentieth_line():
    text = "".join(f"line{i}\n" for i in range(1, 101))
    train, val = read_utils.split_text(text, 0.05)
    assert val == "line20\nline40\nline60\nline80\nline100\n"
    assert len(train.splitlines()) == 95 and "line20\n" not in train and "line19\n" in train


def test_split_fraction_is_respected():
    text = "".join(f"{i}\n" for i in range(1000))
    _, val = read_utils.split_text(text, 0.1)
    assert len(val.splitlines()) == 100


def numbered_records(n):
    """n records of one to three lines; every seventh is followed by two empty lines instead of one."""
    return [
        "".join(f"r{i}l{k}\n" for k in range(1 + i % 3)) + ("\n\n" if i % 7 == 0 else "\n") for i in range(1, n + 1)
    ]


def test_split_holds_out_every_twentieth_record_whole():
    records = numbered_records(100)
    train, val = read_utils.split_text("".join(records), 0.05, read_utils.RECORDS)
    assert val == "".join(records[i - 1] for i in (20, 40, 60, 80, 100))
    assert train == "".join(record for i, record in enumerate(records, 1) if i % 20)
    # Empty lines before the first record belong to it.
    train, val = read_utils.split_text("\n\n" + "".join(records), 0.5, read_utils.RECORDS)
    assert train.startswith("\n\nr1l0\nr1l1\n\nr3l0\n") and val.startswith("r2l0\nr2l1\nr2l2\n\nr4l0\n")


@pytest.mark.parametrize("text, kind", [
    ("".join(f"line{i}\n" for i in range(200)), read_utils.LINES),  # poetry.txt: no empty lines
    ("".join(numbered_records(30)), read_utils.RECORDS),
    ("".join(f"line{i}\n" for i in range(100)) + "\n" + "".join(f"more{i}\n" for i in range(100)), read_utils.LINES),
    ("".join(f"line{i}\n" for i in range(200)) + "\n\n", read_utils.LINES),  # empty lines at the end only
    ("".join(f"line{i}\n\n" for i in range(200)), read_utils.RECORDS),  # double-spaced: records of one line
])
def test_split_kind_finds_records_separated_by_empty_lines(tmp_path, text, kind):
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    assert read_utils.split_kind(str(path)) == kind


@pytest.mark.parametrize("piece", [1, 2, 5])
def test_a_record_corpus_is_encoded_by_records_in_pieces(tmp_path, monkeypatch, piece):
    """Pieces cut records and their empty lines at every offset; the split must not notice."""
    path = tmp_path / "records.txt"
    text = "".join(numbered_records(60))
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(read_utils, "CHUNK_BYTES", piece)
    corpus = read_utils.encode_corpus(str(path), str(tmp_path / "cache"), 0.05)
    train, val = read_utils.split_text(text, 0.05, read_utils.RECORDS)
    assert corpus.split == read_utils.RECORDS
    assert corpus.vocab.decode(corpus.train_ids) == train and corpus.vocab.decode(corpus.val_ids) == val
    assert val.startswith("r20l0\nr20l1\nr20l2\n\n")
    # A cache whose key does not say it was split by records (as before records were known) is made again.
    meta_path = tmp_path / "cache" / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    del meta["key"]["split"]
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    written = os.stat(tmp_path / "cache" / "val.npy").st_mtime_ns
    read_utils.encode_corpus(str(path), str(tmp_path / "cache"), 0.05)
    assert os.stat(tmp_path / "cache" / "val.npy").st_mtime_ns != written
    assert json.loads(meta_path.read_text(encoding="utf-8"))["key"]["split"] == read_utils.RECORDS


def test_reader_windows_continue_and_targets_are_next_characters():
    ids = np.arange(1000, dtype=np.uint16)
    reader = StreamReader(ids, batch_size=4, seq_length=10)
    stream_length = 999 // 4
    assert reader.windows_per_epoch == stream_length // 10
    x0, y0, first = reader.window(0)
    x1, y1, _ = reader.window(1)
    assert first
    # Row i of window 1 continues row i of window 0; each stream is a contiguous slice of the text.
    assert (x1[:, 0] == x0[:, -1] + 1).all()
    assert (x0[:, 0] == np.arange(4) * stream_length).all()
    # Targets are the next character, including the window's last (no wrap-around to its start).
    assert (y0 == x0 + 1).all() and (y1 == x1 + 1).all()


def test_reader_wraps_to_a_new_epoch_and_flags_it():
    reader = StreamReader(np.arange(500, dtype=np.uint16), batch_size=2, seq_length=10)
    w = reader.windows_per_epoch
    x_again, _, starts = reader.window(w)
    assert starts and (x_again == reader.window(0)[0]).all()
    assert not reader.window(w + 1)[2]


def test_dataset_serves_each_calls_windows_from_any_start():
    reader = StreamReader(np.arange(2000, dtype=np.uint16), batch_size=4, seq_length=7)
    start, end = 5, 5 + reader.windows_per_epoch + 2  # across an epoch's end
    calls = read_utils.call_plan(start, end, 3, [reader.windows_per_epoch])
    step = start
    for x, y, starts in trainer.window_dataset(reader, calls):
        assert x.shape[1] == y.shape[1] == starts.shape[0] <= 3
        for i in range(x.shape[1]):
            ex, ey, es = reader.window(step)
            assert (x[:, i].numpy() == ex).all() and (y[:, i].numpy() == ey).all() and bool(starts[i]) == es
            step += 1
    assert step == end


def test_call_plan_covers_the_steps_once_and_ends_calls_at_every_interval():
    calls = read_utils.call_plan(7, 61, 8, [10, 25])
    firsts, counts = calls[:, 0], calls[:, 1]
    assert firsts[0] == 7 and (firsts[1:] == firsts[:-1] + counts[:-1]).all() and firsts[-1] + counts[-1] == 61
    assert counts.max() == 8 and counts.min() >= 1
    ends = set(firsts + counts)
    assert {10, 20, 25, 30, 40, 50, 60, 61} <= ends
    assert len(calls) == 12  # no call is cut where nothing happens
    assert read_utils.call_plan(30, 30, 8, [10]).shape == (0, 2)


def test_corpus_shorter_than_one_batch_is_an_input_error():
    with pytest.raises(InputError, match="fewer than one batch"):
        StreamReader(np.arange(100, dtype=np.uint16), batch_size=64, seq_length=64)


def test_eval_windows_score_every_character_once():
    ids = np.arange(10001, dtype=np.int32)
    windows = read_utils.EvalWindows(ids, num_streams=4, seq_length=64)
    targets = np.concatenate([y.ravel() for _, y in windows])
    assert windows.num_streams == 4
    assert len(targets) == windows.num_targets == 10000
    assert sorted(targets.tolist()) == list(range(1, 10001))
    assert read_utils.EvalWindows(ids[:1500], num_streams=4, seq_length=64).num_streams == 1


def test_read_text_normalises_bom_and_windows_line_ends(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes("\ufeff春眠不觉晓，\r\n处处闻啼鸟。\r\n".encode("utf-8"))
    assert read_utils.read_text(str(path)) == "春眠不觉晓，\n处处闻啼鸟。\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG image"),
        (b"\x1f\x8b\x08\x00\x00", "gzip"),
        ("春眠不觉晓，处处闻啼鸟。".encode("gbk"), "GBK"),
    ],
)
def test_read_text_rejects_bad_files_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_utils.read_text(str(path))


def test_read_text_rejects_a_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_utils.read_text(str(tmp_path))


# --- the encoded corpus cache -------------------------------------------------------------------

AWKWARD = "\ufeff春眠不觉晓，\r\n处处闻啼鸟。\r\n\r\nab\rcd\n夜来风雨声，花落知多少。"  # BOM, CRLF, CR, no final line break


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 64])
def test_text_read_in_pieces_is_the_whole_text(tmp_path, monkeypatch, piece):
    """Pieces split CRLF pairs and UTF-8 sequences at every offset; the text must not notice."""
    path = tmp_path / "awkward.txt"
    path.write_bytes(AWKWARD.encode("utf-8"))
    expected = "春眠不觉晓，\n处处闻啼鸟。\n\nab\ncd\n夜来风雨声，花落知多少。"
    monkeypatch.setattr(read_utils, "CHUNK_BYTES", piece)
    assert "".join(read_utils.text_chunks(str(path))) == expected


@pytest.mark.parametrize("piece", [5, 1 << 22])
def test_encoded_corpus_is_the_split_and_vocabulary_of_the_whole_text(tmp_path, monkeypatch, piece):
    from conftest import couplets

    path = tmp_path / "corpus.txt"
    text = couplets(300) + AWKWARD
    path.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(read_utils, "CHUNK_BYTES", piece)
    corpus = read_utils.encode_corpus(str(path), str(tmp_path / "cache"), 0.05)
    train, val = read_utils.split_text(read_utils.read_text(str(path)), 0.05)
    assert corpus.vocab.chars == Vocab.build(train).chars
    assert isinstance(corpus.train_ids, np.memmap) and corpus.train_ids.dtype == np.uint16
    np.testing.assert_array_equal(corpus.train_ids, corpus.vocab.encode(train))
    np.testing.assert_array_equal(corpus.val_ids, corpus.vocab.encode(val))
    np.testing.assert_array_equal(corpus.counts, np.bincount(corpus.train_ids, minlength=len(corpus.vocab)))
    assert corpus.vocab.decode(corpus.val_ids) == val and val.count("\n") == 15
    assert sorted(os.listdir(tmp_path / "cache")) == ["counts.npy", "meta.json", "train.npy", "val.npy", "vocab.json"]


def test_the_cache_is_reused_until_the_corpus_or_the_vocabulary_changes(tmp_path):
    path, cache = tmp_path / "corpus.txt", str(tmp_path / "cache")
    path.write_text("aaab\nbbc\n" * 50, encoding="utf-8")
    first = read_utils.encode_corpus(str(path), cache, 0.1)
    written = os.stat(os.path.join(cache, "train.npy")).st_mtime_ns
    again = read_utils.encode_corpus(str(path), cache, 0.1)
    assert os.stat(os.path.join(cache, "train.npy")).st_mtime_ns == written
    np.testing.assert_array_equal(again.train_ids, first.train_ids)
    # A given vocabulary (a resumed run's) encodes with its ids and names what it lacks.
    given = Vocab(["<unk>", "c", "a"])
    resumed = read_utils.encode_corpus(str(path), cache, 0.1, vocab=given)
    assert resumed.vocab.chars == given.chars and resumed.unseen == ["\n", "b"]
    assert set(np.unique(resumed.train_ids)) == {0, 1, 2}
    path.write_text("xyz\n" * 50, encoding="utf-8")
    changed = read_utils.encode_corpus(str(path), cache, 0.1)
    assert changed.vocab.decode(changed.train_ids[:4]) == "xyz\n"


def test_a_file_that_is_not_text_leaves_no_cache(tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes("春眠不觉晓，处处闻啼鸟。\n".encode("gbk") * 10)
    with pytest.raises(InputError, match="GBK"):
        read_utils.encode_corpus(str(path), str(tmp_path / "cache"), 0.05)
    assert not (tmp_path / "cache").exists()


def test_reader_serves_a_memory_mapped_corpus_like_one_in_memory(tmp_path):
    ids = np.random.default_rng(0).integers(0, 500, 5000).astype(np.uint16)
    np.save(tmp_path / "ids.npy", ids)
    mapped = StreamReader(np.load(tmp_path / "ids.npy", mmap_mode="r"), batch_size=4, seq_length=9)
    in_memory = StreamReader(ids, batch_size=4, seq_length=9)
    for step in (0, 7, mapped.windows_per_epoch + 3):
        for a, b in zip(mapped.window(step), in_memory.window(step)):
            np.testing.assert_array_equal(a, b)
