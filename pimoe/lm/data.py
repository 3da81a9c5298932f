"""Training text for the tiny PiMoE language model: a seeded synthetic corpus, user files, and packed LM batches.

The synthetic corpus interleaves prose, logic words and arithmetic, so that every batch holds tokens of each
`TokenType` for the router to be trained and checked on (PiMoE/PiERN, arXiv 2509.18169). Every equation in it is
correct and every comparison is true, except where the text says otherwise ("... is false") or states a condition
("If 3>5 then ...").

Shape legend:
    B  batch size (windows per batch)
    T  seq_len, tokens per window
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from pimoe.lm.text import IGNORE_TYPE_ID, ByteTokenizer, tag_ids
from pimoe.lm.varied import VARIED_TEMPLATES

__all__ = [
    "TEMPLATE_NAMES",
    "Corpus",
    "CorpusConfig",
    "LMBatch",
    "LMDataset",
    "corpus_datasets",
    "generate_corpus",
    "load_text_bytes",
    "load_text_file",
    "make_batches",
    "split_datasets",
]

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mia", "Omar")
_OBJECTS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "shells", "cards", "eggs", "stones")

_Template = Callable[[random.Random, int, int], str]


def _names(rng: random.Random) -> tuple[str, str]:
    first, second = rng.sample(_NAMES, 2)
    return first, second


def _addition(rng: random.Random, low: int, high: int) -> str:
    a, b, name, obj = rng.randint(low, high), rng.randint(low, high), rng.choice(_NAMES), rng.choice(_OBJECTS)
    return f"{name} has {a} {obj} and buys {b} more, so {name} has {a}+{b}={a + b} {obj}."


def _subtraction(rng: random.Random, low: int, high: int) -> str:
    b, a = sorted((rng.randint(low, high), rng.randint(low, high)))
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    return f"{name} had {a} {obj} and gave away {b}, so {name} has {a}-{b}={a - b} {obj} left."


def _multiplication(rng: random.Random, low: int, high: int) -> str:
    a, b, obj = rng.randint(low, high), rng.randint(low, high), rng.choice(_OBJECTS)
    op = rng.choice(("*", "*", "×"))
    return f"There are {a} boxes with {b} {obj} in each, so there are {a}{op}{b}={a * b} {obj} in total."


def _division(rng: random.Random, low: int, high: int) -> str:
    # Exact by construction: divisor and quotient come from the range, the dividend is their product.
    divisor, quotient = rng.randint(max(1, low), high), rng.randint(low, high)
    name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
    op = rng.choice(("/", "/", "÷"))
    return (
        f"{name} shares {divisor * quotient} {obj} equally among {divisor} friends, "
        f"so each friend gets {divisor * quotient}{op}{divisor}={quotient} {obj}."
    )


def _comparison(rng: random.Random, low: int, high: int) -> str:
    a = rng.randint(low, high)
    b = rng.randint(low, high - 1)
    b += b >= a  # uniform over the range without a, so the two counts always differ
    (first, second), obj = _names(rng), rng.choice(_OBJECTS)
    winner = first if a > b else second
    relation = f"{max(a, b)}>{min(a, b)}" if rng.random() < 0.5 else f"{min(a, b)}<{max(a, b)}"
    return f"{first} has {a} {obj} and {second} has {b}. {relation}, therefore {winner} has more {obj}."


_RELATIONS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}
_NEGATION = {"<": ">=", ">": "<=", "<=": ">", ">=": "<", "==": "!=", "!=": "=="}


def _conditional(rng: random.Random, low: int, high: int) -> str:
    a, b, relation = rng.randint(low, high), rng.randint(low, high), rng.choice(tuple(_RELATIONS))
    first, second = _names(rng)
    holds = _RELATIONS[relation](a, b)
    winner = first if holds else second
    return (
        f"If {a}{relation}{b} then {first} wins, else {second} wins. "
        f"{a}{relation}{b} is {'true' if holds else 'false'}, so {winner} wins."
    )


def _two_step(rng: random.Random, low: int, high: int) -> str:
    packs, per_pack, name, obj = (
        rng.randint(low, high),
        rng.randint(low, high),
        rng.choice(_NAMES),
        rng.choice(_OBJECTS),
    )
    total = packs * per_pack
    given = rng.randint(0, total)
    return (
        f"{name} buys {packs} packs of {per_pack} {obj}, which is {packs}*{per_pack}={total} {obj}. "
        f"Then {name} gives away {given}, so {total}-{given}={total - given} are left."
    )


def _true_statement(rng: random.Random, low: int, high: int) -> str:
    a, b, op = rng.randint(low, high), rng.randint(low, high), rng.choice("+-*")
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a}{op}{b}={result} is true."


def _false_statement(rng: random.Random, low: int, high: int) -> str:
    a = rng.randint(low, high)
    b = rng.randint(low, high - 1)
    b += b >= a
    # a != b, so after ordering the pair each relation below is false and its negation true.
    relation = rng.choice(("<", ">", "=="))
    if relation == "<":
        a, b = max(a, b), min(a, b)
    elif relation == ">":
        a, b = min(a, b), max(a, b)
    return f"{a}{relation}{b} is false, because {a}{_NEGATION[relation]}{b}."


def _tenths(value: int) -> str:
    return f"{value // 10}.{value % 10}"


def _decimal(rng: random.Random, low: int, high: int) -> str:
    # Integers counted in tenths, so the printed sum is exact (no float rounding in the text).
    a, b = rng.randint(low * 10, high * 10), rng.randint(low * 10, high * 10)
    return (
        f"One rope is {_tenths(a)} m long and another is {_tenths(b)} m, "
        f"so together they are {_tenths(a)}+{_tenths(b)}={_tenths(a + b)} m."
    )


def _temperature(rng: random.Random, low: int, high: int) -> str:
    start, drop = rng.randint(low, high), rng.randint(low, high)
    now = start - drop
    verdict = f"{now}<0, so it is freezing." if now < 0 else f"{now}>=0, so it is not freezing."
    return (
        f"The temperature was {start} degrees and fell by {drop}, so it is now {start}-{drop}={now} degrees. {verdict}"
    )


def _parentheses(rng: random.Random, low: int, high: int) -> str:
    bags, red, blue, obj = rng.randint(low, high), rng.randint(low, high), rng.randint(low, high), rng.choice(_OBJECTS)
    return f"Each of {bags} bags holds {red} red and {blue} blue {obj}, so there are ({red}+{blue})*{bags}={(red + blue) * bags} {obj}."


def _parity(rng: random.Random, low: int, high: int) -> str:
    n = rng.randint(low, high)
    if n % 2 == 0:
        return f"{n} is even, because {n}/2={n // 2}."
    return f"2*{n // 2}+1={n}, so {n} is not even."


def _syllogism(rng: random.Random, low: int, high: int) -> str:
    threshold = rng.randint(low, high - 1)
    n, obj = rng.randint(threshold + 1, high), rng.choice(_OBJECTS)
    return (
        f"All piles with more than {threshold} {obj} are big. This pile has {n} and {n}>{threshold}, hence it is big."
    )


_TEMPLATES: dict[str, _Template] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "multiplication": _multiplication,
    "division": _division,
    "comparison": _comparison,
    "conditional": _conditional,
    "two_step": _two_step,
    "true_statement": _true_statement,
    "false_statement": _false_statement,
    "decimal": _decimal,
    "temperature": _temperature,
    "parentheses": _parentheses,
    "parity": _parity,
    "syllogism": _syllogism,
    **VARIED_TEMPLATES,
}
TEMPLATE_NAMES: tuple[str, ...] = tuple(_TEMPLATES)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")


@dataclass
class CorpusConfig:
    """The synthetic corpus.

    seed: seeds a private `random.Random`; the same config always gives the same corpus.
    num_train, num_val: documents in each split. Each split has its own RNG derived from the seed, so changing
        num_val leaves the train split unchanged. Duplicates (within or across splits) are possible on small ranges.
    min_value, max_value: inclusive range of the operands; results may fall outside it (products, negative
        temperatures).
    templates: names from TEMPLATE_NAMES to draw from; empty means all of them.
    problems_per_document: problems joined by a space into one document.
    """

    seed: int = 0
    num_train: int = 2000
    num_val: int = 200
    min_value: int = 0
    max_value: int = 99
    templates: tuple[str, ...] = ()
    problems_per_document: int = 1

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0)
        _check_int("num_train", self.num_train, 1)
        _check_int("num_val", self.num_val, 0)
        _check_int("min_value", self.min_value, 0)
        _check_int("max_value", self.max_value, 1, 1_000_000)
        if self.min_value >= self.max_value:
            raise ValueError(f"min_value ({self.min_value}) must be below max_value ({self.max_value})")
        self.templates = tuple(self.templates)
        unknown = [name for name in self.templates if name not in _TEMPLATES]
        if unknown:
            raise ValueError(f"unknown templates {unknown}; choose from {list(TEMPLATE_NAMES)}")
        _check_int("problems_per_document", self.problems_per_document, 1, 64)


@dataclass
class Corpus:
    """Generated documents, one problem (or `problems_per_document` problems) each."""

    train: list[str]
    val: list[str]
    config: CorpusConfig = field(default_factory=CorpusConfig)


def generate_corpus(config: CorpusConfig | None = None) -> Corpus:
    """Draw `config.num_train + config.num_val` documents from the templates with `random.Random(config.seed)`."""
    config = config or CorpusConfig()
    templates = [_TEMPLATES[name] for name in (config.templates or TEMPLATE_NAMES)]
    # NOTE: one RNG per split, derived from the seed, so that the train split does not change when num_val does.
    train_rng, val_rng = random.Random(f"{config.seed}/train"), random.Random(f"{config.seed}/val")

    def document(rng: random.Random) -> str:
        problems = (
            rng.choice(templates)(rng, config.min_value, config.max_value) for _ in range(config.problems_per_document)
        )
        return " ".join(problems)

    return Corpus(
        train=[document(train_rng) for _ in range(config.num_train)],
        val=[document(val_rng) for _ in range(config.num_val)],
        config=config,
    )


_SPLITS = ("lines", "paragraphs", "none")
DEFAULT_MAX_BYTES = 20_000_000


def load_text_bytes(
    data: bytes, source: str = "<upload>", max_bytes: int = DEFAULT_MAX_BYTES, split: str = "lines"
) -> list[str]:
    """Documents from the raw bytes of a UTF-8 text (an uploaded file, say).

    split: "lines" (one document per non-blank line), "paragraphs" (blocks separated by blank lines) or "none" (the
    whole text is one document). Leading and trailing whitespace of each document is stripped. A UTF-8 byte-order mark
    is ignored. Raises ValueError naming `source` if the text is too large, not UTF-8, or has no text in it.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    _check_int("max_bytes", max_bytes, 1)
    if len(data) > max_bytes:
        raise ValueError(f"{source} is too large: {len(data):,} bytes, the limit is {max_bytes:,}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{source} is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
            "save it as UTF-8 and try again"
        ) from None
    if split == "lines":
        documents = text.splitlines()
    elif split == "paragraphs":
        documents = "\n".join(line.rstrip() for line in text.splitlines()).split("\n\n")
    else:
        documents = [text]
    documents = [document.strip() for document in documents if document.strip()]
    if not documents:
        raise ValueError(f"{source} is empty: it has no text, only {len(data)} bytes of whitespace")
    return documents


