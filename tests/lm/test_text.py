"""Byte tokenizer, token-type tagger and the token-type → expert mapping (pimoe/text.py)."""


import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pimoe.lm.text import (
    DEFAULT_TYPE_TO_EXPERT,
    IGNORE_TYPE_ID,
    NUM_TOKEN_TYPES,
    ByteTokenizer,
    TokenType,
    TypeToExpertMapping,
    expert_type_vocabulary,
    tag_batch,
    tag_ids,
    tag_tokens,
)

TOKENIZER = ByteTokenizer()

# One letter per byte: N number, O operator, C comparison, P paren, L logic word, W word, U punct, S space, X other.
CODES = {
    "N": TokenType.NUMBER,
    "O": TokenType.OPERATOR,
    "C": TokenType.COMPARISON,
    "P": TokenType.PAREN,
    "L": TokenType.LOGIC_WORD,
    "W": TokenType.WORD,
    "U": TokenType.PUNCT,
    "S": TokenType.SPACE,
    "X": TokenType.OTHER,
}


# --- tokenizer ---------------------------------------------------------------------------------------------------


@given(st.text())
def test_decode_inverts_encode_for_any_text(text):
    assert TOKENIZER.decode(TOKENIZER.encode(text)) == text


def test_lone_surrogates_round_trip():
    text = "a\ud800b\udfff\ud83d\ude00"
    assert TOKENIZER.decode(TOKENIZER.encode(text)) == text


@given(st.lists(st.integers(0, TOKENIZER.vocab_size - 1), max_size=64))
def test_decode_never_raises_on_ids_in_the_vocabulary(ids):
    assert isinstance(TOKENIZER.decode(ids), str)


def test_decode_replaces_bytes_that_are_not_utf8():
    cut_emoji = TOKENIZER.encode("😀")[:2]
    assert TOKENIZER.decode([104, 105, *cut_emoji]) == "hi\ufffd"


def test_decode_skips_special_tokens():
    ids = TOKENIZER.encode("hey", add_bos=True, add_eos=True) + [TOKENIZER.pad_id]
    assert ids[0] == TOKENIZER.bos_id and ids[-2] == TOKENIZER.eos_id
    assert TOKENIZER.decode(ids) == "hey"
    assert TOKENIZER.decode(torch.tensor(ids)) == "hey"


@pytest.mark.parametrize("bad_id", [-1, ByteTokenizer.vocab_size])
def test_decode_rejects_ids_outside_the_vocabulary(bad_id):
    with pytest.raises(ValueError, match=str(bad_id)):
        TOKENIZER.decode([65, bad_id])


def test_specials_sit_above_the_256_bytes():
    specials = {TOKENIZER.pad_id, TOKENIZER.bos_id, TOKENIZER.eos_id}
    assert min(specials) >= 256 and len(specials) == 3
    assert TOKENIZER.vocab_size == max(specials) + 1
    assert TOKENIZER.encode("\x00") == [0]


def test_encode_batch_pads_on_the_right_and_truncates_to_max_len():
    texts = ["hi", "hello world", ""]
    ids, mask = TOKENIZER.encode_batch(texts, max_len=5, add_bos=True)

    assert ids.shape == mask.shape == (3, 5)
    assert ids.dtype == mask.dtype == torch.long
    assert ids[1].tolist() == TOKENIZER.encode("hello world", add_bos=True)[:5]
    assert ids[0].tolist() == [TOKENIZER.bos_id, 104, 105, TOKENIZER.pad_id, TOKENIZER.pad_id]
    assert mask.sum(dim=1).tolist() == [3, 5, 1]
    assert (ids[mask == 0] == TOKENIZER.pad_id).all()


def test_encode_batch_width_is_the_longest_row_capped_at_max_len():
    ids, _ = TOKENIZER.encode_batch(["ab", "abcd"], max_len=100, add_eos=True)
    assert ids.shape == (2, 5)
    assert ids[1, -1] == TOKENIZER.eos_id


@pytest.mark.parametrize("max_len", [0, -3, 2.5, True])
def test_encode_batch_rejects_a_bad_max_len(max_len):
    with pytest.raises(ValueError, match="max_len"):
        TOKENIZER.encode_batch(["abc"], max_len=max_len)


def test_batch_functions_refuse_a_bare_string():
    with pytest.raises(ValueError, match="single str"):
        TOKENIZER.encode_batch("hello", max_len=4)
    with pytest.raises(ValueError, match="single str"):
        tag_batch("hello", max_len=4)


