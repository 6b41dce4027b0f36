"""Corpus loading, vocabulary and the batch reader for stateful training.

The corpus is read once into a compact id array (uint16 when the vocabulary fits). Training
reads it as B parallel contiguous streams cut into T-step windows, so row i of window k+1
continues row i of window k and the LSTM state can carry across windows.
"""

import codecs
import hashlib
import json
import os
import shutil
import typing
from fractions import Fraction

import numpy as np

UNKNOWN = "<unk>"  # vocabulary entry 0; never a single character, so it cannot clash with one
VOCAB_FORMAT = 1

# File signatures of formats people mistake for text.
_BINARY_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\x1f\x8b": "a gzip archive",
    b"PK\x03\x04": "a zip archive",
    b"%PDF": "a PDF document",
    b"\xff\xd8\xff": "a JPEG image",
    b"BZh": "a bzip2 archive",
    b"\xfd7zXZ": "an xz archive",
}


PACKED = 1 << 16  # ids at or above it carry more than a character (poem_position.pack); targets keep the character


class InputError(ValueError):
    """A problem with the user's input, reported as one line without a traceback."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CHUNK_BYTES = 1 << 22  # the file is read, decoded and split this many bytes (4 MB) at a time


def text_chunks(path):
    """The text of a UTF-8 file in pieces, checked and normalised (BOM dropped, CRLF and CR to LF).

    Reading CHUNK_BYTES at a time keeps memory flat however large the file; joined, the pieces
    are read_text().
    """
    check_text_file(path)
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset, held_back = 0, ""
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK_BYTES)
            try:
                text = held_back + decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise not_utf8_error(path, offset + e.start, data) from None
            offset += len(data)
            # A CR at the end may be the first half of a CRLF split between two reads.
            held_back = "\r" if data and text.endswith("\r") else ""
            text = text[: len(text) - len(held_back)]
            yield text.replace("\r\n", "\n").replace("\r", "\n")
            if not data:
                return


def check_text_file(path):
    """Errors for what is plainly not a text file: missing, a directory, a known binary format, NUL bytes."""
    if not os.path.exists(path):
        raise InputError(f"input file {path} does not exist; pass --input with a UTF-8 text file")
    if os.path.isdir(path):
        raise InputError(f"input {path} is a directory; pass --input with a UTF-8 text file")
    with open(path, "rb") as f:
        head = f.read(65536)
    for magic, kind in _BINARY_MAGIC.items():
        if head.startswith(magic):
            raise InputError(f"input file {path} is {kind}, not text; pass a UTF-8 text file")
    if b"\x00" in head:
        raise InputError(
            f"input file {path} is binary (it contains NUL bytes), not UTF-8 text; "
            "pass a UTF-8 text file (UTF-16 files: convert with iconv -f UTF-16 -t UTF-8)"
        )


def not_utf8_error(path, offset, data):
    hint = ""
    try:
        codecs.getincrementaldecoder("gb18030")().decode(data)  # a piece may end inside a character
        hint = " It looks like GBK/GB18030-encoded Chinese:"
    except UnicodeDecodeError:
        pass
    return InputError(
        f"input file {path} is not UTF-8 (bad byte at offset {offset}).{hint} "
        f"convert it first, e.g. iconv -f GB18030 -t UTF-8 {path} > converted.txt"
    )


def empty_error(path):
    return InputError(f"input file {path} is empty; pass --input with a UTF-8 text file")


def default_cache_dir():
    """$XDG_CACHE_HOME/charrnn, or ~/.cache/charrnn: encoded corpora, kept between runs."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "charrnn")


def read_text(path):
    """Reads a whole UTF-8 text file; Windows line ends and a byte-order mark are normalised away."""
    text = "".join(text_chunks(path))
    if not text.strip():
        raise empty_error(path)
    return text


