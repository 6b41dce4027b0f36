import itertools
import os
import random

import pytest

import metre
import poem_metrics
from scripts import build_rhyme_table

# Named poems, each verified by hand against the rules in metre.py's docstring.
# 仄起首句不入韵: 仄仄平平仄 / 平平仄仄平 / 平平平仄仄 (欲穷千里目 at 2, 4, 5) / 仄仄仄平平; 流, 楼: 尤.
DENG_GUANQUE_LOU = "登鹳雀楼\n白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n"
# 仄起首句不入韵 too; 相 and 思 (level and oblique readings) stand where level tones are due.
XIANG_SI = "红豆生南国，春来发几枝。\n愿君多采撷，此物最相思。\n"
# 七绝 that rhymes in 删 (间, 还, 山); 啼 is outside the table but stands at a free position (5).
ZAOFA_BAIDI = "朝辞白帝彩云间，千里江陵一日还。\n两岸猿声啼不住，轻舟已过万重山。\n"
SHAN_XING = "山行\n远上寒山石径斜，白云生处有人家。\n停车坐爱枫林晚，霜叶红于二月花。\n"  # 仄起首句入韵 (七言)
CHUN_WANG = (  # 五律, 仄起首句不入韵; 胜 (level and oblique) is the level 4th of 浑欲不胜簪
    "春望\n国破山河在，城春草木深。\n感时花溅泪，恨别鸟惊心。\n"
    "烽火连三月，家书抵万金。\n白头搔更短，浑欲不胜簪。\n"
)
DENG_GAO = (  # 七律, 仄起首句入韵 (七言), rhyming in 灰
    "登高\n风急天高猿啸哀，渚清沙白鸟飞回。\n无边落木萧萧下，不尽长江滚滚来。\n"
    "万里悲秋常作客，百年多病独登台。\n艰难苦恨繁霜鬓，潦倒新停浊酒杯。\n"
)
# A 古绝: it rhymes (霜, 乡: 阳) but 疑是地上霜 has an oblique 4th (上) where every pattern whose
# first clause fits (床前明月光: level 2nd and end, so only 平起首句入韵) wants a level one.
JINGYE_SI = "静夜思\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n"
CHUN_XIAO = "春晓\n春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n"  # rhymes in an oblique group (篠)
# A 七律 famous for breaking the rules: 黄鹤一去不复返 has oblique tones at 2, 4 and 6, where every
# standard clause alternates; it rhymes in 尤.
HUANGHE_LOU = (
    "黄鹤楼\n昔人已乘黄鹤去，此地空余黄鹤楼。\n黄鹤一去不复返，白云千载空悠悠。\n"
    "晴川历历汉阳树，芳草萋萋鹦鹉洲。\n日暮乡关何处是，烟波江上使人愁。\n"
)
REGULAR = [DENG_GUANQUE_LOU, XIANG_SI, ZAOFA_BAIDI, SHAN_XING, CHUN_WANG, DENG_GAO]
UNKNOWN_CHAR = "氧"  # oxygen: a character coined long after the 平水韵


def shuffled(poem, seed):
    """The poem's characters in random order, its title, punctuation and line breaks in place."""
    lines = poem.splitlines()
    title, body = (lines[0], lines[1:]) if len(lines) % 2 else ("", lines)
    text = "\n".join(body)
    letters = [char for char in text if char not in "，。\n"]
    random.Random(seed).shuffle(letters)
    rest = iter(letters)
    return title + "\n" + "".join(char if char in "，。\n" else next(rest) for char in text)


def with_char(poem, line, position, char):
    """poem with the character at (line, position) of its couplet lines replaced."""
    lines = poem.splitlines()
    lines[line] = lines[line][:position] + char + lines[line][position + 1 :]
    return "\n".join(lines)


# --- the table -----------------------------------------------------------------------------


def test_the_table_has_the_106_groups_of_the_pingshui_rhymes():
    groups = metre.groups()
    assert len(groups) == 106
    assert [group.tone for group in groups].count(metre.LEVEL) == 30
    assert groups[0].name == "上平声一东" and groups[-1].name == "入声十七洽"
    assert os.path.getsize(metre.TABLE_PATH) < 1 << 20


def test_simplified_characters_are_in_the_table_with_their_traditional_forms():
    dong = metre.groups()[0]
    assert {"东", "風", "风", "東"} <= dong.chars  # the source has only 東 and 風
    assert metre.tone_of("东") == metre.tone_of("风") == metre.LEVEL


