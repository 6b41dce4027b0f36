"""The built-in corpora: preparation of chinese-poetry JSON, download and checksums, names on the
command line. The download tests fetch the real files of ../shared/data through file:// URLs,
with keras.utils.get_file as a user's first run does."""

import json
import os
import re
import shutil
import urllib.parse

import pytest

import corpora
import read_utils
import recipes
import run_dir as run_dir_lib  # the tests name their run directories run_dir
from conftest import ROOT, TINY_MODEL, run_script
from read_utils import InputError

SHARED = os.path.join(ROOT, "..", "shared", "data")
SOURCE = os.path.join(SHARED, "chinese-poetry")
needs_source = pytest.mark.skipif(not os.path.isdir(SOURCE), reason="../shared/data/chinese-poetry is not here")


def write_json(path, poems):
    path.write_text(json.dumps([{"author": "佚名", "title": title, "paragraphs": paragraphs, "id": str(i)}
                                for i, (title, paragraphs) in enumerate(poems)], ensure_ascii=False), encoding="utf-8")
    return str(path)


# --- preparation ------------------------------------------------------------------------------------

FIRST_FILE = [
    ("春曉（一作春眠）", ["春眠不覺曉，處處聞啼鳥。", "夜來風雨聲，花落知多少。"]),
    ("弔白居易", ["童子解吟《長恨曲》，胡兒能唱《琵琶篇》。"]),  # enclosing marks go, the words stay
    ("經鄒魯[一]", ["夫子何爲者？栖栖一代中。"]),  # a line ends at '？'
    ("缺字", ["寒山□□路，白日照高臺。"]),  # a gap
    ("校記", ["闌風長雨（一作「東風細雨」）秋紛紛，四海八荒同一雲。"]),  # a variant reading
    ("標記", ["迨[□]此躋覽，依然是疇昔。"]),  # an editorial mark
    ("注", ["鶴立蛇形勢未休，五天文字鬼神愁。〖1〗"]),  # a note's mark
    ("私用", ["拭淚聽猿\ue829，骨肉初分愛。"]),  # a private-use character
    ("一句", ["獨坐幽篁裏。"]),  # one clause only
    ("悲夫", ["朋益友自遠來，鼓腹擊壤歌康哉！。"]),  # a stray mark after '！' is dropped
    ("（其二）", ["空山不見人，但聞人語響。"]),  # nothing left of the title
    ("秋寄□江", ["返景入深林，復照青苔上。"]),  # a gap in the title
]
SECOND_FILE = [
    ("春晓", ["春眠不觉晓，处处闻啼鸟。", "夜来风雨声，花落知多少。"]),  # the first poem again, simplified
    ("因覽《寶林傳》 二", ["祖月禪風集寶林，二千餘載道堪尋。", "雖分西國與東國，不隔人心到佛心。"]),
]
PREPARED = (
    "春晓\n春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n\n"
    "吊白居易\n童子解吟长恨曲，胡儿能唱琵琶篇。\n\n"
    "经邹鲁\n夫子何为者？\n栖栖一代中。\n\n"
    "悲夫\n朋益友自远来，鼓腹击壤歌康哉！\n\n"
    "因览宝林传 二\n祖月禅风集宝林，二千余载道堪寻。\n虽分西国与东国，不隔人心到佛心。\n\n"
)


def test_preparation_converts_cleans_lays_out_and_drops_duplicates(tmp_path):
    paths = [write_json(tmp_path / "poet.tang.0.json", FIRST_FILE), write_json(tmp_path / "poet.tang.1000.json", SECOND_FILE)]
    text, stats = corpora.prepare_tang(paths)
    assert text == PREPARED
    assert stats.poems == 5 and stats.dropped == {"body": 6, "title": 2, "duplicate": 1}
    assert stats.forms == {"五言绝句": 1, "other": 3, "七言绝句": 1}
    assert stats.characters == len(PREPARED) and stats.distinct == len(set(PREPARED))
    assert read_utils.RECORDS == split_kind_of(tmp_path, text)