def codepoints(text):
    """The text as an array of Unicode code points, without a Python loop per character."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def text_of(cps):
    return np.ascontiguousarray(cps, dtype=np.uint32).tobytes().decode("utf-32-le")


NEWLINE_CODE = ord("\n")
UNICODE_SIZE = 0x110000  # code points run from 0 to 0x10FFFF


LINES, RECORDS = "lines", "records"  # how a corpus is split for validation (split_kind)
RECORD_MAX_LINES = 50  # a text is a corpus of records when they average at most this many lines


class HeldOutIndex:
    """Which numbered units (lines or records, from 1) are held out: unit n when n*f crosses an
    integer, so with f = 0.05 units 20, 40, 60, ...: one in 20, spread over the whole text."""

    def __init__(self, val_fraction):
        f = Fraction(val_fraction).limit_denominator(1_000_000)
        self.num, self.den = f.numerator, f.denominator

    def held(self, index):
        return (index * self.num) // self.den > ((index - 1) * self.num) // self.den


class LineSplit(HeldOutIndex):
    """Which characters belong to held-out lines, decided piece by piece over a stream of text.

    A line's break belongs to the line.
    """

    def __init__(self, val_fraction):
        super().__init__(val_fraction)
        self.lines_before = 0  # line breaks in the pieces seen so far

    def held_out(self, cps):
        """A boolean mask over the code points of the next piece: True for held-out characters."""
        breaks = cps == NEWLINE_CODE
        line = self.lines_before + 1 + np.cumsum(breaks) - breaks
        self.lines_before += int(breaks.sum())
        return self.held(line)


class RecordSplit(HeldOutIndex):
    """Which characters belong to held-out records, decided piece by piece over a stream of text.

    A record is a run of lines ended by one or more empty lines, which belong to it: a poem of
    the tang corpus with its title and the empty line after it. A record starts at the first
    character after an empty line that is not a line break; empty lines before the first record
    belong to it.
    """

    def __init__(self, val_fraction):
        super().__init__(val_fraction)
        self.records = 0  # records started in the pieces seen so far
        self.last_two_breaks = np.array([True, True])  # the text begins as if after an empty line

    def record_numbers(self, cps):
        """The record number (from 1) of every code point of the next piece."""
        breaks = np.concatenate([self.last_two_breaks, cps == NEWLINE_CODE])
        starts = ~breaks[2:] & breaks[1:-1] & breaks[:-2]
        numbers = np.maximum(self.records + np.cumsum(starts), 1)
        self.records += int(starts.sum())
        self.last_two_breaks = breaks[-2:]
        return numbers

    def held_out(self, cps):
        """A boolean mask over the code points of the next piece: True for held-out characters."""
        return self.held(self.record_numbers(cps))


SPLITS = {LINES: LineSplit, RECORDS: RecordSplit}


def split_kind(path):
    """RECORDS when empty lines divide the file into records of at most RECORD_MAX_LINES lines on
    average (poems separated by empty lines, paragraphs), else LINES (poetry.txt: no empty lines;
    a long text with a few stray ones). An empty line has nothing between its two line breaks.
    Validation holds out whole records or whole lines accordingly."""
    counter, lines = RecordSplit(0), 0
    for piece in text_chunks(path):
        cps = codepoints(piece)
        counter.record_numbers(cps)
        lines += int((cps == NEWLINE_CODE).sum())
    return RECORDS if counter.records >= 2 and lines <= RECORD_MAX_LINES * counter.records else LINES


def split_text(text, val_fraction, kind=LINES):
    """(train_text, val_text) of whole lines or whole records (kind, see split_kind); every line
    ends in a line break."""
    if text and not text.endswith("\n"):
        text += "\n"
    cps = codepoints(text)
    held = SPLITS[kind](val_fraction).held_out(cps)
    return text_of(cps[~held]), text_of(cps[held])


class Vocab:
    """Characters <-> ids. Id 0 is the unknown character; the rest are most frequent first."""

    def __init__(self, chars):
        if not chars or chars[0] != UNKNOWN:
            raise ValueError("a vocabulary starts with the unknown entry")
        self.chars = list(chars)
        self._codes = np.array([ord(c) for c in self.chars[1:]], dtype=np.uint32)
        self._ids = np.zeros(UNICODE_SIZE, self.dtype)  # id of every code point, 0 when unknown
        self._ids[self._codes] = np.arange(1, len(self.chars))
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def build(cls, text, max_vocab=0, min_count=1):
        """From a text, most frequent first (ties by code point); max_vocab > 0 caps the size, and
        characters that occur fewer than min_count times are left to the unknown entry."""
        return cls.from_counts(*np.unique(codepoints(text), return_counts=True), max_vocab, min_count)

    @classmethod
    def from_counts(cls, codes, counts, max_vocab=0, min_count=1):
        """From distinct code points and how often each occurs, as build() orders them."""
        order = np.lexsort((codes, -counts))
        order = order[counts[order] >= min_count]
        if max_vocab > 0:
            order = order[: max_vocab - 1]
        return cls([UNKNOWN] + [chr(c) for c in codes[order]])

    def __len__(self):
        return len(self.chars)

    @property
    def dtype(self):
        return np.uint16 if len(self) <= np.iinfo(np.uint16).max + 1 else np.uint32

    def encode(self, text):
        """Text to a compact id array; characters outside the vocabulary become 0."""
        return self.encode_codepoints(codepoints(text))

    def encode_codepoints(self, cps):
        return self._ids[cps]

    def decode(self, ids):
        """Ids to text; the unknown id is left out."""
        ids = np.asarray(ids)
        return text_of(self._codes[ids[ids > 0] - 1])

    def id_of(self, char):
        return self._index.get(char, 0)

    def unknown_chars(self, text):
        """The distinct characters of text that the vocabulary does not hold, in order of appearance."""
        return [c for c in dict.fromkeys(text) if c not in self._index]

    def to_json(self):
        return {"format": VOCAB_FORMAT, "unknown": UNKNOWN, "chars": self.chars}

    @classmethod
    def from_json(cls, obj):
        if not isinstance(obj, dict) or obj.get("format") != VOCAB_FORMAT or "chars" not in obj:
            raise ValueError("not a CharRNN vocabulary")
        return cls(obj["chars"])

    def save(self, path):
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.load(f))


def write_json_atomic(path, obj):
    """Writes JSON so that a crash leaves either the old file or the new one, never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Corpus(typing.NamedTuple):
    """A corpus encoded to ids: its vocabulary and its training and held-out ids, memory-mapped."""

    vocab: Vocab
    train_ids: np.ndarray
    val_ids: np.ndarray
    counts: np.ndarray  # occurrences of each id in the training ids
    unseen: list  # training characters outside a given vocabulary that min_count would keep (none for a built one)
    split: str  # LINES or RECORDS: what validation holds out (split_kind)