# --- tagger ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("17+26=43", "NNONNONN"),
        ("17-3", "NNON"),
        ("x=-3", "WONN"),
        ("(-3)", "PNNP"),
        ("5*-3 n-1", "NONNSWON"),
        ("17 - 3", "NNSOSN"),
        ("3.14.", "NNNNU"),
        ("x.5", "WUN"),
        ("3x4 3 x 4 2x more", "NON" + "S" + "NSOSN" + "S" + "NW" + "S" + "WWWW"),
        ("a<=b!=c>d", "WCCWCCWCW"),
        ("7 ≤ 9", "NS" + "CCC" + "SN"),
        ("6×7÷2", "N" + "OO" + "N" + "OO" + "N"),
        ("[1]{2}", "PNPPNP"),
        ("if android ifs orange or IF Not", "LL" + "S" + "W" * 7 + "S" + "WWW" + "S" + "W" * 6 + "SLLSLLSLLL"),
        ("So, therefore!", "LLUS" + "L" * 9 + "U"),
        ("well-known don't", "WWWWUWWWWWS" + "WWWWW"),
        ("Hi,\tyou?\n", "WWUSWWWUS"),
        ("café 😀 ٣", "WWWWW" + "S" + "XXXX" + "S" + "XX"),
        ("1,000", "NUNNN"),
        ("50%", "NNO"),
        ("", ""),
    ],
)
def test_tagger_labels_each_byte_with_its_span_type(text, codes):
    assert tag_tokens(text) == [CODES[code] for code in codes]


@given(st.text())
def test_tags_align_one_to_one_with_encoded_tokens(text):
    types = tag_tokens(text)
    assert len(types) == len(TOKENIZER.encode(text))
    assert tag_ids(text).tolist() == [int(token_type) for token_type in types]


def test_digits_are_numbers_and_letters_words_wherever_they_sit():
    text = "Ana has 17 apples and buys 26.5 more"
    for char, token_type in zip(text, tag_tokens(text), strict=True):
        if char.isdigit():
            assert token_type == TokenType.NUMBER
        elif char.isalpha() and token_type != TokenType.LOGIC_WORD:
            assert token_type == TokenType.WORD


def test_tag_batch_aligns_with_encode_batch():
    texts = ["1+1=2", "if so, then 3>2 and more text here", ""]
    ids, mask = TOKENIZER.encode_batch(texts, max_len=12, add_bos=True, add_eos=True)
    types = tag_batch(texts, max_len=12, add_bos=True, add_eos=True)

    assert types.shape == ids.shape and types.dtype == torch.long
    is_special = (ids == TOKENIZER.bos_id) | (ids == TOKENIZER.eos_id) | (ids == TOKENIZER.pad_id)
    assert ((types == IGNORE_TYPE_ID) == is_special).all()
    assert types[0, 1:6].tolist() == [int(t) for t in tag_tokens("1+1=2")]
    assert types[1, 1:].tolist() == [int(t) for t in tag_tokens(texts[1])[:11]]
    assert mask[2].tolist() == [1, 1] + [0] * 10


def test_tagging_100k_characters_gives_one_type_per_byte_and_repeats_with_the_text():
    # NOTE: speed is a benchmark's job, not a timed test's; this checks the long input is tagged whole and consistently.
    sentence = "Ana has 17 apples and buys 26 more, so she has 17+26=43. 43>40, therefore it is full. "
    text = (sentence * 1200)[:100_000]
    types = tag_tokens(text)
    assert len(types) == 100_000
    assert types[: len(sentence)] == tag_tokens(sentence)
    assert types[len(sentence) : 2 * len(sentence)] == tag_tokens(sentence)


# --- token type → expert mapping ---------------------------------------------------------------------------------


def test_default_mapping_sends_numbers_and_operators_to_computation():
    mapping = TypeToExpertMapping()
    assert mapping.expert_type_of(TokenType.NUMBER) == "computation"
    assert mapping.expert_type_of("operator") == "computation"
    assert mapping.expert_type_of(TokenType.LOGIC_WORD) == "logical"
    assert set(DEFAULT_TYPE_TO_EXPERT) == set(TokenType)


def test_overrides_replace_only_the_given_entries():
    mapping = TypeToExpertMapping(overrides={"number": "Mathematical", TokenType.SPACE: "reasoning"})
    assert mapping.expert_type_of(TokenType.NUMBER) == "mathematical"
    assert mapping.expert_type_of(TokenType.SPACE) == "reasoning"
    assert mapping.expert_type_of(TokenType.OPERATOR) == "computation"
    assert DEFAULT_TYPE_TO_EXPERT[TokenType.NUMBER] == "computation"