def load_text_file(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, split: str = "lines") -> list[str]:
    """Documents from a UTF-8 text file; see `load_text_bytes` for `split`. ValueError naming the file for a missing
    file, a directory, a file over `max_bytes`, text that is not UTF-8, or a file with no text."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"text file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    _check_int("max_bytes", max_bytes, 1)
    # Checked before reading, so a huge file is refused without loading it into memory.
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"text file {path} is too large: {size:,} bytes, the limit is {max_bytes:,}")
    return load_text_bytes(path.read_bytes(), source=f"text file {path}", max_bytes=max_bytes, split=split)


class LMBatch(NamedTuple):
    """One batch for next-token prediction. All tensors are LongTensor (B, T).

    target_ids[b, t] is the token after input_ids[b, t]. token_types are the `TokenType` ids of the *input* tokens,
    since those are what the router sees; `IGNORE_TYPE_ID` at EOS separators. attention_mask is all ones (packed
    windows hold no padding); it is there so packed and padded batches share one interface.
    """

    input_ids: torch.Tensor
    target_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_types: torch.Tensor

    def to(self, device: torch.device | str) -> LMBatch:
        return LMBatch(*(tensor.to(device) for tensor in self))


class LMDataset:
    """Documents packed into one token stream and cut into windows for next-token prediction.

    The stream is doc_0 EOS doc_1 EOS ...; windows of seq_len + 1 tokens start every seq_len tokens, so each token is
    a target exactly once and no padding is wasted. The tail shorter than a window is dropped.
    """

    def __init__(self, texts: Sequence[str], tokenizer: ByteTokenizer, seq_len: int) -> None:
        _check_int("seq_len", seq_len, 1)
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of documents, got a single str")
        ids: list[int] = []
        types: list[torch.Tensor] = []
        separator_type = torch.tensor([IGNORE_TYPE_ID])
        for text in texts:
            if text:
                ids += tokenizer.encode(text, add_eos=True)
                types += [tag_ids(text), separator_type]
        if len(ids) < seq_len + 1:
            raise ValueError(
                f"the texts hold {len(ids)} tokens with separators, fewer than one window of seq_len + 1 = {seq_len + 1}"
            )
        self.seq_len = seq_len
        self.tokens = torch.tensor(ids, dtype=torch.long)  # (N,)
        self.token_types = torch.cat(types)  # (N,), aligned with self.tokens

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def batches(
        self, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False
    ) -> Iterator[LMBatch]:
        """One pass over the windows, in an order fixed by `seed` (or stream order when shuffle is False)."""
        # Validated here rather than in the generator, so a bad size fails at the call, not at the first next().
        _check_int("batch_size", batch_size, 1)
        if shuffle:
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(len(self))
        return self._iterate(order, batch_size, drop_last)

    def _iterate(self, order: torch.Tensor, batch_size: int, drop_last: bool) -> Iterator[LMBatch]:
        width = self.seq_len + 1
        covered = (len(self) - 1) * self.seq_len + width
        windows = self.tokens[:covered].unfold(0, width, self.seq_len)  # (W, T+1), a view
        types = self.token_types[:covered].unfold(0, width, self.seq_len)  # (W, T+1)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if drop_last and len(index) < batch_size:
                return
            chunk = windows[index]  # (B, T+1)
            yield LMBatch(
                input_ids=chunk[:, :-1],
                target_ids=chunk[:, 1:],
                attention_mask=torch.ones_like(chunk[:, :-1]),
                token_types=types[index, :-1],
            )


def split_datasets(train_texts: Sequence[str], val_texts: Sequence[str], tokenizer: ByteTokenizer,
                   seq_len: int) -> tuple[LMDataset, LMDataset]:
    """The train and validation datasets of two lists of documents; ValueError naming the split that cannot hold one
    window (or an empty validation split)."""
    if not val_texts:
        raise ValueError("the corpus has no validation documents; evaluation needs some (num_val > 0)")
    train = LMDataset(train_texts, tokenizer, seq_len)
    try:
        val = LMDataset(val_texts, tokenizer, seq_len)
    except ValueError as error:
        raise ValueError(f"validation split too small: {error}") from None
    return train, val


_DATASETS: OrderedDict[tuple, tuple[LMDataset, LMDataset]] = OrderedDict()
_DATASETS_LOCK = threading.Lock()
_DATASETS_KEPT = 4


def corpus_datasets(config: CorpusConfig, tokenizer: ByteTokenizer, seq_len: int) -> tuple[LMDataset, LMDataset]:
    """The train and validation datasets of `generate_corpus(config)`, shared by every caller with the same corpus
    settings (the last few kept). Generating and tagging the corpus is most of a trainer's set-up (0.2 s of 0.21 s for
    the dashboard's run, this project's CPU), and a server's live runs use the same corpus; the datasets are only read.
    Raises ValueError (naming the split) when a split holds less than one window."""
    key = (tuple(asdict(config).items()), type(tokenizer), seq_len)
    with _DATASETS_LOCK:
        if key in _DATASETS:
            _DATASETS.move_to_end(key)
            return _DATASETS[key]
    corpus = generate_corpus(config)
    train, val = split_datasets(corpus.train, corpus.val, tokenizer, seq_len)
    with _DATASETS_LOCK:
        _DATASETS[key] = (train, val)
        while len(_DATASETS) > _DATASETS_KEPT:
            _DATASETS.popitem(last=False)
    return train, val


def make_batches(
    texts: Sequence[str],
    tokenizer: ByteTokenizer,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[LMBatch]:
    """One epoch of packed next-token batches over `texts`; see `LMDataset`."""
    return LMDataset(texts, tokenizer, seq_len).batches(batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)
