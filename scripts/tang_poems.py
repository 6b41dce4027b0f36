"""The Complete Tang Poems (chinese-poetry's 全唐诗 folder) as simplified text, for the metre scripts.

Each poem becomes a title line and one couplet per line, as the project lays out poems; editors'
notes in full-width parentheses (variant readings such as （一作「舊」）) are dropped, the text
around them kept. FORMS names the regulated shapes: 4 or 8 clauses of 5 or 7 characters,
'，' and '。' alternating.
"""

import glob
import json
import os
import re

import opencc

DEFAULT_FOLDER = os.path.join("data", "chinese-poetry", "全唐诗")
FORMS = {(5, 4): "五绝", (7, 4): "七绝", (5, 8): "五律", (7, 8): "七律"}  # (clause length, clauses) -> name
_NOTE = re.compile(r"（[^（）]*）")
_IDEOGRAPH = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]"
_COUPLET = {n: f"{_IDEOGRAPH}{{{n}}}，{_IDEOGRAPH}{{{n}}}。" for n in (5, 7)}


def is_ideograph(char):
    return re.fullmatch(_IDEOGRAPH, char) is not None


def poem_files(folder):
    files = sorted(glob.glob(os.path.join(folder, "poet.tang.*.json")))
    if not files:
        raise SystemExit(f"no poet.tang.*.json in {folder}; give --tang_dir, the folder 全唐诗 of chinese-poetry")
    return files


def read_poems(folder):
    """(title, body) of every poem, in simplified characters; the body is the poem's text in one line."""
    convert = opencc.OpenCC("t2s").convert
    for path in poem_files(folder):
        with open(path, encoding="utf-8") as f:
            for record in json.load(f):
                body = _NOTE.sub("", "".join(record["paragraphs"]))
                yield convert(record["title"]), convert(body)


def form_of(body):
    """五绝, 七绝, 五律 or 七律 for a body of that shape, else None."""
    for (n, clauses), name in FORMS.items():
        if re.fullmatch(f"(?:{_COUPLET[n]}){{{clauses // 2}}}", body):
            return name
    return None


def layout(title, body):
    """The poem as the project writes it: the title line, then one couplet per line."""
    return title + "\n" + body.replace("。", "。\n")


def regulated_poems(folder):
    """(form name, poem in the project's layout) of every poem of one of FORMS."""
    for title, body in read_poems(folder):
        form = form_of(body)
        if form:
            yield form, layout(title, body)