@pytest.mark.parametrize(
    "simplified, traditional",
    [("冲", {"沖": "上平声一东", "衝": "上平声二冬"}), ("饥", {"飢": "上平声四支", "饑": "上平声五微"})],
)
def test_a_simplified_character_carries_the_readings_of_every_traditional_one(simplified, traditional):
    for char, group in traditional.items():
        assert [g.name for g in metre.groups_of(char)] == [group]
    assert {g.name for g in metre.groups_of(simplified)} == set(traditional.values())


def test_the_scraper_junk_is_gone():
    assert all(build_rhyme_table.is_cjk(char) for group in metre.groups() for char in group.chars)


def test_tones_of_characters():
    assert metre.tone_of("月") == metre.OBLIQUE  # 入声
    assert metre.tone_of("看") == metre.BOTH  # 寒 and 翰
    assert metre.tone_of(UNKNOWN_CHAR) == metre.tone_of("x") == metre.UNKNOWN
    assert not metre.can_be(UNKNOWN_CHAR, metre.LEVEL) and not metre.can_be(UNKNOWN_CHAR, metre.OBLIQUE)
    assert "看" in metre.chars_of_tone(metre.LEVEL) and "看" in metre.chars_of_tone(metre.OBLIQUE)
    assert "月" not in metre.chars_of_tone(metre.LEVEL)


def test_level_groups_are_weighted_by_the_tang_poems_rhyming_in_them():
    level = metre.level_groups()
    assert len(level) == 30 and all(group.weight > 0 for group in level)
    assert all(group.weight == 0 for group in metre.groups() if group.tone == metre.OBLIQUE)
    by_name = {group.name: group.weight for group in level}
    assert by_name["上平声一东"] > 10 * by_name["下平声十五咸"]  # a common rhyme and a rare one (险韵)
    assert [group.name for group in metre.level_groups_of("中")] == ["上平声一东"]  # its oblique reading is 去声一送


def test_the_build_unites_the_readings_of_traditional_characters_and_drops_junk():
    source = {
        "ping": {"上平聲部": {"上平聲一東": ["東沖"], "上平聲二冬": ["冬衝"]}},
        "ze": {"入聲部": {"入聲十七洽": ["洽Publicdomainfalse"]}},
    }
    groups = build_rhyme_table.simplified_groups(source)
    assert groups == [
        {"name": "上平声一东", "tone": metre.LEVEL, "chars": "東东沖冲"},
        {"name": "上平声二冬", "tone": metre.LEVEL, "chars": "冬衝冲"},
        {"name": "入声十七洽", "tone": metre.OBLIQUE, "chars": "洽"},
    ]
    table = metre.RhymeTable({"groups": groups})
    assert [g.index for g in table.groups_of("冲")] == [0, 1]
    poems = ["东冬冬冬冬，东冬冬冬冲。\n东冬冬冬冬，东冬冬冬东。", "冬东东东东，冬东东东冲。\n冬东东东东，冬东东东冲。"]
    # The first rhymes in 东 only; the second in 东 or 冬 (冲 has both), so each gets a half.
    assert build_rhyme_table.rhyme_weights(table, poems) == {0: 1.5, 1: 0.5}


# --- poems and their clauses ------------------------------------------------------------------


def test_clauses_of_quatrains_and_regulated_verse_with_or_without_a_title():
    assert metre.clauses_of(DENG_GUANQUE_LOU) == ["白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼"]
    assert metre.clauses_of(XIANG_SI)[3] == "此物最相思"
    assert len(metre.clauses_of(DENG_GAO)) == 8
    assert metre.clauses_of("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。") == metre.clauses_of(DENG_GUANQUE_LOU)


@pytest.mark.parametrize(
    "text",
    [
        "白日依山尽，黄河入海流。\n",  # one couplet
        "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n白日依山尽，黄河入海流。\n",  # six clauses
        "白日依山尽，黄河入海流。\n千里江陵一日还，两岸猿声啼不住。\n",  # mixed lengths
        "白日依山，黄河入海流。\n欲穷千里目，更上一层楼。\n",  # a short clause
        "白日依山尽。黄河入海流，\n欲穷千里目，更上一层楼。\n",  # punctuation swapped
        "题\n注\n白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n",  # two lines before the couplets
        "",
    ],
)
def test_other_shapes_have_no_metre(text):
    assert metre.clauses_of(text) is None
    assert not metre.rhymes(text) and not metre.follows_pattern(text)


# --- the checker on real poems ----------------------------------------------------------------


@pytest.mark.parametrize("poem", REGULAR)
def test_regulated_poems_rhyme_and_follow_a_standard_pattern(poem):
    assert metre.rhymes(poem) and metre.follows_pattern(poem)


