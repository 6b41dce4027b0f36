"""The built-in corpora, named instead of a path: `--input poetry` (the default) or `--input tang`.

- poetry: the original project's poetry.txt, one five-character couplet a line.
- tang: the Complete Tang Poems (全唐诗) of chinese-poetry/chinese-poetry, 58 JSON files in
  traditional characters, prepared into a UTF-8 text (prepare_tang) in the cache directory, once
  for every set of source checksums, OpenCC version and PREPARED_FORMAT.

Every file is downloaded on first use with keras.utils.get_file into data/, under its path in its
source repository, and checked against its sha256 in data/SHA256SUMS (kept in the repo); a file
with another checksum is refused by name and never read. data/README.md says where the corpora
come from and under which licence.

The prepared tang layout (docs/DESIGN.md) is one record per poem: the title line, one line per couplet
(the body cut after each 。？！), then an empty line:

    春晓
    春眠不觉晓，处处闻啼鸟。
    夜来风雨声，花落知多少。

Cleaning, after conversion to simplified characters with OpenCC t2s:
- body: the marks that enclose words of the poem itself (《》「」『』〈〉“”‘’) are removed and a run
  of clause marks keeps its first one (a stray '。' after '！'); then a body holding anything but
  CJK ideographs and ，。？！； is dropped: gaps (□, ●), editorial marks ([..], 〖..〗, {..}),
  notes and variant readings (（..）), private-use characters, described characters (⿰..),
  other punctuation. A body must be two or more clauses, each of ideographs ended by one mark,
  the last by 。？！;
- title: bracketed notes are removed, enclosing marks too, white space becomes one space; a
  title that is then empty or holds anything but ideographs, spaces and ○，。、：；？！· (a gap,
  a digit) drops its poem;
- duplicates: a poem whose cleaned body an earlier poem has is dropped.
"""

import collections
import functools
import hashlib
import json
import os
import re
import time
import typing
import urllib.parse

from absl import logging

import poem_forms
import read_utils

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
SHA256SUMS = os.path.join(DATA_DIR, "SHA256SUMS")  # "<sha256>  <path under data/>" lines, as sha256sum writes them

POETRY, TANG = "poetry", "tang"
NAMES = (POETRY, TANG)
DEFAULT = POETRY

POETRY_FILE = "poetry.txt"
POETRY_URL = "https://raw.githubusercontent.com/hzy46/Char-RNN-TensorFlow/master/data/poetry.txt"

TANG_COMMIT = "99ebbef7e1345c0985c44b9fd96a3f9e776f117b"
TANG_URL = f"https://raw.githubusercontent.com/chinese-poetry/chinese-poetry/{TANG_COMMIT}/"
TANG_DIR = "chinese-poetry"  # under data/; the files below keep their path in that repository
TANG_LICENSE = "LICENSE"
TANG_POEMS = tuple(f"全唐诗/poet.tang.{n}.json" for n in range(0, 58000, 1000))
PREPARED_FORMAT = 1  # a change of the cleaning or the layout bumps it, so prepared texts are made again


def resolve(name_or_path, cache_dir=None):
    """The UTF-8 text file of a built-in corpus (downloaded and prepared on first use), or a path as given.

    A built-in name wins over a file of that name in the working directory (write ./tang for the file).
    cache_dir holds the prepared tang text (default: read_utils.default_cache_dir()).
    """
    if name_or_path == POETRY:
        return poetry_path()
    if name_or_path == TANG:
        return tang_path(cache_dir)
    return name_or_path


def checksums(path=SHA256SUMS):
    """{path under data/: sha256} from a SHA256SUMS file."""
    with open(path, encoding="utf-8") as f:
        return {name: digest for digest, name in (line.rstrip("\n").split("  ", 1) for line in f if line.strip())}


