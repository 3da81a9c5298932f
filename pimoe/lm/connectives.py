"""Training text for the logic connectives: LOGIC_WORDS inside ordinary sentences of many shapes, beside the words
that look like them.

Why: the router labels a byte by the whole word it belongs to ("then" -> logical, "they" -> language), and a causal
byte model sees a word one byte at a time. It can only be right once the word is decided ("the" + "n"), and only if
it has seen the connective in many places: at the start of a sentence, after a comma, a semicolon, a dash or a quote,
in the middle of a clause, in lists, capitalised, and next to words that share its first letters (they, these,
thistle, note, nothing, order, android, also, soap, allow, someone, elsewhere, ...). The frames of `pimoe.lm.varied`
put connectives between two clauses of one fixed shape; the grammar here draws the clauses from a larger vocabulary
and the frames from a larger set, so that no frame is the cue, the word is.

Every sentence is past-tense narration or a general statement, so verb agreement never needs a subject's number.
The evaluation texts (`pimoe.lm.heldout`) share no five-word run with this text (tests/lm/test_heldout.py).
"""

from __future__ import annotations

import random

__all__ = ["connective_document", "connective_sentence"]

# Words that share their first letters with a logic word, or are a logic word plus more letters: their letters must
# go to the language expert however far the shared prefix runs.
_SUBJECTS = (
    "they", "these twins", "those hikers", "the thin tailor", "this engineer", "someone", "somebody", "nobody",
    "everyone", "the android", "the orchestra", "our neighbour", "the notary", "Thea", "Thomas", "Andrea", "Olga",
    "Allie", "Sonia", "Iris", "Elsa", "Nora", "Truman", "Theo", "Hendrik", "Imogen", "Otto", "Noam", "Sofia",
    "the soldier", "the thief", "the therapist", "the optician", "the old sailor", "my aunt", "a tourist",
    "the baker", "the mayor", "the nurse", "the pilot", "the gardener", "her uncle", "the twins", "the ferryman",
    "a stranger", "the librarian", "my brother", "the new clerk", "the shepherd", "the owner", "the elders",
)
_PLURAL_SUBJECTS = frozenset(("they", "these twins", "those hikers", "the twins", "the elders"))
_VERBS = (  # (past tense, base form, object)
    ("noticed", "notice", "the note"), ("ordered", "order", "fresh soap"), ("sold", "sell", "the old sofa"),
    ("found", "find", "nothing"), ("found", "find", "something odd"), ("kept", "keep", "the thimble"),
    ("opened", "open", "the orchard gate"), ("painted", "paint", "the theatre door"), ("fixed", "fix", "the truck"),
    ("carried", "carry", "the oars"), ("sorted", "sort", "those letters"), ("counted", "count", "the hens"),
    ("tasted", "taste", "the soup"), ("watched", "watch", "the thunder"), ("mended", "mend", "the notebook"),
    ("cleaned", "clean", "the organ"), ("packed", "pack", "these tools"), ("borrowed", "borrow", "their ladder"),
    ("returned", "return", "the andirons"), ("planted", "plant", "thistles"), ("washed", "wash", "the thermos"),
    ("visited", "visit", "the island"), ("repaired", "repair", "the alley fence"), ("sang", "sing", "the song"),
    ("read", "read", "the thesis"), ("drew", "draw", "the south wall"), ("tied", "tie", "the anchor rope"),
    ("hid", "hide", "the orange"), ("lost", "lose", "the elbow pad"), ("heard", "hear", "the trumpet"),
    ("allowed", "allow", "them in"), ("thanked", "thank", "the others"), ("ate", "eat", "the noodles"),
    ("moved", "move", "the ice"), ("answered", "answer", "the notice"), ("shared", "share", "the idea"),
)
_STATES = (  # (past form "was X", general form "is X")
    "thin", "there", "notable", "soaked", "alone", "noted", "thorough", "elsewhere", "sore", "ready", "late", "tired",
    "honest", "orderly", "soft", "thirsty", "thankful", "nervous", "iffy", "allowed in", "sound asleep", "hungry",
    "outside", "early", "closed", "open", "sorry", "away", "home", "right", "wrong", "busy", "quiet", "lost",
)
_TAILS = ("", "", "", "", " early", " there", " later", " again", " at noon", " on Thursday", " somewhere",
          " sometimes", " though", " also", " too", " once or twice",
          " more or less", " sooner or later", " at once", " thoroughly", " in the south",
          " by the theatre", " near the island", " this morning", " that night", " in the north")
_PLURALS = ("hens", "thistles", "notebooks", "oranges", "sofas", "trucks", "androids", "islands", "orchards",
            "soldiers", "theatres", "notes", "orders", "thimbles", "alleys", "others", "nomads", "songs", "thieves",
            "lanterns", "ferries", "birds", "doors", "roads", "cats", "swimmers", "bakers", "windows", "boats")
_PLURAL_VERBS = ("were late", "stayed home", "were sold", "looked old", "were noted", "were thin", "slept",
                 "grew there", "sounded odd", "stood in a row", "were allowed in", "disappeared", "were soaked")


def _subject(rng: random.Random) -> str:
    return rng.choice(_SUBJECTS)