@pytest.mark.parametrize(
    "poem, pattern, group",
    [
        (DENG_GUANQUE_LOU, "仄起首句不入韵", "下平声十一尤"),
        (XIANG_SI, "仄起首句不入韵", "上平声四支"),
        (SHAN_XING, "仄起首句入韵", "下平声六麻"),
        (CHUN_WANG, "仄起首句不入韵", "下平声十二侵"),
        (DENG_GAO, "仄起首句入韵", "上平声十灰"),
    ],
)
def test_the_pattern_and_rhyme_group_of_named_poems(poem, pattern, group):
    assert metre.pattern_of(poem).name == pattern
    assert [g.name for g in metre.rhyme_groups(poem)] == [group]


def test_old_style_poems_may_rhyme_without_a_pattern():
    assert metre.rhymes(JINGYE_SI) and not metre.follows_pattern(JINGYE_SI)
    assert metre.rhymes(HUANGHE_LOU) and not metre.follows_pattern(HUANGHE_LOU)
    assert not metre.rhymes(CHUN_XIAO) and not metre.follows_pattern(CHUN_XIAO)


def test_shuffled_poems_rarely_rhyme_and_never_follow_a_pattern():
    shuffles = [shuffled(poem, seed) for poem in REGULAR for seed in range(50)]
    assert sum(map(metre.rhymes, shuffles)) <= 0.05 * len(shuffles)
    assert sum(map(metre.follows_pattern, shuffles)) <= 0.01 * len(shuffles)


def test_lone_level_tone_breaks_the_pattern_and_its_remedy_does_not():
    # 黄河入海流 (平平仄仄平) made 仄平仄仄平, then remedied at position 3: 仄平平仄平.
    lone = with_char(DENG_GUANQUE_LOU, 1, 6, "白")
    assert metre.rhymes(lone) and not metre.follows_pattern(lone)
    assert metre.follows_pattern(with_char(lone, 1, 8, "千"))
    # 七言: 千里江陵一日还 (平仄平平仄仄平) made 仄仄仄平仄仄平.
    lone7 = with_char(with_char(ZAOFA_BAIDI, 0, 8, "万"), 0, 10, "石")
    assert metre.rhymes(lone7) and not metre.follows_pattern(lone7)


def test_three_level_tones_at_the_end_break_the_pattern():
    # 更上一层楼 (仄仄仄平平) made 仄仄平平平.
    three = with_char(DENG_GUANQUE_LOU, 2, 8, "千")
    assert metre.rhymes(three) and not metre.follows_pattern(three)


def test_unknown_characters_count_as_neither_tone():
    assert metre.follows_pattern(ZAOFA_BAIDI)  # 啼 stands at a free position
    assert metre.tone_of("啼") == metre.UNKNOWN
    # At a checked position (河, the 2nd of 黄河入海流) or at a rhyme (流), an unknown character fails.
    at_second = with_char(DENG_GUANQUE_LOU, 1, 7, UNKNOWN_CHAR)
    assert metre.rhymes(at_second) and not metre.follows_pattern(at_second)
    at_rhyme = with_char(DENG_GUANQUE_LOU, 1, 10, UNKNOWN_CHAR)
    assert not metre.rhymes(at_rhyme) and not metre.follows_pattern(at_rhyme)
    # Where a free position is all that saves a clause from 孤平 (黄 of 黄河入海流), it is no level tone.
    assert not metre.follows_pattern(with_char(DENG_GUANQUE_LOU, 1, 6, UNKNOWN_CHAR))
    lenient = metre.RhymeTable.from_file(unknown_as_either=True)
    assert lenient.follows_pattern(at_second) and lenient.rhymes(at_rhyme)


def test_a_character_of_both_tones_counts_as_either():
    # 此物最相思 (仄仄仄平平): 相 is level there; 看 or 中 (both tones) do too, 月 (oblique) does not.
    for char, fits in [("看", True), ("中", True), ("天", True), ("月", False)]:
        assert metre.follows_pattern(with_char(XIANG_SI, 1, 9, char)) == fits, char


# --- the patterns as data for a generator -----------------------------------------------------