CACHE_FORMAT = 1


def encode_corpus(path, cache_dir, val_fraction, vocab=None, max_vocab=0, sha256=None, min_count=1):
    """The Corpus of a text file, encoded once into cache_dir and memory-mapped from there.

    Characters that occur fewer than min_count times in the training text are trained as the
    unknown character, so that the model keeps probability for characters it has not seen.

    The cache is reused while the file (by its sha256), the split and the vocabulary stay the
    same, and rebuilt otherwise. Encoding reads the file once to choose the split (split_kind) and
    once more in pieces: each piece is split into training and held-out lines or records, their
    code points go to temporary files and the training ones are counted; then the vocabulary is
    built from the counts (unless one is given) and the code points are mapped to ids. Memory
    stays flat whatever the file's size.
    """
    sha256 = sha256 or sha256_of(path)
    key = {"format": CACHE_FORMAT, "corpus_sha256": sha256, "val_fraction": val_fraction,
           "split": split_kind(path), "max_vocab": max_vocab, "min_count": min_count, "given_vocab": vocab is not None}
    cached = load_cached_corpus(cache_dir, key, vocab)
    if cached:
        return cached
    os.makedirs(cache_dir, exist_ok=True)
    meta_path = os.path.join(cache_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the files are about to change: never leave a key that does not match them
    try:
        counts_by_code = split_code_points(path, val_fraction, cache_dir, key["split"])
        if vocab is None:
            codes = np.flatnonzero(counts_by_code)
            vocab = Vocab.from_counts(codes, counts_by_code[codes], max_vocab, min_count)
        for part in ("train", "val"):
            write_ids(os.path.join(cache_dir, f"{part}.cp"), os.path.join(cache_dir, f"{part}.npy"), vocab)
    except BaseException:
        shutil.rmtree(cache_dir, ignore_errors=True)  # not a text file, interrupted, disk full: leave nothing
        raise
    counts = np.zeros(len(vocab), np.int64)
    np.add.at(counts, vocab.encode_codepoints(np.arange(UNICODE_SIZE)), counts_by_code)
    np.save(os.path.join(cache_dir, "counts.npy"), counts)
    vocab.save(os.path.join(cache_dir, "vocab.json"))
    frequent = np.flatnonzero(counts_by_code >= max(min_count, 1))
    unseen = [chr(c) for c in frequent if not vocab.encode_codepoints(c)] if key["given_vocab"] else []
    write_json_atomic(meta_path, {"key": key, "unseen": unseen})
    return load_cached_corpus(cache_dir, key, vocab)


def split_code_points(path, val_fraction, out_dir, kind):
    """Streams the file into out_dir/train.cp and val.cp (raw uint32 code points, every line
    ending in a line break), holding out lines or records (kind); returns how often each code
    point occurs in the training text."""
    counts = np.zeros(UNICODE_SIZE, np.int64)
    split = SPLITS[kind](val_fraction)
    has_text, last = False, "\n"
    with open(os.path.join(out_dir, "train.cp"), "wb") as train, open(os.path.join(out_dir, "val.cp"), "wb") as val:

        def add(cps):
            held = split.held_out(cps)
            kept = cps[~held]
            train.write(kept.tobytes())
            val.write(cps[held].tobytes())
            counts[:] += np.bincount(kept, minlength=UNICODE_SIZE)

        for piece in text_chunks(path):
            if piece:
                add(codepoints(piece))
                has_text = has_text or bool(piece.strip())
                last = piece[-1]
        if last != "\n":
            add(np.array([NEWLINE_CODE], np.uint32))
    if not has_text:
        raise empty_error(path)
    return counts


def write_ids(cp_path, npy_path, vocab, chunk=1 << 22):
    """Maps the raw code points in cp_path to vocab ids in a .npy file, and removes cp_path."""
    length = os.path.getsize(cp_path) // 4
    tmp = f"{npy_path}.tmp{os.getpid()}"
    with open(cp_path, "rb") as source, open(tmp, "wb") as target:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(vocab.dtype)), "fortran_order": False, "shape": (length,)}
        np.lib.format.write_array_header_1_0(target, header)
        while len(cps := np.fromfile(source, np.uint32, chunk)):
            target.write(vocab.encode_codepoints(cps).tobytes())
    os.replace(tmp, npy_path)
    os.remove(cp_path)