def _clause(rng: random.Random) -> str:
    """A past-tense clause, sometimes negated with 'not'."""
    subject, draw = _subject(rng), rng.random()
    plural = subject in _PLURAL_SUBJECTS
    if draw < 0.55:
        past, base, obj = rng.choice(_VERBS)
        verb = f"did not {base}" if rng.random() < 0.2 else ("never " + past if rng.random() < 0.05 else past)
        return f"{subject} {verb} {obj}{rng.choice(_TAILS)}"
    if draw < 0.8:
        state = rng.choice(_STATES)
        copula = rng.choice(("was", "was", "was not", "seemed", "felt", "stayed"))
        if plural:
            copula = copula.replace("was", "were")
        return f"{subject} {copula} {state}{rng.choice(_TAILS)}"
    amount = rng.choice(("all", "some", "none", "not all", "all of the", "some of the", "none of the", "most",
                         "not one of the", "few", "many", "both", "several", "a few", "no", "every one of the",
                         "each of the", "nearly all", "almost none of the", "only some of the", "two or three"))
    noun = rng.choice(_PLURALS)
    verb = rng.choice(_PLURAL_VERBS)
    if amount in ("none of the", "not one of the", "every one of the", "each of the", "almost none of the"):
        verb = verb.replace("were", "was", 1)
    return f"{amount} {noun} {verb}"


def _list(rng: random.Random) -> str:
    items = rng.sample(_PLURALS, rng.randint(2, 4))
    joiner = rng.choice((" and ", " or ", ", and ", ", or ", " and/or "))
    return ", ".join(items[:-1]) + joiner + items[-1]


# {a} and {b} are clauses, {l} a list; a frame puts a connective where written English puts it.
_FRAMES = (
    "if {a}, then {b}", "if {a} then {b}", "{a} then {b}", "{a}, then {b}", "{a} and then {b}", "first {a}, then {b}",
    "{a}, so {b}", "{a} so {b}", "so {a}", "and so {a}", "{a}, and so {b}", "{a}; so {b}",
    "{a}; thus {b}", "thus {a}", "thus, {a}", "{a}, thus {b}", "{a} thus {b}",
    "{a}, hence {b}", "hence {a}", "{a}; hence, {b}", "{a} hence {b}",
    "{a}, therefore {b}", "therefore {a}", "therefore, {a}", "{a}; therefore, {b}", "{a} therefore {b}",
    "{a} because {b}", "because {a}, {b}", "{a}, because {b}", "{a}, not because {b}",
    "{a} and {b}", "{a}, and {b}", "{a} or {b}", "either {a} or {b}", "{a}, or else {b}", "{a}; else {b}",
    "{a}, else {b}", "if not {a}, then {b}", "it is not true that {a}", "it is true that {a}",
    "that {a} is false", "that {a} is true", "true, {a}", "false: {a}", "{a} (true)", "{a} (or so they said)",
    "{a} implies {b}", "that {a} implies that {b}", "{a}, which implies {b}",
    "{a}, and {l} were there", "{l}: all of them were there", "{a}, but not {l}", "not that {a}", "not now: {a}",
    "{a} if {b}", "{a} only if {b}", "{a} if and only if {b}", "{a} - and {b}", "{a} -- so {b}",
    "\"then\", {a}", "{a}, or not", "{a} and, so, {b}", "{a}, true or false", "{a}; all true",
    "then {a}", "and then {a}", "or {a}", "or else {a}", "else {a}", "and {a}", "{a}, which in turn implies {b}",
    "some said {a}", "all agreed {a}", "none of them knew {a}", "not all of them knew {a}",
    # Ordinary connectives in the same places, so that a position after a comma or at the start of a sentence is no
    # cue: "but" and "before" start like "because", "though" and "those" like "thus", "when" and "whereas" like
    # nothing logical at all.
    "{a}, but {b}", "{a} but {b}", "but {a}", "{a}, yet {b}", "{a} before {b}", "before {a}, {b}", "{a} when {b}",
    "when {a}, {b}", "{a} while {b}", "{a} until {b}", "{a} unless {b}", "unless {a}, {b}", "{a} since {b}",
    "after {a}, {b}", "{a}, although {b}", "{a}, though {b}", "though {a}, {b}", "{a}; otherwise {b}",
    "{a} whereas {b}", "{a}, besides, {b}", "{a} as {b}", "{a}, by then {b}", "{a}; thereafter {b}",
    "{a}, nonetheless {b}", "whether or not {a}, {b}", "{a}, or so it seemed", "{a}, also {b}", "{a}, likewise {b}", "{a}; meanwhile {b}", "{a}, thereby {b}",
)
_ENDS = (".", ".", ".", ".", "!", "?", ";")


def connective_sentence(rng: random.Random) -> str:
    frame = rng.choice(_FRAMES)
    sentence = frame.format(a=_clause(rng), b=_clause(rng), l=_list(rng))
    sentence = sentence[0].upper() + sentence[1:]
    if rng.random() < 0.03:  # shouted, as in "IF ... THEN": the tagger matches logic words in any case
        sentence = sentence.upper()
    return sentence + rng.choice(_ENDS)


def connective_document(rng: random.Random, low: int, high: int) -> str:
    """Four to nine sentences, one of them a checkable comparison: the corpus states an equation or comparison in
    every document."""
    a, b = rng.randint(low, high), rng.randint(low, high)
    small, large = sorted((a, b))
    sentences = [connective_sentence(rng) for _ in range(rng.randint(4, 9))]
    fact = rng.choice((f"{large}>={small}, so that holds.", f"{small}<={large} is true, then nothing changes.",
                       f"{a}+{b}={a + b}, thus the count is right."))
    sentences.insert(rng.randint(0, len(sentences)), fact)
    return " ".join(sentences)