@pytest.mark.parametrize("clause_length, clauses", itertools.product((5, 7), (4, 8)))
def test_the_four_patterns_link_their_clauses_by_nian_and_dui(clause_length, clauses):
    found = metre.patterns(clause_length, clauses)
    assert sorted(p.name for p in found) == sorted(
        f"{start}首句{rhyme}入韵" for start in ("平起", "仄起") for rhyme in ("", "不")
    )
    for pattern in found:
        assert len(pattern.tones) == clauses and {len(t) for t in pattern.tones} == {clause_length}
        second = [tones[1] for tones in pattern.tones]
        assert pattern.name.startswith(second[0] + "起")
        for i in range(clauses - 1):
            if i % 2 == 0:  # 对: a couplet's clauses have opposite tones at 2, 4, 6
                assert all(pattern.tones[i][j] != pattern.tones[i + 1][j] for j in range(1, clause_length, 2))
            else:  # 粘: a couplet's second clause and the next one's first agree at position 2
                assert second[i] == second[i + 1]
        ends = [tones[-1] for tones in pattern.tones]
        assert ends[1::2] == [metre.LEVEL] * (clauses // 2) and ends[2::2] == [metre.OBLIQUE] * (clauses // 2 - 1)
        assert (ends[0] == metre.LEVEL) == ("不" not in pattern.name) == (0 in pattern.rhyming)
        assert set(pattern.rhyming) - {0} == set(range(1, clauses, 2))


def test_patterns_of_both_lengths_in_full():
    wujue = {p.name: p.tones for p in metre.patterns(5, 4)}
    assert wujue["仄起首句不入韵"] == ("仄仄平平仄", "平平仄仄平", "平平平仄仄", "仄仄仄平平")
    assert wujue["平起首句入韵"] == ("平平仄仄平", "仄仄仄平平", "仄仄平平仄", "平平仄仄平")
    qilv = {p.name: p.tones for p in metre.patterns(7, 8)}
    assert qilv["平起首句入韵"] == (
        "平平仄仄仄平平", "仄仄平平仄仄平", "仄仄平平平仄仄", "平平仄仄仄平平",
        "平平仄仄平平仄", "仄仄平平仄仄平", "仄仄平平平仄仄", "平平仄仄仄平平",
    )
    with pytest.raises(ValueError):
        metre.patterns(6, 4)


def test_generation_slots_are_the_checked_positions_and_the_ones_that_avert_faults():
    slots = {p.name: p.slots for p in metre.patterns(5, 4)}["仄起首句不入韵"]
    L, O, _ = metre.LEVEL, metre.OBLIQUE, None
    assert slots == ((_, O, _, L, O), (L, L, _, O, L), (_, L, _, O, O), (_, O, O, L, L))
    seven = {p.name: p.slots for p in metre.patterns(7, 4)}["平起首句不入韵"]
    assert seven[1] == (_, O, L, L, _, O, L) and seven[3] == (_, L, _, O, O, L, L)


@pytest.mark.parametrize("clause_length, clauses", itertools.product((5, 7), (4, 8)))
@pytest.mark.parametrize("free", ["天", "月", UNKNOWN_CHAR])  # level, oblique, unknown
def test_a_poem_written_by_the_slots_follows_its_pattern(clause_length, clauses, free):
    for pattern in metre.patterns(clause_length, clauses):
        chosen = {metre.LEVEL: "天", metre.OBLIQUE: "月", None: free}
        lines = []
        for i, slots in enumerate(pattern.slots):
            clause = "".join(chosen[slot] for slot in slots[:-1]) + ("风" if i in pattern.rhyming else chosen[slots[-1]])
            lines.append(clause + ("。\n" if i % 2 else "，"))
        poem = "".join(lines)
        assert metre.pattern_of(poem) is not None and metre.rhymes(poem), (pattern.name, poem)


def test_the_free_positions_alone_could_make_a_lone_level_tone():
    pattern = {p.name: p for p in metre.patterns(5, 4)}["仄起首句不入韵"]
    assert pattern.tones[1] == "平平仄仄平" and pattern.slots[1][0] == metre.LEVEL
    # Positions 2, 4 and 5 right, the free 1 and 3 oblique: 孤平, which the level slot at 1 averts.
    assert not metre.table().clause_fits("月天月月天", pattern.tones[1])
    assert metre.table().clause_fits("天天月月天", pattern.tones[1])


# --- poem metrics -----------------------------------------------------------------------------


def test_poem_metrics_score_rhyme_and_pattern_of_the_quatrains_and_regulated_verse():
    scorer = poem_metrics.PoemScorer(5)
    scores = scorer.score([DENG_GUANQUE_LOU, JINGYE_SI, CHUN_XIAO, "床前明月光，疑是地上霜。\n"])
    # Of the three 绝句 (the lone couplet is none), two rhyme and one follows a pattern.
    assert scores["rhyme"] == pytest.approx(2 / 3) and scores["tonal_pattern"] == pytest.approx(1 / 3)
    assert "rhyme" not in scorer.score(["床前明月光，疑是地上霜。\n"])
