"""Metre for the generator: the tone each character of a poem must have, drawn poem by poem.

    --metre off      the form alone (poem_forms.py)
    --metre rhyme    the even clauses end in one level rhyme group of the 平水韵
    --metre strict   rhyme, and one of the four standard tonal patterns of the form (metre.patterns)

Each poem draws its pattern (the four equally likely) and its rhyme group (weighted by Group.weight,
how often the Tang poems rhyme in it), or takes the group from --rhyme, which names it by any
character in it (a character in several level groups names them all; each poem draws one). Under
strict, every slot that Pattern.slots gives a tone takes a character of that tone, and the rhyming
clauses (Pattern.rhyming) end in the group; under rhyme, only the ends of the even clauses are
constrained. A character outside the table has no tone, so it never fills a slot whose tone is fixed.

Fixed characters (the start string, an acrostic's heads) stand where they are, and the draw takes only
what agrees with them:
- a fixed character at a rhyming position limits the rhyme group to the groups it belongs to;
- a fixed character at a position whose tone a pattern checks rules out the patterns that need the
  other tone there;
- a fixed character that cannot be level in the free slot that keeps a clause from 孤平 (the first of
  平平仄仄平, the third of 仄仄平平仄仄平; an acrostic head in 五言) moves that duty to another free
  position of the clause (仄平平仄平, which the checker accepts as well). So an acrostic never
  contradicts a pattern: its heads sit at free positions.
When no pattern or no rhyme group agrees with the fixed characters, the vocabulary and the banned
characters, Planner raises an InputError before anything is generated.
"""

import dataclasses

import numpy as np

import metre
import poem_forms
from read_utils import InputError

METRES = ("off", "rhyme", "strict")
DEFAULT_METRE = "strict"
RHYME = "韵"  # a slot's requirement: a character of the poem's rhyme group (besides metre.LEVEL and OBLIQUE)
RHYME_ONLY = "rhyme only"  # the name of the one way to write a poem under --metre rhyme


@dataclasses.dataclass(frozen=True)
class Choice:
    """One way a poem of the form can be metrical: a pattern (or rhyme alone) fitted to the fixed characters."""

    name: str  # the pattern's name (metre.Pattern.name), or RHYME_ONLY
    requirements: dict  # slot index in the template -> metre.LEVEL, metre.OBLIQUE or RHYME
    groups: tuple  # the level groups it may rhyme in
    probabilities: np.ndarray  # of drawing each of groups


def check_request(metre_name, rhyme, poem):
    """A one-line error for a metre that does not exist, or a rhyme without a poem under a metre
    (poem: a form or an acrostic was asked for) or that names no level group."""
    if metre_name not in METRES:
        raise InputError(f"unknown metre {metre_name!r}; choose one of {', '.join(METRES)}")
    if rhyme and not poem:
        raise InputError("--rhyme sets the rhyme of a poem: add --form or --acrostic, or leave --rhyme out")
    if rhyme and metre_name == "off":
        raise InputError("--rhyme sets the rhyme of a poem under --metre rhyme or strict, not off")
    named_groups(rhyme)


def named_groups(rhyme):
    """The level groups that --rhyme names (all of them for ""); a one-line error if it names none."""
    if not rhyme:
        return metre.level_groups()
    if len(rhyme) != 1:
        raise InputError(f"--rhyme takes one character, the name of a rhyme group (e.g. 东), not {rhyme!r}")
    groups = metre.level_groups_of(rhyme)
    if not groups:
        unknown = metre.table().is_unknown(rhyme)
        reason = "is outside the 平水韵 table" if unknown else "has only oblique (仄) readings"
        raise InputError(
            f"--rhyme {rhyme} {reason}, so it names no level rhyme group; name a level-tone character such as 东"
        )
    return groups


