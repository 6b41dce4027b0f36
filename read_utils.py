"""Corpus loading, vocabulary and the batch reader for stateful training.

The corpus is read once into a compact id array (uint16 when the vocabulary fits). Training
reads it as B parallel contiguous streams cut into T-step windows, so row i of window k+1
continues row i of window k and the LSTM state can carry across windows.
"""

import hashlib
import json
import os
from fractions import Fraction

import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
CORPUS_NAME = "poetry.txt"
CORPUS_URL = "https://raw.githubusercontent.com/hzy46/Char-RNN-TensorFlow/master/data/poetry.txt"
CORPUS_SHA256 = "ffc4d1112de038bc26cd0271ef3094fe9bae98e36c72537f4997959dec167154"
DEFAULT_CORPUS = os.path.join(DATA_DIR, CORPUS_NAME)

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


class InputError(ValueError):
    """A problem with the user's input, reported as one line without a traceback."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_corpus_path():
    """The Tang poetry corpus in data/, downloaded and checksummed on first use."""
    if os.path.isfile(DEFAULT_CORPUS) and sha256_of(DEFAULT_CORPUS) == CORPUS_SHA256:
        return DEFAULT_CORPUS
    import keras  # only needed for the download

    try:
        return keras.utils.get_file(
            fname=CORPUS_NAME,
            origin=CORPUS_URL,
            file_hash=CORPUS_SHA256,
            hash_algorithm="sha256",
            cache_dir=HERE,
            cache_subdir="data",
        )
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise InputError(
            f"could not download the default corpus from {CORPUS_URL} ({e}); "
            f"download it by hand to {DEFAULT_CORPUS} or pass --input FILE"
        ) from None


def read_text(path):
    """Reads a UTF-8 text file; Windows line ends and a byte-order mark are normalised away."""
    if not os.path.exists(path):
        raise InputError(f"input file {path} does not exist; pass --input with a UTF-8 text file")
    if os.path.isdir(path):
        raise InputError(f"input {path} is a directory; pass --input with a UTF-8 text file")
    with open(path, "rb") as f:
        data = f.read()
    if not data.strip():
        raise InputError(f"input file {path} is empty; pass --input with a UTF-8 text file")
    for magic, kind in _BINARY_MAGIC.items():
        if data.startswith(magic):
            raise InputError(f"input file {path} is {kind}, not text; pass a UTF-8 text file")
    if b"\x00" in data[:65536]:
        raise InputError(
            f"input file {path} is binary (it contains NUL bytes), not UTF-8 text; "
            "pass a UTF-8 text file (UTF-16 files: convert with iconv -f UTF-16 -t UTF-8)"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        hint = ""
        try:
            data.decode("gb18030")
            hint = " It looks like GBK/GB18030-encoded Chinese:"
        except UnicodeDecodeError:
            pass
        raise InputError(
            f"input file {path} is not UTF-8 (bad byte at offset {e.start}).{hint} "
            f"convert it first, e.g. iconv -f GB18030 -t UTF-8 {path} > converted.txt"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def codepoints(text):
    """The text as an array of Unicode code points, without a Python loop per character."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def split_lines(text, val_fraction):
    """Deterministic split of whole lines: line n (1-based) is held out when n*f crosses an integer.

    With f = 0.05 that is lines 20, 40, 60, ...: one line in 20, spread over the whole file.
    Returns (train_text, val_text).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if val_fraction <= 0:
        return "\n".join(lines) + "\n", ""
    f = Fraction(val_fraction).limit_denominator(1_000_000)
    n = np.arange(1, len(lines) + 1, dtype=np.int64)
    held_out = (n * f.numerator) // f.denominator > ((n - 1) * f.numerator) // f.denominator
    train = [line for line, h in zip(lines, held_out) if not h]
    val = [line for line, h in zip(lines, held_out) if h]
    return "".join(line + "\n" for line in train), "".join(line + "\n" for line in val)


class Vocab:
    """Characters <-> ids. Id 0 is the unknown character; the rest are most frequent first."""

    def __init__(self, chars):
        if not chars or chars[0] != UNKNOWN:
            raise ValueError("a vocabulary starts with the unknown entry")
        self.chars = list(chars)
        self._codes = np.array([ord(c) for c in self.chars[1:]], dtype=np.int64)
        self._order = np.argsort(self._codes)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def build(cls, text, max_vocab=0):
        """From a text, most frequent first (ties by code point); max_vocab > 0 caps the size."""
        codes, counts = np.unique(codepoints(text), return_counts=True)
        order = np.lexsort((codes, -counts))
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
        cps = codepoints(text).astype(np.int64)
        sorted_codes = self._codes[self._order]
        pos = np.searchsorted(sorted_codes, cps).clip(0, max(len(sorted_codes) - 1, 0))
        found = sorted_codes[pos] == cps if len(sorted_codes) else np.zeros(len(cps), bool)
        ids = np.where(found, self._order[pos] + 1, 0)
        return ids.astype(self.dtype)

    def decode(self, ids, skip_unknown=True):
        return "".join(self.chars[i] for i in ids if i or not skip_unknown)

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


class StreamReader:
    """B contiguous streams over an id array, served as T-step (inputs, targets) windows.

    Stream i is ids[i*L : (i+1)*L + 1]; window k of every stream covers positions k*T .. k*T+T,
    targets being the inputs shifted by one character. Window k+1 continues window k, so the
    training step carries the LSTM state across windows and resets it when an epoch starts over.
    The reader position is simply the number of windows served, i.e. the training step.
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
        starts = np.arange(batch_size) * stream_length
        # (B, used + 1): one extra column so the last window has its targets.
        self.streams = ids[starts[:, None] + np.arange(used + 1)[None, :]]

    def window(self, step):
        """(inputs, targets, starts_epoch) of the window served at a given training step."""
        k = step % self.windows_per_epoch
        block = self.streams[:, k * self.seq_length : (k + 1) * self.seq_length + 1]
        return block[:, :-1], block[:, 1:], k == 0

    def dataset(self, start_step, end_step):
        """tf.data pipeline of windows for steps [start_step, end_step), prefetched."""
        streams = tf.constant(self.streams)
        T, W = self.seq_length, self.windows_per_epoch

        def window(step):
            k = step % W
            block = tf.cast(streams[:, k * T : (k + 1) * T + 1], tf.int32)
            return block[:, :-1], block[:, 1:], tf.equal(k, 0)

        ds = tf.data.Dataset.range(start_step, end_step).map(window).prefetch(2)
        options = tf.data.Options()
        # Autotuning stalls iterator teardown for seconds on TF 2.21 (DESIGN.md); prefetch(2) is enough.
        options.autotune.enabled = False
        return ds.with_options(options)


class EvalWindows:
    """All of an id array as (inputs, targets) windows over a few parallel streams, for evaluation.

    Every character but the last few (fewer than num_streams) is a target exactly once; the last
    window may be shorter than seq_length. Each stream starts from a zero state, which costs a
    few characters of context, so streams are kept at least min_stream_length long.
    """

    def __init__(self, ids, num_streams, seq_length, min_stream_length=1000):
        self.num_streams = max(1, min(num_streams, (len(ids) - 1) // min_stream_length))
        stream_length = (len(ids) - 1) // self.num_streams
        if stream_length < 1:
            raise InputError(f"the evaluation text has {len(ids)} characters; it needs at least 2")
        starts = np.arange(self.num_streams) * stream_length
        self.streams = ids[starts[:, None] + np.arange(stream_length + 1)[None, :]].astype(np.int32)
        self.seq_length = seq_length
        self.num_targets = self.num_streams * stream_length

    def __iter__(self):
        for k in range(0, self.streams.shape[1] - 1, self.seq_length):
            block = self.streams[:, k : k + self.seq_length + 1]
            yield block[:, :-1], block[:, 1:]
