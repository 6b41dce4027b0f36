"""Rhyme and tone of Tang 绝句 and 律诗: the 平水韵 table and a checker of the regulated forms.

The table (data/pingshui.json, rebuilt by scripts/build_rhyme_table.py) holds the 106 rhyme groups
of the 平水韵, 30 level (平) and 76 oblique (仄), each with its characters, traditional and
simplified. A character read in several ways belongs to several groups: its tone is then level,
oblique or both. A character outside the table has an unknown tone and never counts as either.

A poem is written in the project's layout: one couplet per line, `XXXXX，XXXXX。` (a line may hold
more couplets), after an optional title line. A 绝句 has 4 clauses, a 律诗 8, all of 5 or 7
characters; only those have a metre here.

- Rhyme: the even clauses (2nd, 4th, ...) end in characters of one level group. The first clause
  may end in it too, but need not.
- Tonal pattern: the poem rhymes and follows one of the four standard patterns of its length
  (平起 or 仄起, first clause rhyming or not), which fix the tone of positions 2, 4 (and 6 in 七言)
  and of every clause's last character: level at the end of the even clauses and of a rhyming
  first clause, oblique at the end of the other odd clauses. The other positions are free
  (一三五不论) except that a clause may not be 孤平 (仄平仄仄平, or 仄仄仄平仄仄平 in 七言: no
  level tone but the 2nd (4th) and the rhyme) nor end in 三平尾 (three level tones). Following a
  standard pattern at positions 2, 4 and 6 is the same as linking the clauses by 粘 and 对. The first
  clause of a 首句入韵 pattern must end level, but not necessarily in the poem's rhyme group (the
  poets' licence 孤雁出群); a generator rhymes it all the same (Pattern.rhyming).

A character with both tones counts as either, so a poem follows a pattern if some reading of
each character does.

For generation, patterns() gives every slot's tone in a form a sampler can mask by: the positions
checked above, plus one free position in the clauses that could turn 孤平 or 三平尾. Fixing those
to the standard tone (the first position of the five-character core of 平平仄仄平 level, the third
from the end of 仄仄仄平平 oblique) avoids both faults with one tone per slot, at the cost of the
rarer remedy 仄平平仄平 that the checker also accepts.
"""

import dataclasses
import functools
import json
import os
import re

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pingshui.json")
LEVEL, OBLIQUE = "平", "仄"  # the two tones of a reading, and of a slot of a pattern
BOTH, UNKNOWN = "平仄", "?"  # tone_of a character read in both tones, and of one outside the table
CLAUSE_LENGTHS = (5, 7)  # 五言, 七言
CLAUSE_COUNTS = (4, 8)  # 绝句, 律诗

_LETTER = r"[^\W\d_]"  # as in poem_metrics: a character that is neither punctuation nor a digit
_COUPLETS = {
    n: re.compile(f"(?:{_LETTER}{{{n}}}，{_LETTER}{{{n}}}[。？！])+") for n in CLAUSE_LENGTHS
}
_CLAUSE = re.compile(f"{_LETTER}+")

# The four clause types of 五言 regulated verse, in the order a poem cycles through them; 七言
# puts two characters of the other tone than position 2 in front.
_CYCLE = ("仄仄平平仄", "平平仄仄平", "平平平仄仄", "仄仄仄平平")


@dataclasses.dataclass(frozen=True)
class Group:
    """One rhyme group of the 平水韵."""

    index: int  # its place in the table, 0-105: 上平声, 下平声, 上声, 去声, 入声
    name: str  # e.g. 上平声一东
    tone: str  # LEVEL or OBLIQUE
    chars: frozenset  # its characters, traditional and simplified
    weight: float  # how many Tang 绝句 and 律诗 rhyme in it (a poem fitting k groups counts 1/k); 0 if oblique


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One standard tonal pattern of a form."""

    name: str  # 平起 or 仄起 (the tone of the first clause's 2nd character), 首句入韵 or 首句不入韵
    tones: tuple  # per clause, the standard tone of each position, e.g. ("仄仄平平仄", "平平仄仄平", ...)
    rhyming: tuple  # the clauses (0-based) a generator ends in the rhyme group: the even ones, the first if 入韵
    slots: tuple  # per clause, per position: the tone a generator requires (LEVEL, OBLIQUE) or None (free)


def _other(tone):
    return OBLIQUE if tone == LEVEL else LEVEL


def _clause_tones(core, clause_length):
    """A 五言 clause type's standard tones at clause_length characters."""
    return core if clause_length == 5 else 2 * _other(core[1]) + core