class Planner:
    """The choices a poem of one form has under a metre, given its fixed characters and what the model can write."""

    def __init__(self, form, slots, metre_name, rhyme="", writable=frozenset()):
        """form: a poem_forms.Form; slots: its template (poem_forms.template) with the fixed characters;
        metre_name: "rhyme" or "strict"; rhyme: --rhyme's character or ""; writable: the characters the
        model may sample in a clause (known, not banned)."""
        if metre_name not in METRES[1:]:
            raise ValueError(f"no metre {metre_name!r} to plan; choose one of {METRES[1:]}")
        self.form = form
        self.table = metre.table()
        self.starts = poem_forms.clause_starts(form)
        self.fixed = [
            {i: slots[start + i] for i in range(form.clause_length) if slots[start + i] is not poem_forms.OPEN}
            for start in self.starts
        ]
        if metre_name == "strict":
            check_tones_writable(writable)
        groups = usable_groups(named_groups(rhyme), writable, rhyme)
        candidates = metre.patterns(form.clause_length, form.clauses) if metre_name == "strict" else [rhyme_only(form)]
        self.choices = [choice for choice in (self.fit(pattern, groups) for pattern in candidates) if choice]
        if not self.choices:
            raise self.contradiction(metre_name, candidates, rhyme)

    def draw(self, rng):
        """(Choice, rhyme group) of one poem, drawn with rng (a numpy Generator)."""
        choice = self.choices[rng.integers(len(self.choices))]
        return choice, choice.groups[rng.choice(len(choice.groups), p=choice.probabilities)]

    def fit(self, pattern, groups):
        """The Choice of writing pattern around the fixed characters, in one of groups, or None if
        they contradict it."""
        requirements = self.requirements(pattern)
        last = self.form.clause_length - 1
        rhyme_chars = [self.fixed[clause][last] for clause in pattern.rhyming if last in self.fixed[clause]]
        groups = [group for group in groups if all(char in group.chars for char in rhyme_chars)]
        if requirements is None or not groups:
            return None
        weights = np.array([group.weight for group in groups], float)
        return Choice(pattern.name, requirements, tuple(groups), weights / weights.sum())

    def requirements(self, pattern):
        """{slot index: requirement} of writing pattern around the fixed characters; None if their
        tones contradict it (their rhyme is fit()'s to check)."""
        requirements = {}
        for clause, (tones, fixed) in enumerate(zip(pattern.slots, self.fixed)):
            wanted = self.clause_requirements(tones, fixed, clause in pattern.rhyming)
            if wanted is None:
                return None
            requirements |= {self.starts[clause] + i: tone for i, tone in wanted.items()}
        return requirements

    def clause_requirements(self, tones, fixed, rhyming):
        """{position: requirement} of a clause's open slots, from its pattern slots (a tone or None
        per position) and its fixed characters; None if a fixed character contradicts them."""
        last = len(tones) - 1
        wanted = {i: tone for i, tone in enumerate(tones) if tone is not None}
        if rhyming:
            wanted[last] = RHYME  # checked against the group in fit()
        free = metre.free_positions(len(tones))
        for i, char in fixed.items():
            tone = wanted.pop(i, None)
            if tone in (None, RHYME) or self.table.can_be(char, tone):
                continue
            if not (i in free and tone == metre.LEVEL):
                return None  # a checked position, or the oblique slot that averts 三平尾
            # The level slot that averts 孤平: any level character among the free positions does its work.
            if not any(self.table.can_be(fixed[j], metre.LEVEL) for j in free if j in fixed):
                open_free = [j for j in free if j not in fixed]
                if not open_free:
                    return None
                wanted[open_free[0]] = metre.LEVEL
        return wanted

    def contradiction(self, metre_name, candidates, rhyme):
        """The InputError when no candidate fits the fixed characters and the usable groups."""
        fixed = "".join(char for clause in self.fixed for char in clause.values())
        if all(self.requirements(pattern) is None for pattern in candidates):
            return InputError(
                f"the characters given (start string, acrostic: {fixed}) fit none of the four tonal patterns of a "
                f"{self.form.name}; "
                "change them, or use --metre rhyme or --metre off"
            )
        named = f" and --rhyme {rhyme}" if rhyme else ""
        return InputError(
            f"the characters given (start string, acrostic: {fixed}) end rhyming clauses in characters that{named} "
            "share no level rhyme group the model can write; change them, or use --metre off"
        )


def rhyme_only(form):
    """--metre rhyme as a pattern: no tones, the even clauses rhyming."""
    slots = ((None,) * form.clause_length,) * form.clauses
    return metre.Pattern(RHYME_ONLY, (), tuple(range(1, form.clauses, 2)), slots)


def check_tones_writable(writable):
    """A one-line error if the model can write no character of one of the two tones."""
    for tone, name in ((metre.LEVEL, "level (平)"), (metre.OBLIQUE, "oblique (仄)")):
        if not metre.chars_of_tone(tone) & writable:
            raise InputError(
                f"the model can write no {name} character of the 平水韵 table (unknown to it, or banned), so "
                "--metre strict cannot be kept; use --metre rhyme or --metre off"
            )


def usable_groups(groups, writable, rhyme):
    """The groups of which the model can write a character; a one-line error if none."""
    usable = tuple(group for group in groups if group.chars & writable)
    if usable:
        return usable
    if rhyme:
        raise InputError(
            f"--rhyme {rhyme} names {', '.join(group.name for group in groups)}, of which the model can write no "
            "character (unknown to it, or banned); name another group, or use --metre off"
        )
    raise InputError(
        "the model can write no character of any level rhyme group (unknown to it, or banned), so its poems "
        "cannot rhyme; use --metre off"
    )
