"""Words that say nothing about a CoT's language: interjections and discourse fillers of R1-style reasoning
("Hmm, wait. Okay."), and math/code function names ("mod", "gcd", "sqrt"). The language-ID model labels such
short words unreliably (fastText calls "Hmm wait" French at 0.89), so they count for no language: they are left
out of both counts and out of what the model reads. Listed in lower case; matched as written in lower case,
Capitalised or UPPER case.
"""
from __future__ import annotations

INTERJECTIONS = frozenset((
    "ah", "aha", "ahh", "alright", "argh", "aw", "aww", "bah", "bingo", "duh", "eh", "er", "erm", "gee", "gosh",
    "ha", "hah", "hey", "hm", "hmm", "hmmm", "hmmmm", "hmmmmm", "hmph", "huh", "meh", "mhm", "mm", "mmm", "nah",
    "no", "nope", "oh", "ohh", "ok", "okay", "okey", "oof", "ooh", "oops", "ouch", "phew", "psst", "right", "shh",
    "ugh", "uh", "uhh", "uhm", "um", "umm", "voila", "voilà", "wait", "whew", "whoa", "wow", "yay", "yeah", "yep",
    "yes", "yikes", "yup",
))

MATH_WORDS = frozenset((
    "ans", "arccos", "arcsin", "arctan", "argmax", "argmin", "arr", "cbrt", "cnt", "cos", "cosh", "cot", "cov",
    "csc", "deg", "det", "dim", "dp", "exp", "gcd", "idx", "inf", "ker", "lcm", "len", "lg", "lim", "ln", "log",
    "max", "min", "mod", "pmod", "prod", "ptr", "sec", "sin", "sinh", "sqrt", "sup", "tan", "tanh", "tmp", "tr",
))

NEUTRAL_WORDS = INTERJECTIONS | MATH_WORDS
# The same words as written in a sentence (lower case, Capitalised, UPPER): a set lookup without str.lower().
NEUTRAL_FORMS = frozenset(f for w in NEUTRAL_WORDS for f in (w, w.capitalize(), w.upper()))