def split_kind_of(tmp_path, text):
    path = tmp_path / "prepared.txt"
    path.write_text(text, encoding="utf-8")
    return read_utils.split_kind(str(path))


def test_a_file_that_is_not_chinese_poetry_json_is_a_clear_error(tmp_path):
    path = tmp_path / "poet.tang.0.json"
    path.write_text('[{"author": "x", "content": []}]', encoding="utf-8")
    with pytest.raises(InputError, match=r"poet\.tang\.0\.json is not a chinese-poetry file"):
        corpora.prepare_tang([str(path)])


def test_the_prepared_text_is_keyed_by_checksums_and_the_opencc_version(tmp_path, monkeypatch):
    import opencc

    sources = {"chinese-poetry/全唐诗/poet.tang.0.json": ("x", "a" * 64)}
    path = corpora.prepared_path(sources, str(tmp_path))
    assert path.startswith(str(tmp_path)) and path == corpora.prepared_path(dict(sources), str(tmp_path))
    assert path != corpora.prepared_path({"chinese-poetry/全唐诗/poet.tang.0.json": ("x", "b" * 64)}, str(tmp_path))
    monkeypatch.setattr(opencc, "__version__", "0.0.1")
    assert path != corpora.prepared_path(sources, str(tmp_path))


# --- download and checksums -------------------------------------------------------------------------

def file_url(directory):
    return "file://" + urllib.parse.quote(os.path.abspath(directory)) + "/"


def partial_source(root, replace=None, upto=2):
    """A copy of the licence and the first `upto` poem files of ../shared/data/chinese-poetry,
    with replace = {file: new bytes}."""
    os.makedirs(root / "全唐诗")
    for name in (corpora.TANG_LICENSE,) + corpora.TANG_POEMS[:upto]:
        shutil.copyfile(os.path.join(SOURCE, name), root / name)
    for name, data in (replace or {}).items():
        (root / name).write_bytes(data)
    return file_url(root)


def test_the_checksums_file_names_every_file_of_the_built_in_corpora():
    sums = corpora.checksums()
    expected = {corpora.POETRY_FILE} | {f"{corpora.TANG_DIR}/{name}" for name in (corpora.TANG_LICENSE,) + corpora.TANG_POEMS}
    assert set(sums) == expected and len(expected) == 60
    assert all(re.fullmatch("[0-9a-f]{64}", digest) for digest in sums.values())


@needs_source
def test_download_checks_every_file_and_prepares_the_tang_layout(tmp_path):
    data_dir, cache_dir = tmp_path / "data", str(tmp_path / "cache")
    path = corpora.tang_path(cache_dir, str(data_dir), file_url(SOURCE))
    downloaded = data_dir / "chinese-poetry"
    assert sorted(os.listdir(downloaded / "全唐诗")) == sorted(os.path.basename(name) for name in corpora.TANG_POEMS)
    assert (downloaded / "LICENSE").read_text(encoding="utf-8").count("Copyright (c) 2016 JackeyGao") == 1
    text = read_utils.read_text(path)
    records = text.split("\n\n")[:-1]
    assert text.endswith("\n\n") and 50_000 < len(records) < 52_000
    assert records[0] == ("帝京篇十首 一\n秦川雄帝宅，函谷壮皇居。\n绮殿千寻起，离宫百雉余。\n"
                          "连甍遥接汉，飞观迥凌虚。\n云日隐层阙，风烟出绮疎。")
    line = re.compile("(?:[^，。？！；\n]+[，；])*[^，。？！；\n]+[。？！]")
    for record in records:
        title, *body = record.split("\n")
        assert title and body and all(line.fullmatch(couplet) for couplet in body), record
    assert not set("國風無爲時來東門") & set(text)  # traditional characters that t2s changes
    # Files in place with their checksums are not downloaded again, nor is the text prepared again.
    written = os.stat(path).st_mtime_ns
    assert corpora.tang_path(cache_dir, str(data_dir), file_url(tmp_path / "nowhere")) == path
    assert os.stat(path).st_mtime_ns == written


