"""Fixed Tang poem forms and acrostics, as templates the sampler fills in.

A poem is written the way the corpus writes it: one couplet per line, `XXXXX，XXXXX。`. A 绝句
has two such lines (four clauses), a 律诗 four (eight clauses); 五言 and 七言 give the clause
length. A template has one slot per character of the poem: either a fixed character (the
punctuation and line breaks, an acrostic's heads, the user's start string) or OPEN, a clause
character that the model samples among CJK ideographs only. So the poem is well-formed whatever
the model would rather write.
"""

import dataclasses
import unicodedata

from read_utils import InputError

OPEN = None  # a template slot the model fills with a CJK ideograph
COMMA, STOP, NEWLINE = "，", "。", "\n"


@dataclasses.dataclass(frozen=True)
class Form:
    name: str
    alias: str  # ASCII name for the command line
    clause_length: int  # characters per clause: 5 (五言) or 7 (七言)
    lines: int  # couplet lines: 2 (绝句) or 4 (律诗)

    @property
    def clauses(self):
        return 2 * self.lines


FORMS = (
    Form("五言绝句", "wujue", 5, 2),
    Form("五言律诗", "wulv", 5, 4),
    Form("七言绝句", "qijue", 7, 2),
    Form("七言律诗", "qilv", 7, 4),
)
FORM_NAMES = [form.name for form in FORMS] + [form.alias for form in FORMS]


def find_form(name):
    """The form called name (Chinese or ASCII alias)."""
    for form in FORMS:
        if name in (form.name, form.alias):
            return form
    raise InputError(f"unknown poem form {name!r}; choose one of {', '.join(FORM_NAMES)}")


def is_ideograph(char):
    """A CJK ideograph: the only kind of character a clause may hold."""
    name = unicodedata.name(char, "") if len(char) == 1 else ""
    return name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH"))


def form_for_acrostic(acrostic):
    """The form of an acrostic given without one: 五言绝句 up to four heads, else 五言律诗."""
    quatrain, regulated = find_form("wujue"), find_form("wulv")
    return quatrain if len(acrostic) <= quatrain.clauses else regulated


def template(form, acrostic="", start=""):
    """The slots of a poem of this form whose clause k begins with acrostic[k] and that begins with start."""
    slots = []
    for clause in range(form.clauses):
        slots += [OPEN] * form.clause_length
        slots += [STOP, NEWLINE] if clause % 2 else [COMMA]
    check_acrostic(form, acrostic)
    for position, head in zip(clause_starts(form), acrostic):
        slots[position] = head
    fit_start(form, slots, start)
    return slots


def clause_starts(form):
    """Slot index of each clause's first character."""
    line_length = 2 * (form.clause_length + 1) + 1
    return [(clause // 2) * line_length + (clause % 2) * (form.clause_length + 1) for clause in range(form.clauses)]


def check_acrostic(form, acrostic):
    if len(acrostic) > form.clauses:
        raise InputError(
            f"the acrostic has {len(acrostic)} characters but a {form.name} has only {form.clauses} clauses; "
            "give one character per clause (绝句 have 4 clauses, 律诗 8)"
        )
    not_ideographs = [char for char in dict.fromkeys(acrostic) if not is_ideograph(char)]
    if not_ideographs:
        raise InputError(
            f"an acrostic is made of Chinese characters, one per clause; {' '.join(map(repr, not_ideographs))} "
            "cannot begin a clause"
        )


def fit_start(form, slots, start):
    """Fixes the start string into the first slots; it has to read like the poem's beginning."""
    if len(start) > len(slots):
        raise InputError(
            f"the start string has {len(start)} characters, more than a whole {form.name} ({len(slots)} "
            "with punctuation and line breaks)"
        )
    for i, char in enumerate(start):
        slot = slots[i]
        if slot == char or (slot is OPEN and is_ideograph(char)):
            slots[i] = char
            continue
        wanted = "a Chinese character" if slot is OPEN else repr(slot)
        raise InputError(
            f"the start string does not fit a {form.name} (one couplet per line, "
            f"{'X' * form.clause_length}{COMMA}{'X' * form.clause_length}{STOP}): character {i + 1} is "
            f"{char!r} where the poem needs {wanted}"
        )