def fetch(relative, origin, sha256, data_dir=DATA_DIR):
    """data_dir/relative, downloaded from origin with keras.utils.get_file unless it is there already.

    The file must have the given sha256: one with another is refused, whether found or downloaded.
    """
    target = os.path.join(data_dir, relative)
    if os.path.isfile(target):
        if read_utils.sha256_of(target) != sha256:
            raise refused(target)
        return target
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    if not os.access(directory, os.W_OK):  # get_file would quietly save to /tmp/.keras instead
        raise read_utils.InputError(f"cannot write to {directory}; make it writable to download {relative} there")
    import keras  # only for a download, so that naming a corpus that is in place loads no TensorFlow

    try:
        keras.utils.get_file(fname=os.path.basename(target), origin=origin, file_hash=sha256, hash_algorithm="sha256",
                             cache_dir=directory, cache_subdir="")
    except Exception as e:  # network errors come in many types; all mean the same to the user
        if os.path.isfile(target):  # downloaded, but not the file SHA256SUMS names
            raise refused(target) from None
        raise read_utils.InputError(
            f"could not download {relative} from {origin} ({e}); connect to the internet, or put the file at {target}"
        ) from None
    return target


def refused(path):
    return read_utils.InputError(
        f"{path} does not have the sha256 that {SHA256SUMS} gives for it (damaged, or another version), so it is "
        "not used; delete it to download it again, or put an intact copy there"
    )


def poetry_path(data_dir=DATA_DIR, origin=POETRY_URL):
    """data/poetry.txt, downloaded and checked on first use."""
    return fetch(POETRY_FILE, origin, checksums()[POETRY_FILE], data_dir)


def tang_sources(data_dir=DATA_DIR, base_url=TANG_URL):
    """{file under data/: (local path, sha256)} of the licence and the 58 JSON files, each in
    place and checked; base_url is the source repository's root at TANG_COMMIT."""
    sums = checksums()
    sources = {}
    for name in (TANG_LICENSE,) + TANG_POEMS:
        relative = f"{TANG_DIR}/{name}"
        path = fetch(relative, base_url + urllib.parse.quote(name), sums[relative], data_dir)
        sources[relative] = (path, sums[relative])
    return sources


def tang_path(cache_dir=None, data_dir=DATA_DIR, base_url=TANG_URL):
    """The prepared tang text, made from the checked sources on first use and kept in cache_dir."""
    sources = tang_sources(data_dir, base_url)
    path = prepared_path(sources, cache_dir)
    if os.path.isfile(path):
        return path
    text, stats = prepare_tang([sources[f"{TANG_DIR}/{name}"][0] for name in TANG_POEMS])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text_atomic(path, text)
    logging.info("prepared the tang corpus in %s: %s", path, stats.summary())
    return path


