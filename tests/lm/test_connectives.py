"""The connectives corpus (pimoe/lm/connectives.py) puts every logic word in many places and next to look-alikes."""

from __future__ import annotations

import random
import re

from pimoe.lm.connectives import connective_document, connective_sentence
from pimoe.lm.data import CorpusConfig, generate_corpus
from pimoe.lm.text import LOGIC_WORDS, TokenType, tag_tokens

# Words that share their first letters with a logic word (or are one plus more letters): the router must learn that
# their letters are language.
LOOK_ALIKES = ("they", "these", "those", "thin", "thistles", "note", "nothing", "notice", "android", "soap", "order",
               "orange", "also", "allowed", "someone", "somewhere", "sometimes", "elsewhere", "iffy", "nonetheless",
               "thunder", "hens", "but", "before")


def _sentences(count: int = 3000) -> list[str]:
    rng = random.Random(7)
    return [connective_sentence(rng) for _ in range(count)]


def test_every_logic_word_starts_a_sentence_and_sits_inside_one():
    sentences = _sentences()
    for word in LOGIC_WORDS - {"implies"}:  # English starts no sentence with "implies"
        first = [s for s in sentences if re.match(rf"{word}\b", s, re.IGNORECASE)]
        inside = [s for s in sentences if re.search(rf"\w[,;:]? {word}\b", s)]
        assert first, f"{word!r} never starts a sentence"
        assert inside, f"{word!r} never follows another word"
    assert any(re.search(r"\w,? implies\b", s) for s in sentences)


def test_connectives_follow_punctuation_and_appear_in_lists_and_in_capitals():
    text = " ".join(_sentences())
    assert re.search(r", (then|so|thus|hence|therefore|because) ", text)
    assert re.search(r"; (so|thus|hence|therefore|else) ", text)
    assert re.search(r"\w+, \w+,? (and|or) \w+", text)  # lists
    assert re.search(r"\b(IF|THEN|AND|OR|NOT)\b", text)


def test_look_alikes_occur_and_are_tagged_as_language_words():
    text = " ".join(_sentences())
    words = set(re.findall(r"[a-z]+", text.lower()))
    missing = [w for w in LOOK_ALIKES if w not in words]
    assert not missing, f"look-alikes never drawn: {missing}"
    for word in LOOK_ALIKES:
        assert set(tag_tokens(f"x {word} y")) <= {TokenType.WORD, TokenType.SPACE}, word


def test_logic_words_are_a_minority_of_words():
    # A corpus where nearly every word is a connective would teach "always logical"; ordinary prose must dominate.
    words = re.findall(r"[A-Za-z]+", " ".join(_sentences()))
    share = sum(w.lower() in LOGIC_WORDS for w in words) / len(words)
    assert 0.05 < share < 0.25, share


def test_documents_are_seeded_and_in_the_default_corpus():
    assert connective_document(random.Random(3), 0, 99) == connective_document(random.Random(3), 0, 99)
    corpus = generate_corpus(CorpusConfig(seed=0, num_train=20, num_val=0, templates=("connectives",)))
    assert all(len(re.findall(r"[.!?;]", doc)) >= 4 for doc in corpus.train)
