"""Synthetic corpus, text-file loading and packed LM batches (pimoe/data.py)."""

import re
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pimoe.lm.data import (
    TEMPLATE_NAMES,
    CorpusConfig,
    LMDataset,
    generate_corpus,
    load_text_bytes,
    load_text_file,
    make_batches,
)
from pimoe.lm.text import IGNORE_TYPE_ID, ByteTokenizer, TokenType, tag_ids

TOKENIZER = ByteTokenizer()

NUM = r"-?\d+(?:\.\d+)?"
EQUATION = re.compile(rf"(?<![\d.])(\(?{NUM}(?:\s*[-+*/×÷]\s*\(?{NUM}\)?)+)\s*=\s*({NUM})")
COMPARISON = re.compile(rf"(?<![\d.])({NUM})\s*(<=|>=|!=|==|<|>)\s*({NUM})")
RELATIONS = {
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def evaluate(expression: str) -> Fraction:
    """Exact value of an expression the EQUATION regex matched (digits, + - * / × ÷, parentheses only)."""
    python = expression.replace("×", "*").replace("÷", "/")
    python = re.sub(r"\d+(?:\.\d+)?", lambda m: f"Fraction('{m.group()}')", python)
    return eval(python, {"Fraction": Fraction, "__builtins__": {}})  # noqa: S307 - input matched a strict regex


def check_statements(document: str) -> int:
    """Assert every equation is correct and every comparison holds, except conditions after "If" and claims the text
    calls false. Returns how many statements were checked."""
    checked = 0
    document = re.sub(r"(?<=\d),(?=\d{3})", "", document)  # thousands separators ("1,234" is 1234)
    for match in EQUATION.finditer(document):
        assert evaluate(match.group(1)) == Fraction(match.group(2)), (
            f"wrong arithmetic {match.group()!r} in {document!r}"
        )
        checked += 1
    for match in COMPARISON.finditer(document):
        if document[: match.start()].lower().endswith("if "):
            continue
        claimed = not document[match.end() :].startswith(" is false")
        actual = RELATIONS[match.group(2)](Fraction(match.group(1)), Fraction(match.group(3)))
        assert actual == claimed, f"comparison {match.group()!r} is stated as {claimed} in {document!r}"
        checked += 1
    return checked


# --- corpus ------------------------------------------------------------------------------------------------------


def test_same_seed_gives_an_identical_corpus():
    config = CorpusConfig(seed=7, num_train=200, num_val=30)
    first, second = generate_corpus(config), generate_corpus(CorpusConfig(seed=7, num_train=200, num_val=30))
    assert first.train == second.train and first.val == second.val
    assert len(first.train) == 200 and len(first.val) == 30


def test_different_seeds_give_different_corpora():
    first = generate_corpus(CorpusConfig(seed=1, num_train=50, num_val=10))
    second = generate_corpus(CorpusConfig(seed=2, num_train=50, num_val=10))
    assert first.train != second.train and first.val != second.val


def test_changing_num_val_leaves_the_train_split_unchanged():
    small = generate_corpus(CorpusConfig(seed=3, num_train=40, num_val=5))
    large = generate_corpus(CorpusConfig(seed=3, num_train=40, num_val=50))
    assert small.train == large.train
    assert large.val[:5] == small.val


def test_generation_does_not_touch_global_random_state():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_corpus(CorpusConfig(num_train=20, num_val=0))
    assert random.random() == expected


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_every_template_states_only_correct_arithmetic(template):
    corpus = generate_corpus(CorpusConfig(seed=11, num_train=150, num_val=0, templates=(template,)))
    for document in corpus.train:
        assert check_statements(document) >= 1, f"nothing checkable in {document!r}"


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    min_value=st.integers(0, 50),
    span=st.integers(1, 200),
    per_document=st.integers(1, 3),
)
def test_arithmetic_is_correct_for_any_seed_and_range(seed, min_value, span, per_document):
    config = CorpusConfig(
        seed=seed,
        num_train=40,
        num_val=0,
        min_value=min_value,
        max_value=min_value + span,
        problems_per_document=per_document,
    )
    corpus = generate_corpus(config)
    assert sum(check_statements(document) for document in corpus.train) >= len(corpus.train) * per_document