def test_unknown_expert_name_raises_naming_it():
    with pytest.raises(ValueError, match="calculator"):
        TypeToExpertMapping(overrides={"number": "calculator"})
    with pytest.raises(ValueError, match="poetic"):
        TypeToExpertMapping(fallback="poetic")


def test_unknown_token_type_raises_naming_it():
    with pytest.raises(ValueError, match="digit"):
        TypeToExpertMapping(overrides={"digit": "computation"})


def test_allowed_experts_marks_every_expert_of_a_repeated_type():
    experts = ["computation", "language", "computation", "logical"]
    type_ids = torch.tensor([[TokenType.NUMBER, TokenType.WORD, TokenType.LOGIC_WORD, IGNORE_TYPE_ID]])

    allowed = TypeToExpertMapping().allowed_experts(type_ids, experts)

    assert allowed.shape == (1, 4, 4) and allowed.dtype == torch.bool
    assert allowed[0].tolist() == [
        [True, False, True, False],
        [False, True, False, False],
        [False, False, False, True],
        [False, False, False, False],
    ]


def test_type_without_an_expert_falls_back_to_language():
    type_ids = torch.tensor([TokenType.COMPARISON, TokenType.NUMBER])
    allowed = TypeToExpertMapping().allowed_experts(type_ids, ["computation", "language"])
    assert allowed.tolist() == [[False, True], [True, False]]


def test_type_without_expert_or_fallback_gets_no_target():
    type_ids = torch.tensor([TokenType.WORD, TokenType.NUMBER])
    experts = ["computation", "logical"]
    for mapping in (TypeToExpertMapping(), TypeToExpertMapping(fallback=None)):
        assert mapping.allowed_experts(type_ids, experts).tolist() == [[False, False], [True, False]]
        assert mapping.target_expert_type_ids(type_ids, experts).tolist() == [-1, 0]
    no_fallback = TypeToExpertMapping(fallback=None)
    assert no_fallback.allowed_experts(torch.tensor([TokenType.PAREN]), ["computation", "language"]).tolist() == [
        [False, False]
    ]


def test_target_expert_type_ids_index_the_model_vocabulary():
    experts = ["language", "computation", "language", "mathematical"]
    type_ids = torch.tensor([[TokenType.WORD, TokenType.NUMBER, TokenType.PAREN, TokenType.LOGIC_WORD, -1]])

    targets = TypeToExpertMapping().target_expert_type_ids(type_ids, experts)

    vocabulary = expert_type_vocabulary(experts)
    assert vocabulary == ["language", "computation", "mathematical"]
    assert targets.shape == type_ids.shape
    # LOGIC_WORD has no logical expert here, so it falls back to language.
    assert [vocabulary[i] if i >= 0 else None for i in targets[0].tolist()] == [
        "language",
        "computation",
        "mathematical",
        "language",
        None,
    ]


@given(
    st.lists(st.integers(IGNORE_TYPE_ID, NUM_TOKEN_TYPES - 1), min_size=1, max_size=20),
    st.lists(
        st.sampled_from(["reasoning", "computation", "mathematical", "logical", "language"]), min_size=1, max_size=8
    ),
)
def test_allowed_experts_matches_a_per_token_reference(type_ids, experts):
    mapping = TypeToExpertMapping()
    allowed = mapping.allowed_experts(torch.tensor(type_ids), experts)
    for row, type_id in zip(allowed.tolist(), type_ids, strict=True):
        if type_id == IGNORE_TYPE_ID:
            assert not any(row)
            continue
        wanted = mapping.expert_type_of(type_id)
        target = wanted if wanted in experts else ("language" if "language" in experts else None)
        assert row == [name == target for name in experts]


@pytest.mark.parametrize("bad", [torch.tensor([NUM_TOKEN_TYPES]), torch.tensor([-2]), torch.tensor([0.0])])
def test_allowed_experts_rejects_ids_that_are_not_token_types(bad):
    with pytest.raises(ValueError, match="token"):
        TypeToExpertMapping().allowed_experts(bad, ["computation"])


def test_allowed_experts_rejects_an_unknown_or_empty_expert_list():
    type_ids = torch.tensor([0])
    with pytest.raises(ValueError, match="wizard"):
        TypeToExpertMapping().allowed_experts(type_ids, ["computation", "wizard"])
    with pytest.raises(ValueError, match="empty"):
        TypeToExpertMapping().allowed_experts(type_ids, [])
