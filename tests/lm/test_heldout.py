"""Held-out evaluation text (pimoe/lm/heldout.py) shares nothing with the training templates, and the evaluation
helpers score what they claim to score."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from pimoe.handoff.decode import label_positions
from pimoe.handoff.expert import ComputationExpert
from pimoe.handoff.extract import find_expressions
from pimoe.lm.data import TEMPLATE_NAMES, CorpusConfig, generate_corpus
from pimoe.lm.heldout import CONTROL_KINDS, HANDOFF_KINDS, HELDOUT_TEXTS, heldout_documents

NGRAM = 5


def _ngrams(text: str) -> set[tuple[str, ...]]:
    """Word n-grams with every number masked, lowercased: the sentence frame without its operands."""
    words = re.sub(r"[0-9][0-9.,]*", "#", text.lower()).split()
    return {tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


@pytest.fixture(scope="module")
def training_frames() -> set[tuple[str, ...]]:
    corpus = generate_corpus(CorpusConfig(seed=0, num_train=6000, num_val=0))
    frames: set[tuple[str, ...]] = set()
    for document in corpus.train:
        frames |= _ngrams(document)
    return frames


def _heldout_texts() -> dict[str, list[str]]:
    texts = {kind: heldout_documents(kind, seed=0, count=20) for kind in HANDOFF_KINDS + CONTROL_KINDS}
    texts.update({f"fixed/{name}": [text] for name, text in HELDOUT_TEXTS.items()})
    return texts


def test_heldout_template_names_are_not_training_template_names():
    assert not set(HANDOFF_KINDS + CONTROL_KINDS) & set(TEMPLATE_NAMES)


@pytest.mark.parametrize("kind", sorted(_heldout_texts()))
def test_no_heldout_sentence_frame_occurs_in_training(kind, training_frames):
    shared = set()
    for text in _heldout_texts()[kind]:
        shared |= _ngrams(text) & training_frames
    assert not shared, f"{kind}: {NGRAM}-word runs also in the training corpus: {sorted(shared)[:5]}"


def test_the_overlap_check_would_catch_a_training_frame(training_frames):
    planted = generate_corpus(CorpusConfig(seed=5, num_train=1, num_val=0, templates=("addition",))).train[0]
    assert _ngrams(planted) & training_frames


@pytest.mark.parametrize("kind", HANDOFF_KINDS)
def test_every_heldout_computation_is_labelled_and_its_stated_answer_is_exact(kind):
    expert = ComputationExpert()
    for text in heldout_documents(kind, seed=3, count=15):
        [found] = find_expressions(text)
        assert len(label_positions(text)) == 1
        stated = text[found.equals + 1 :].strip().lstrip("€$").split(" ")[0].replace(",", "")
        assert expert.evaluate(found.computable).value == Fraction(stated.rstrip(".")), text


@pytest.mark.parametrize("kind", CONTROL_KINDS)
def test_control_texts_hold_no_computation(kind):
    for text in heldout_documents(kind, seed=3, count=15):
        assert "=" in text and label_positions(text) == [], text


def test_heldout_operands_lie_outside_the_training_range():
    for kind in ("warehouse", "ledger", "area"):
        for text in heldout_documents(kind, seed=1, count=20):
            operands = [int(n) for n in re.findall(r"[0-9]+", find_expressions(text)[0].computable)]
            assert max(operands) >= 10**6, text  # training: 0..99, thousands up to 6 digits


def test_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown held-out kind 'poem'"):
        heldout_documents("poem")