def _is_checked(position, clause_length):
    """Positions 2, 4, 6 and the last (1-based) have the pattern's tone; the others are free."""
    return position % 2 == 1 or position == clause_length - 1


def free_positions(clause_length):
    """The positions (0-based) whose tone no pattern checks: 1, 3 (and 5) in 1-based terms."""
    return [i for i in range(clause_length) if not _is_checked(i, clause_length)]


def _risks_lone_level(tones):
    """平平仄仄平 (仄仄平平仄仄平): with every free position oblique it would be 孤平."""
    return tones.endswith(OBLIQUE + LEVEL)


def _risks_three_level_tail(tones):
    """仄仄仄平平 (平平仄仄仄平平): a level third from the end would make 三平尾."""
    return tones.endswith(OBLIQUE + LEVEL + LEVEL)


def _generation_slots(tones):
    """The tones a generator requires: the checked positions, and the one free position of a
    clause that could turn 孤平 (the core's first) or 三平尾 (third from the end), fixed to the
    standard tone; None where any character will do."""
    n = len(tones)
    tightened = set()
    if _risks_lone_level(tones):
        tightened.add(n - 5)
    if _risks_three_level_tail(tones):
        tightened.add(n - 3)
    return tuple(tone if _is_checked(i, n) or i in tightened else None for i, tone in enumerate(tones))


@functools.cache
def patterns(clause_length, clauses):
    """The four standard patterns of a 绝句 (clauses=4) or 律诗 (8) of 5- or 7-character clauses.

    In 五言 their order is 仄起首句不入韵, 仄起首句入韵, 平起首句不入韵, 平起首句入韵; a 七言
    clause's 2nd character has the other tone than the 五言 clause it extends, so there 平起 and
    仄起 swap.
    """
    if clause_length not in CLAUSE_LENGTHS or clauses not in CLAUSE_COUNTS:
        raise ValueError(f"no standard pattern for {clauses} clauses of {clause_length} characters")
    found = []
    for start in (0, 2):  # a 五言 poem begins 仄仄平平仄 (仄起) or 平平平仄仄 (平起)
        cores = [_CYCLE[(start + i) % 4] for i in range(clauses)]
        for first_rhymes in (False, True):
            if first_rhymes:  # the first clause ends level, keeping its 2nd character's tone
                cores = [_CYCLE[3] if start == 0 else _CYCLE[1]] + cores[1:]
            tones = tuple(_clause_tones(core, clause_length) for core in cores)
            name = ("平起" if tones[0][1] == LEVEL else "仄起") + ("首句入韵" if first_rhymes else "首句不入韵")
            rhyming = ((0,) if first_rhymes else ()) + tuple(range(1, clauses, 2))
            found.append(Pattern(name, tones, rhyming, tuple(_generation_slots(t) for t in tones)))
    return tuple(found)


def clauses_of(poem):
    """The clauses of a 绝句 or 律诗 in the project's layout (title line optional), else None."""
    lines = [line.strip() for line in poem.splitlines() if line.strip()]
    for n in CLAUSE_LENGTHS:
        body = lines[1:] if lines and not _COUPLETS[n].fullmatch(lines[0]) else lines
        if body and all(_COUPLETS[n].fullmatch(line) for line in body):
            found = [clause for line in body for clause in _CLAUSE.findall(line)]
            return found if len(found) in CLAUSE_COUNTS else None
    return None