def test_default_corpus_uses_every_template_and_every_token_type():
    corpus = generate_corpus(CorpusConfig(seed=0, num_train=500, num_val=0))
    text = " ".join(corpus.train)
    for marker in ("+", "-", "*", "/", "(", "If ", "is true", "is false", "hence", "even", "degrees", "."):
        assert marker in text
    assert re.search(r"=-\d", text), "no negative result in 500 documents"
    assert set(tag_ids(text).tolist()) == {int(t) for t in TokenType}  # OTHER: '°', '€', '£' of recipes and prices


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_train", 0),
        ("num_val", -1),
        ("min_value", -5),
        ("max_value", 0),
        ("seed", True),
        ("templates", ("addition", "limerick")),
        ("problems_per_document", 0),
    ],
)
def test_config_rejects_a_bad_value_naming_it(field, value):
    with pytest.raises(ValueError, match=field) as error:
        CorpusConfig(**{field: value})
    assert ("limerick" if field == "templates" else repr(value)) in str(error.value)


def test_config_rejects_an_empty_value_range():
    with pytest.raises(ValueError, match="min_value"):
        CorpusConfig(min_value=10, max_value=10)


# --- text files --------------------------------------------------------------------------------------------------


def test_load_text_file_splits_lines_and_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\ufefffirst line\nsecond line\n\n  third  \n", encoding="utf-8")
    assert load_text_file(path) == ["first line", "second line", "third"]
    assert load_text_file(path, split="paragraphs") == ["first line\nsecond line", "third"]
    assert load_text_file(path, split="none") == ["first line\nsecond line\n\n  third"]


def test_load_text_file_refuses_a_missing_file(tmp_path):
    path = tmp_path / "absent.txt"
    with pytest.raises(ValueError, match="absent.txt.*does not exist"):
        load_text_file(path)


def test_load_text_file_refuses_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8.*offset 3"):
        load_text_file(path)


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_load_text_file_refuses_an_empty_file(tmp_path, content):
    path = tmp_path / "blank.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="blank.txt is empty"):
        load_text_file(path)