def load_cached_corpus(cache_dir, key, vocab=None):
    """The Corpus in cache_dir if it was encoded with this key (and this vocab, when one is given)."""
    try:
        with open(os.path.join(cache_dir, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        cached_vocab = Vocab.load(os.path.join(cache_dir, "vocab.json"))
        if meta["key"] != key or (vocab is not None and cached_vocab.chars != vocab.chars):
            return None
        train_ids, val_ids = (np.load(os.path.join(cache_dir, f"{part}.npy"), mmap_mode="r") for part in ("train", "val"))
        counts = np.load(os.path.join(cache_dir, "counts.npy"))
        return Corpus(cached_vocab, train_ids, val_ids, counts, meta["unseen"], key["split"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: encode again


class StreamReader:
    """B contiguous streams over an id array, served as T-step (inputs, targets) windows.

    Stream i is ids[i*L : (i+1)*L + 1]; window k of every stream covers positions k*T .. k*T+T,
    targets being the inputs shifted by one character. Window k+1 continues window k, so the
    training step carries the LSTM state across windows and resets it when an epoch starts over.
    The reader position is simply the number of windows served, i.e. the training step.
    The streams are a strided view of ids, so a memory-mapped corpus is read a window at a time.
    """

    def __init__(self, ids, batch_size, seq_length):
        stream_length = (len(ids) - 1) // batch_size
        self.windows_per_epoch = stream_length // seq_length
        if self.windows_per_epoch < 1:
            raise InputError(
                f"the training text has {len(ids):,} characters, fewer than one batch of "
                f"{batch_size} streams x {seq_length + 1} characters; use a longer corpus or a "
                "smaller --batch_size / --seq_length"
            )
        self.batch_size = batch_size
        self.seq_length = seq_length
        used = self.windows_per_epoch * seq_length
        # (B, used + 1): one extra column so the last window has its targets.
        step = ids.strides[0]
        self.streams = np.lib.stride_tricks.as_strided(
            ids, shape=(batch_size, used + 1), strides=(stream_length * step, step), writeable=False
        )

    def window(self, step):
        """(inputs, targets, starts_epoch) of the window served at a given training step."""
        k = step % self.windows_per_epoch
        block = self.streams[:, k * self.seq_length : (k + 1) * self.seq_length + 1].astype(np.int32)
        return block[:, :-1], block[:, 1:] % PACKED, k == 0

    def windows(self, first_step, count):
        """(inputs [B, count, T], targets [B, count, T], starts_epoch [count]): the windows of count
        steps from first_step, as one training call takes them."""
        x, y, starts_epoch = zip(*(self.window(first_step + i) for i in range(count)))
        return np.stack(x, 1), np.stack(y, 1), np.array(starts_epoch)


def call_plan(start, end, steps_per_call, intervals):
    """(first step, number of steps) of each training call over the steps [start, end), an int array
    [calls, 2]: a call has at most steps_per_call steps, and ends at every multiple of each
    interval, where train.py logs, validates or saves."""

    def calls():
        step = start
        while step < end:
            stop = min([end, step + steps_per_call] + [(step // n + 1) * n for n in intervals])
            yield from (step, stop - step)
            step = stop

    return np.fromiter(calls(), np.int64).reshape(-1, 2)


class EvalWindows:
    """All of an id array as (inputs, targets) windows over a few parallel streams, for evaluation.

    Every character but the last few (fewer than num_streams) is a target exactly once; the last
    window may be shorter than seq_length. Each stream starts from a zero state, which costs a
    few characters of context, so streams are kept at least min_stream_length long. max_chars
    keeps evaluation of a huge held-out set short: only its first max_chars characters count.
    """

    def __init__(self, ids, num_streams, seq_length, min_stream_length=1000, max_chars=None):
        ids = ids[:max_chars]
        self.num_streams = max(1, min(num_streams, (len(ids) - 1) // min_stream_length))
        stream_length = (len(ids) - 1) // self.num_streams
        if stream_length < 1:
            raise InputError(f"the evaluation text has {len(ids)} characters; it needs at least 2")
        starts = np.arange(self.num_streams) * stream_length
        self.streams = ids[starts[:, None] + np.arange(stream_length + 1)[None, :]].astype(np.int32)
        self.seq_length = seq_length
        self.num_targets = self.num_streams * stream_length
        self.num_unknown_targets = int((self.streams[:, 1:] % PACKED == 0).sum())

    def __iter__(self):
        for k in range(0, self.streams.shape[1] - 1, self.seq_length):
            block = self.streams[:, k : k + self.seq_length + 1]
            yield block[:, :-1], block[:, 1:] % PACKED