class RhymeTable:
    """The rhyme groups, every character's readings, and the checks that use them."""

    def __init__(self, record, unknown_as_either=False):
        """record: the table as data/pingshui.json holds it.

        unknown_as_either lets a character outside the table count as either tone and as a member
        of every group, against the rule; it measures what the table's gaps cost real poems.
        """
        self.unknown_as_either = unknown_as_either
        tones = {"平": LEVEL, "仄": OBLIQUE}
        self.groups = tuple(
            Group(i, group["name"], tones[group["tone"]], frozenset(group["chars"]), group.get("weight", 0.0))
            for i, group in enumerate(record["groups"])
        )
        readings = {}
        for group in self.groups:
            for char in group.chars:
                readings.setdefault(char, []).append(group)
        self._readings = {char: tuple(groups) for char, groups in readings.items()}
        self._chars_of_tone = {
            tone: frozenset(char for char, groups in readings.items() if any(g.tone == tone for g in groups))
            for tone in (LEVEL, OBLIQUE)
        }

    @classmethod
    def from_file(cls, path=TABLE_PATH, unknown_as_either=False):
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f), unknown_as_either)

    def is_unknown(self, char):
        return char not in self._readings

    def groups_of(self, char):
        """The groups of every reading of char, in table order; () outside the table."""
        return self._readings.get(char, ())

    def can_be(self, char, tone):
        """True if char has a reading of tone (LEVEL or OBLIQUE)."""
        return char in self._chars_of_tone[tone] or (self.unknown_as_either and self.is_unknown(char))

    def tone_of(self, char):
        """LEVEL, OBLIQUE, BOTH (readings of both tones) or UNKNOWN (outside the table)."""
        level, oblique = self.can_be(char, LEVEL), self.can_be(char, OBLIQUE)
        return BOTH if level and oblique else LEVEL if level else OBLIQUE if oblique else UNKNOWN

    def chars_of_tone(self, tone):
        """Every character with a reading of tone (LEVEL or OBLIQUE): what a slot of that tone allows."""
        return self._chars_of_tone[tone]

    def level_groups(self):
        """The 30 level groups: those a poem rhymes in."""
        return tuple(group for group in self.groups if group.tone == LEVEL)

    def level_groups_of(self, char):
        """The level groups char belongs to: the rhymes it can name or end."""
        return tuple(group for group in self.groups_of(char) if group.tone == LEVEL)

    def shared_level_groups(self, chars):
        """The level groups that hold every one of chars, in table order."""
        shared = set(self.level_groups())
        for char in chars:
            if not (self.unknown_as_either and self.is_unknown(char)):
                shared &= set(self.level_groups_of(char))
        return tuple(sorted(shared, key=lambda group: group.index))

    def rhyme_groups(self, poem):
        """The level groups that the ends of a 绝句's or 律诗's even clauses share; () if none, or
        if the poem is neither."""
        clauses = clauses_of(poem)
        return self._even_clauses_groups(clauses) if clauses else ()

    def _even_clauses_groups(self, clauses):
        return self.shared_level_groups(clause[-1] for clause in clauses[1::2])

    def rhymes(self, poem):
        """True if poem is a 绝句 or 律诗 whose even clauses end in one level rhyme group."""
        return bool(self.rhyme_groups(poem))

    def clause_fits(self, clause, tones):
        """True if clause can be read as tones, one clause of a pattern: the checked positions
        have their tone, and the clause is neither 孤平 nor 三平尾."""
        n = len(clause)
        if any(_is_checked(i, n) and not self.can_be(char, tone) for i, (char, tone) in enumerate(zip(clause, tones))):
            return False
        if _risks_lone_level(tones) and not any(self.can_be(clause[i], LEVEL) for i in free_positions(n)):
            return False
        return not (_risks_three_level_tail(tones) and not self.can_be(clause[n - 3], OBLIQUE))

    def pattern_of(self, poem):
        """The first standard pattern that poem follows, if it rhymes, else None."""
        clauses = clauses_of(poem)
        if clauses is None or not self._even_clauses_groups(clauses):
            return None
        for pattern in patterns(len(clauses[0]), len(clauses)):
            if all(self.clause_fits(clause, tones) for clause, tones in zip(clauses, pattern.tones)):
                return pattern
        return None

    def follows_pattern(self, poem):
        """True if poem is a 绝句 or 律诗 that follows one of the four standard patterns of its form."""
        return self.pattern_of(poem) is not None


@functools.cache
def table():
    """The table of data/pingshui.json, read on first use."""
    return RhymeTable.from_file()


def groups():
    """All 106 groups."""
    return table().groups


def groups_of(char):
    return table().groups_of(char)


def can_be(char, tone):
    return table().can_be(char, tone)


def tone_of(char):
    return table().tone_of(char)


def chars_of_tone(tone):
    return table().chars_of_tone(tone)


def level_groups():
    return table().level_groups()


def level_groups_of(char):
    return table().level_groups_of(char)


def rhyme_groups(poem):
    return table().rhyme_groups(poem)


def rhymes(poem):
    return table().rhymes(poem)


def pattern_of(poem):
    return table().pattern_of(poem)


def follows_pattern(poem):
    return table().follows_pattern(poem)