def test_load_text_file_refuses_a_file_over_max_bytes(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("x" * 101, encoding="utf-8")
    with pytest.raises(ValueError, match="big.txt is too large"):
        load_text_file(path, max_bytes=100)
    assert load_text_file(path, max_bytes=101) == ["x" * 101]


def test_load_text_file_refuses_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        load_text_file(tmp_path)


def test_load_text_bytes_names_the_source_and_checks_split():
    with pytest.raises(ValueError, match="upload.txt is not UTF-8"):
        load_text_bytes(b"\xff\xfe", source="upload.txt")
    with pytest.raises(ValueError, match="sentences"):
        load_text_bytes(b"hello", split="sentences")


# --- packed LM batches -------------------------------------------------------------------------------------------

DOCUMENTS = generate_corpus(CorpusConfig(seed=5, num_train=60, num_val=0)).train


def test_batches_have_the_requested_shapes():
    batch = next(make_batches(DOCUMENTS, TOKENIZER, batch_size=4, seq_len=32, seed=0))
    assert all(tensor.shape == (4, 32) and tensor.dtype == torch.long for tensor in batch)
    assert (batch.attention_mask == 1).all()


def test_targets_are_the_inputs_shifted_by_one():
    for batch in make_batches(DOCUMENTS, TOKENIZER, batch_size=8, seq_len=16, seed=1):
        assert torch.equal(batch.input_ids[:, 1:], batch.target_ids[:, :-1])


def test_unshuffled_batches_cover_the_stream_with_every_token_a_target_once():
    dataset = LMDataset(DOCUMENTS, TOKENIZER, seq_len=16)
    batches = list(dataset.batches(batch_size=5, shuffle=False))
    inputs = torch.cat([batch.input_ids for batch in batches]).reshape(-1)
    targets = torch.cat([batch.target_ids for batch in batches]).reshape(-1)
    types = torch.cat([batch.token_types for batch in batches]).reshape(-1)
    covered = len(dataset) * 16

    assert len(dataset) == (len(dataset.tokens) - 1) // 16
    assert torch.equal(inputs, dataset.tokens[:covered])
    assert torch.equal(targets, dataset.tokens[1 : covered + 1])
    assert torch.equal(types, dataset.token_types[:covered])


def test_stream_separates_documents_with_eos_and_types_follow_the_inputs():
    dataset = LMDataset(DOCUMENTS[:3], TOKENIZER, seq_len=8)
    expected_ids, expected_types = [], []
    for document in DOCUMENTS[:3]:
        expected_ids += TOKENIZER.encode(document, add_eos=True)
        expected_types += tag_ids(document).tolist() + [IGNORE_TYPE_ID]
    assert dataset.tokens.tolist() == expected_ids
    assert dataset.token_types.tolist() == expected_types
    for batch in dataset.batches(batch_size=3, seed=0):
        assert torch.equal(batch.token_types == IGNORE_TYPE_ID, batch.input_ids == TOKENIZER.eos_id)


def test_batches_are_deterministic_for_a_seed_and_shuffled_by_it():
    def first_inputs(seed):
        return next(make_batches(DOCUMENTS, TOKENIZER, batch_size=6, seq_len=16, seed=seed)).input_ids

    assert torch.equal(first_inputs(0), first_inputs(0))
    assert not torch.equal(first_inputs(0), first_inputs(1))


def test_drop_last_drops_only_the_short_final_batch():
    dataset = LMDataset(DOCUMENTS, TOKENIZER, seq_len=16)
    # the window count depends on the corpus; the test needs a batch size that leaves a short final batch
    batch_size = next(size for size in range(7, 64) if len(dataset) % size)
    kept = list(dataset.batches(batch_size, drop_last=True))
    every = list(dataset.batches(batch_size, drop_last=False))
    assert len(kept) == len(dataset) // batch_size
    assert len(every) == len(kept) + 1
    assert all(len(batch.input_ids) == batch_size for batch in kept)


def test_too_little_text_for_one_window_raises():
    with pytest.raises(ValueError, match="seq_len"):
        LMDataset(["tiny"], TOKENIZER, seq_len=64)


@pytest.mark.parametrize(("batch_size", "seq_len"), [(0, 8), (4, 0)])
def test_make_batches_rejects_non_positive_sizes_before_iterating(batch_size, seq_len):
    with pytest.raises(ValueError, match="batch_size" if batch_size < 1 else "seq_len"):
        make_batches(DOCUMENTS, TOKENIZER, batch_size=batch_size, seq_len=seq_len)


def test_trainers_of_the_same_corpus_settings_share_its_datasets_and_others_do_not():
    from pimoe.lm.data import CorpusConfig, corpus_datasets

    tokenizer = ByteTokenizer()
    config = CorpusConfig(seed=3, num_train=40, num_val=8)
    train, val = corpus_datasets(config, tokenizer, 32)

    assert corpus_datasets(CorpusConfig(seed=3, num_train=40, num_val=8), tokenizer, 32) == (train, val)
    other_seed, _ = corpus_datasets(CorpusConfig(seed=4, num_train=40, num_val=8), tokenizer, 32)
    assert other_seed is not train and not torch.equal(other_seed.tokens[:200], train.tokens[:200])
    assert corpus_datasets(config, tokenizer, 16)[0].seq_len == 16
    with pytest.raises(ValueError, match="no validation documents"):
        corpus_datasets(CorpusConfig(seed=3, num_train=40, num_val=0), tokenizer, 32)
