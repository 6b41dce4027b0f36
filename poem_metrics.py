"""Poem-quality measures of generated text, judged against the corpus the model learned from.

- well-formed: the fraction of lines made of couplets in the corpus' dominant form
  (n characters, '，', n characters, '。', with n = 5 or 7);
- copy rate: the fraction of generated clauses that occur verbatim in the training text;
- distinct bigrams: distinct character bigrams over all bigrams; repetition pulls it down;
- rhyme and tonal pattern: of the samples that are 绝句 or 律诗 (metre.clauses_of), the fractions
  whose even clauses rhyme and that follow a standard tonal pattern (metre.py).

On poetry.txt, its held-out lines (every 20th) score 99.75%, 8.7% and 84% (docs/DESIGN.md). A clause
is a run of letters between punctuation marks; digits, punctuation and symbols such as the
corpus' '□' (an illegible character) are not letters.
"""

import re

import metre

FORMS = (5, 7)  # clause lengths of the five- and seven-character forms
# The rhyme and tonal-pattern rates of real poems (scripts/metre_rates.py): the Complete Tang
# Poems' 绝句 and 律诗, and poetry.txt cut into pieces of 2 and 4 lines (its lines run on across
# poems, so a piece is often parts of two), the yardstick of a model trained on it.
REAL_METRE = {
    "Tang 五绝": (0.755, 0.397),
    "Tang 七绝": (0.924, 0.644),
    "Tang 五律": (0.859, 0.427),
    "Tang 七律": (0.888, 0.502),
    "poetry.txt, 2 lines": (0.673, 0.456),
    "poetry.txt, 4 lines": (0.297, 0.145),
}
_LETTER = r"[^\W\d_]"
_CLAUSE = re.compile(f"{_LETTER}+")
_COUPLETS = {n: re.compile(f"(?:{_LETTER}{{{n}}}，{_LETTER}{{{n}}}。)+") for n in FORMS}


def lines_of(texts):
    """The lines of some texts, blank ones included: a blank line in a sample is a malformed line."""
    return [line.strip() for text in texts for line in text.splitlines()]


def is_well_formed(line, clause_length):
    """True for one or more couplets of clause_length characters, e.g. '白日依山尽，黄河入海流。'."""
    return _COUPLETS[clause_length].fullmatch(line) is not None


def dominant_clause_length(lines, min_share=0.5):
    """The form (5 or 7) of most non-blank lines, or None when it covers less than min_share of them.

    With the default, None means the text is not poetry in either form.
    """
    lines = [line for line in lines if line]
    counts = {n: sum(is_well_formed(line, n) for line in lines) for n in FORMS}
    best = max(FORMS, key=counts.get)
    return best if lines and counts[best] >= min_share * len(lines) else None


def well_formed_fraction(lines, clause_length):
    if not lines:
        return 0.0
    return sum(is_well_formed(line, clause_length) for line in lines) / len(lines)


def clauses(text):
    return _CLAUSE.findall(text)


def copy_rate(lines, known_clauses):
    """The fraction of the lines' clauses found in known_clauses (a set, so the corpus is read once)."""
    found = [clause in known_clauses for line in lines for clause in clauses(line)]
    return sum(found) / len(found) if found else 0.0


def distinct_bigram_fraction(texts):
    """Distinct bigrams of consecutive letters over all of them, pooled over the texts.

    Punctuation and line breaks are skipped, so a bigram may span them. The value falls as the
    amount of text grows (more text repeats more pairs by chance), so compare samples of equal
    size: 8 poems of 4 lines, say, at every evaluation.
    """
    bigrams = []
    for text in texts:
        letters = "".join(clauses(text))
        bigrams.extend(letters[i : i + 2] for i in range(len(letters) - 1))
    # Text without two letters in a row has nothing that could vary: score it as the worst.
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


class PoemScorer:
    """The measures for batches of samples; the reference is prepared once.

    clause_length None (a corpus that is not poetry) leaves out well-formed; known_clauses None
    (no training text to compare with) leaves out the copy rate.
    """

    def __init__(self, clause_length, known_clauses=None):
        self.clause_length = clause_length
        self.known_clauses = known_clauses

    @classmethod
    def from_training_text(cls, text):
        clause_length = dominant_clause_length(lines_of([text]))
        # Outside poetry a "clause" is just a word, and copying words says nothing.
        known = set(clauses(text)) if clause_length else None
        return cls(clause_length, known)

    def score(self, texts):
        """{"well_formed", "copy_rate", "distinct_bigrams", "rhyme", "tonal_pattern"}: fractions in
        [0, 1], as far as known; rhyme and tonal_pattern only if some text is a 绝句 or 律诗."""
        lines = lines_of(texts)
        scores = {}
        if self.clause_length:
            scores["well_formed"] = well_formed_fraction(lines, self.clause_length)
        if self.known_clauses is not None:
            scores["copy_rate"] = copy_rate(lines, self.known_clauses)
        scores["distinct_bigrams"] = distinct_bigram_fraction(texts)
        return scores | metre_rates(texts)


def metre_rates(texts):
    """{"rhyme", "tonal_pattern"}: the fractions of the texts that are 绝句 or 律诗 which rhyme and
    which follow a standard pattern; {} if none is."""
    poems = [text for text in texts if metre.clauses_of(text)]
    if not poems:
        return {}
    return {
        "rhyme": sum(map(metre.rhymes, poems)) / len(poems),
        "tonal_pattern": sum(map(metre.follows_pattern, poems)) / len(poems),
    }