def prepared_path(sources, cache_dir=None):
    """Where the text prepared from sources ({file: (path, sha256)}) is kept in cache_dir: named by
    a digest of their checksums, the OpenCC version and PREPARED_FORMAT."""
    import opencc

    key = {"format": PREPARED_FORMAT, "opencc": opencc.__version__,
           "sources": {name: digest for name, (_, digest) in sources.items()}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return os.path.join(cache_dir or read_utils.default_cache_dir(), "prepared", f"tang-{digest[:16]}.txt")


def write_text_atomic(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


# --- preparation -----------------------------------------------------------------------------------

ENCLOSING_MARKS = "《》「」『』〈〉“”‘’"  # around words of the poem itself: removed, the words kept
CLAUSE_MARKS = "，。？！；"
LINE_ENDS = "。？！"
TITLE_EXTRAS = " ○，。、：；？！·"  # besides ideographs; ○ is the zero of numbers such as 一○七
_REMOVE_ENCLOSING = str.maketrans("", "", ENCLOSING_MARKS)
_REPEATED_MARKS = re.compile(f"([{CLAUSE_MARKS}])[{CLAUSE_MARKS}]+")
_CLAUSES = re.compile(f"(?:[^{CLAUSE_MARKS}]+[{CLAUSE_MARKS}])*[^{CLAUSE_MARKS}]+[{LINE_ENDS}]")
_LINES = re.compile(f"[^{LINE_ENDS}]*[{LINE_ENDS}]")
_NOTE = re.compile(r"[（(\[〖{][^（()）\[\]〖〗{}]*[）)\]〗}]")  # innermost first, so nested notes go too


def form_pattern(form):
    """A regular expression for a body of a poem_forms.Form: its couplets XXXXX，XXXXX。, nothing else."""
    clause = f"[^{CLAUSE_MARKS}]{{{form.clause_length}}}"
    return re.compile(f"(?:{clause}，{clause}。){{{form.lines}}}")


_FORMS = {form.name: form_pattern(form) for form in poem_forms.FORMS}
is_ideograph = functools.lru_cache(maxsize=None)(poem_forms.is_ideograph)  # a few thousand distinct characters


class PreparedStats(typing.NamedTuple):
    """What prepare_tang kept and dropped."""

    poems: int
    forms: dict  # {form name or "other": poems}
    dropped: dict  # {reason: poems}
    characters: int  # of the prepared text, line breaks included
    distinct: int  # distinct characters of the prepared text
    conversion_seconds: float  # OpenCC t2s over all titles and bodies

    def summary(self):
        forms = ", ".join(f"{name} {count:,}" for name, count in self.forms.items())
        dropped = ", ".join(f"{reason} {count:,}" for reason, count in self.dropped.items())
        return (f"{self.poems:,} poems ({forms}), {self.characters:,} characters, {self.distinct:,} distinct; "
                f"dropped: {dropped}; t2s conversion {self.conversion_seconds:.2f} s")


def prepare_tang(json_paths):
    """(prepared text, PreparedStats) of chinese-poetry JSON files, in their order (module docstring)."""
    import opencc

    converter = opencc.OpenCC("t2s")
    seen, records = set(), []
    forms, dropped = collections.Counter(), collections.Counter()
    conversion_seconds = 0.0
    for path in json_paths:
        start = time.perf_counter()
        poems = simplified(read_poems(path), converter)
        conversion_seconds += time.perf_counter() - start
        for raw_title, raw_body in poems:
            title, body = clean_title(raw_title), clean_body(raw_body)
            reason = drop_reason(title, body, seen)
            if reason:
                dropped[reason] += 1
                continue
            seen.add(body)
            forms[form_of(body) or "other"] += 1
            records.append(poem_record(title, body))
    text = "".join(records)
    stats = PreparedStats(len(records), dict(forms.most_common()), dict(dropped.most_common()), len(text),
                          len(set(text)), conversion_seconds)
    return text, stats


def drop_reason(title, body, seen_bodies):
    """Why a cleaned poem is dropped ("body", "title", "duplicate"), or None to keep it."""
    if body is None:
        return "body"
    if title is None:
        return "title"
    return "duplicate" if body in seen_bodies else None


def read_poems(path):
    """(title, body) of every poem in a chinese-poetry JSON file, the body its paragraphs joined."""
    try:
        with open(path, encoding="utf-8") as f:
            return [(poem["title"], "".join(poem["paragraphs"])) for poem in json.load(f)]
    except (ValueError, KeyError, TypeError) as e:
        raise read_utils.InputError(
            f"{path} is not a chinese-poetry file of poems with title and paragraphs ({type(e).__name__}: {e})"
        ) from None


def simplified(poems, converter):
    """The (title, body) pairs converted to simplified characters, in one call of the converter."""
    fields = [text.replace("\n", " ") for poem in poems for text in poem]
    converted = converter.convert("\n".join(fields)).split("\n")
    return list(zip(converted[0::2], converted[1::2], strict=True))


def clean_body(body):
    """The body as it is trained on, or None when the poem is dropped (module docstring)."""
    body = _REPEATED_MARKS.sub(r"\1", body.translate(_REMOVE_ENCLOSING))
    if not all(is_ideograph(char) or char in CLAUSE_MARKS for char in set(body)):
        return None
    if not _CLAUSES.fullmatch(body) or sum(body.count(mark) for mark in CLAUSE_MARKS) < 2:
        return None
    return body


def clean_title(title):
    """The title line, or None when the poem is dropped (module docstring)."""
    while (shorter := _NOTE.sub("", title)) != title:
        title = shorter
    title = " ".join(title.translate(_REMOVE_ENCLOSING).split())
    if not title or not all(is_ideograph(char) or char in TITLE_EXTRAS for char in set(title)):
        return None
    return title


def poem_record(title, body):
    """One record of the prepared layout: the title, one line per couplet, an empty line."""
    return title + "\n" + "\n".join(_LINES.findall(body)) + "\n\n"


def form_of(body):
    """The name of the fixed form (poem_forms.FORMS) a cleaned body has, or None."""
    return next((name for name, pattern in _FORMS.items() if pattern.fullmatch(body)), None)