@needs_source
def test_a_corrupted_download_is_refused_by_name_and_never_read(tmp_path):
    bad = corpora.TANG_POEMS[1]
    damaged = open(os.path.join(SOURCE, bad), "rb").read().replace("秦".encode(), "泰".encode(), 1)
    data_dir = tmp_path / "data"
    with pytest.raises(InputError, match=r"poet\.tang\.1000\.json does not have the sha256 that .*SHA256SUMS"):
        corpora.tang_path(str(tmp_path / "cache"), str(data_dir), partial_source(tmp_path / "source", {bad: damaged}))
    assert not (tmp_path / "cache").exists()  # nothing was prepared
    # The damaged file stays where it landed and is refused again, by name, until it is deleted.
    with pytest.raises(InputError, match=r"poet\.tang\.1000\.json .*; delete it to download it again"):
        corpora.tang_sources(str(data_dir), file_url(SOURCE))


@needs_source
def test_a_file_missing_at_the_source_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match=r"could not download chinese-poetry/全唐诗/poet\.tang\.2000\.json from file://"):
        corpora.tang_sources(str(tmp_path / "data"), partial_source(tmp_path / "source"))


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, "poetry.txt")), reason="../shared/data/poetry.txt is not here")
def test_poetry_is_downloaded_once_and_checked(tmp_path):
    origin = file_url(SHARED) + "poetry.txt"
    path = corpora.poetry_path(str(tmp_path), origin)
    assert path == str(tmp_path / "poetry.txt") and read_utils.sha256_of(path) == corpora.checksums()["poetry.txt"]
    assert corpora.poetry_path(str(tmp_path), "file:///nowhere/poetry.txt") == path
    with open(path, "ab") as f:
        f.write("春".encode())
    with pytest.raises(InputError, match="poetry.txt does not have the sha256"):
        corpora.poetry_path(str(tmp_path), origin)


def test_a_path_is_not_a_name():
    assert corpora.resolve("my/poems.txt") == "my/poems.txt"
    assert corpora.resolve("./tang") == "./tang"


# --- the built-in name on the command line ---------------------------------------------------------

TANG_IN_PLACE = os.path.isdir(os.path.join(corpora.DATA_DIR, corpora.TANG_DIR, "全唐诗"))


@pytest.mark.skipif(not TANG_IN_PLACE, reason="data/chinese-poetry is not here (.ci/run copies it)")
def test_train_and_sample_on_tang_by_name(tmp_path):
    run_dir = tmp_path / "run"
    model = TINY_MODEL[:4] + TINY_MODEL[6:8]  # without --batch_size, which tang's recipe sets
    run_script("train.py", "--input", "tang", "--checkpoint_dir", run_dir, *model, "--max_steps", 2,
               "--eval_every", 2, "--save_every_n", 2, "--eval_chars", 2000, "--eval_poems", 0)
    corpus = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["corpus"]
    assert corpus["name"] == "tang" and corpus["split"] == read_utils.RECORDS
    # The recipe set the flags the command line left out, and config.json says which.
    given = set(model[::2]) | {"--max_steps"}
    assert corpus["recipe"]["name"] == "tang" and corpus["recipe"]["why"] == "--input tang"
    assert corpus["recipe"]["flags"] == {k: v for k, v in recipes.RECIPES["tang"].flags.items() if f"--{k}" not in given}
    assert corpus["recipe"]["flags"] == {"batch_size": 64, "poem_position": True}
    # Resumed without --input, the run keeps its corpus and its recipe.
    resumed = run_script("train.py", "--checkpoint_dir", run_dir, "--max_steps", 4, "--eval_poems", 0)
    assert "is not the corpus this run started on" not in resumed.stderr
    assert json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["corpus"] == corpus
    import generator

    config, vocab, path = generator.load_run(str(run_dir))
    gen = generator.Generator(config, vocab, path, records=run_dir_lib.trained_on_records(run_dir_lib.read_run(str(run_dir)).record))
    title, *lines = gen.generate(title="春晓", form="wujue")[0].strip("\n").split("\n")
    assert title == "春晓" and len(lines) == 2
    assert all(re.fullmatch("[^，。]{5}，[^，。]{5}。", line) for line in lines)
