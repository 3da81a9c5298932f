"""Byte-level tokenizer, token-type tagger and the token-type → expert-type mapping used as routing labels.

PiMoE/PiERN (arXiv 2509.18169) trains the router with token-level labels so that computation tokens go to the
computation expert. This module produces those labels for the tiny demo language model: every byte-token gets a
`TokenType` from a regex scanner over the text, and `TypeToExpertMapping` turns token types into the set of experts each
token may be sent to.

Shape legend:
    B  batch size (number of texts)
    T  tokens (bytes) per row, after truncation and padding
    E  experts in the model
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from types import MappingProxyType

import numpy as np
import torch

from pimoe.layer.expert_types import ExpertType, resolve_expert_type
from pimoe.layer.validation import host_reads_allowed

__all__ = [
    "DEFAULT_TYPE_TO_EXPERT",
    "IGNORE_TYPE_ID",
    "LOGIC_WORDS",
    "NUM_TOKEN_TYPES",
    "ByteTokenizer",
    "TokenType",
    "TypeToExpertMapping",
    "expert_type_vocabulary",
    "tag_batch",
    "tag_ids",
    "tag_tokens",
]

# NOTE: "surrogatepass" lets lone surrogates (legal in a Python str, illegal in strict UTF-8) round-trip exactly.
_ENCODING = "utf-8"
_ERRORS = "surrogatepass"


class ByteTokenizer:
    """One token per UTF-8 byte, plus three specials after the bytes.

    Ids 0..255 are the raw bytes, 256 = PAD, 257 = BOS, 258 = EOS, so `vocab_size` is 259. The specials sit above the
    bytes (rather than PAD = 0) so that the NUL byte stays an ordinary token and `id < 256` means "is a byte".
    A multi-byte character (é, emoji) spans several tokens.
    """

    num_bytes = 256
    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`: its UTF-8 bytes, optionally wrapped in BOS/EOS."""
        ids = list(text.encode(_ENCODING, _ERRORS))
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of the byte tokens in `ids`; specials are skipped.

        Exact inverse of `encode` for any str. Byte sequences that are not UTF-8 (a character cut in half by generation,
        random ids) decode with U+FFFD replacement characters instead of raising. Ids outside [0, vocab_size) are a
        caller bug and raise ValueError.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        data = bytearray()
        for token_id in ids:
            token_id = int(token_id)
            if 0 <= token_id < self.num_bytes:
                data.append(token_id)
            elif not self.num_bytes <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        try:
            return data.decode(_ENCODING, _ERRORS)
        except UnicodeDecodeError:
            return data.decode(_ENCODING, "replace")

    def encode_batch(
        self, texts: Sequence[str], max_len: int, add_bos: bool = False, add_eos: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded, truncated batch.

        Rows longer than `max_len` keep their first `max_len` tokens (a truncated row loses its EOS). The width T is the
        longest row capped at `max_len`, so a short prompt is not padded out to `max_len`.
        Returns (ids LongTensor (B, T) padded with `pad_id`, attention_mask LongTensor (B, T): 1 = token, 0 = pad).
        """
        _check_texts(texts)
        rows = [self.encode(text, add_bos=add_bos, add_eos=add_eos) for text in texts]
        ids = _pad_rows(rows, max_len, self.pad_id)
        return ids, (ids != self.pad_id).long()


class TokenType(IntEnum):
    """What a byte-token is part of. The int value is the id used in tensors; `IGNORE_TYPE_ID` marks pad/specials."""

    NUMBER = 0  # ASCII digits, a '.' between digits, a leading '-' sign
    OPERATOR = 1  # + - − * / ^ × ÷ % =, and 'x' between numbers
    COMPARISON = 2  # < > ≤ ≥ ≠ and the two-character forms <= >= != ==
    PAREN = 3  # ( ) [ ] { }
    LOGIC_WORD = 4  # a whole word from LOGIC_WORDS, any case
    WORD = 5  # any other run of letters (any script), with inner apostrophes
    PUNCT = 6  # ASCII punctuation not listed above, a few common Unicode marks, a hyphen inside a word
    SPACE = 7  # whitespace
    OTHER = 8  # everything else: emoji, non-ASCII symbols and digits, control characters


NUM_TOKEN_TYPES = len(TokenType)
IGNORE_TYPE_ID = -1  # padding, BOS/EOS: no routing label

LOGIC_WORDS = frozenset(
    "if then else and or not therefore so because true false implies all some none hence thus".split()
)

# One alternation, scanned left to right; the first alternative that matches at a position wins, so the order encodes
# the tie-breaks documented in `tag_tokens`.
_LETTER = r"[^\W\d_][\u0300-\u036f]*"  # a letter in any script, with combining accents
_SCANNER = re.compile(
    "|".join(
        [
            # '-' is a sign only where a binary minus is impossible: not after a word character or a closing bracket.
            r"(?P<NUMBER>(?:(?<![\w)\]}])-)?[0-9]+(?:\.[0-9]+)?)",
            # NOTE: Python lookbehinds are fixed-width, hence two of them for "3x4" and "3 x 4".
            r"(?P<TIMES>(?:(?<=[0-9])|(?<=[0-9] ))[xX](?= ?[0-9]))",
            r"(?P<COMPARISON><=|>=|!=|==|[<>≤≥≠])",
            r"(?P<HYPHEN>(?<=[^\W\d_])-(?=[^\W\d_]))",
            r"(?P<OPERATOR>[-+*/^×÷%=−])",
            r"(?P<PAREN>[()\[\]{}])",
            rf"(?P<WORD>{_LETTER}(?:['’]?{_LETTER})*)",
            r"(?P<SPACE>\s+)",
            r"(?P<PUNCT>[!\"#$&',.:;?@\\_`|~–—…‘’“”«»])",
            r"(?P<OTHER>.)",
        ]
    ),
    re.DOTALL,
)
_GROUP_TYPE = {
    "NUMBER": TokenType.NUMBER,
    "TIMES": TokenType.OPERATOR,
    "COMPARISON": TokenType.COMPARISON,
    "HYPHEN": TokenType.PUNCT,
    "OPERATOR": TokenType.OPERATOR,
    "PAREN": TokenType.PAREN,
    "WORD": TokenType.WORD,
    "SPACE": TokenType.SPACE,
    "PUNCT": TokenType.PUNCT,
    "OTHER": TokenType.OTHER,
}
_TYPE_BYTE = {name: bytes([int(token_type)]) for name, token_type in _GROUP_TYPE.items()}
_LOGIC_BYTE = bytes([int(TokenType.LOGIC_WORD)])
_MEMBERS = list(TokenType)


def _tag_bytes(text: str) -> bytes:
    """Token-type ids of `text`, one byte per UTF-8 byte of the text."""
    ascii_only = text.isascii()
    out = bytearray()
    for match in _SCANNER.finditer(text):
        group = match.lastgroup
        span = match.group()
        num_bytes = len(span) if ascii_only else len(span.encode(_ENCODING, _ERRORS))
        if group == "WORD" and span.lower() in LOGIC_WORDS:
            out += _LOGIC_BYTE * num_bytes
        else:
            out += _TYPE_BYTE[group] * num_bytes
    return bytes(out)


def tag_tokens(text: str) -> list[TokenType]:
    """The `TokenType` of every byte-token of `text`, aligned 1:1 with `ByteTokenizer().encode(text)`.

    Each byte gets the label of the character or word it belongs to. Decisions on the ambiguous cases:
    - '-' directly before a digit is a NUMBER sign unless it follows a word character or a closing bracket:
      "-5", "x=-3", "(-3)", "5*-3" and "a -3" hold negative numbers; "17-3", "n-1", "(2+3)-1" and "17 - 3" subtract.
    - '.' is NUMBER only between two digits ("3.14"); elsewhere it is PUNCT ("= 43.", ".5" is PUNCT then NUMBER).
      "1,000" is NUMBER PUNCT NUMBER: commas are never part of a number.
    - '*', '×' and 'x'/'X' multiply; 'x' only when it sits between two numbers with at most one space each side
      ("3x4", "3 x 4"). Elsewhere 'x' is a WORD, e.g. the variable in "x=5".
    - '=' is OPERATOR (the "= result" of arithmetic); "==", "<=", ">=", "!=" are COMPARISON, both characters.
    - A '-' between two letters is a word hyphen (PUNCT): "well-known" is WORD PUNCT WORD. The cost is that letter
      algebra "a-b" is not tagged as subtraction; digit arithmetic always is.
    - Logic words match whole words only, any case: "If" and "OR" are LOGIC_WORD, "android", "ifs", "orange" are WORD.
    - Letters of any script are WORD ("café", "Ελλάδα"); digits are ASCII only, other digits are OTHER.
    """
    return [_MEMBERS[type_id] for type_id in _tag_bytes(text)]


def tag_ids(text: str) -> torch.Tensor:
    """`tag_tokens` as a LongTensor (N,) of `TokenType` values, N = len(ByteTokenizer().encode(text))."""
    return torch.from_numpy(np.frombuffer(_tag_bytes(text), dtype=np.uint8).astype(np.int64))


def tag_batch(texts: Sequence[str], max_len: int, add_bos: bool = False, add_eos: bool = False) -> torch.Tensor:
    """Token-type ids aligned with `ByteTokenizer().encode_batch(texts, max_len, add_bos, add_eos)`.

    Returns a LongTensor (B, T) of `TokenType` values, with `IGNORE_TYPE_ID` at padding and at BOS/EOS: specials are
    not text, so they carry no routing label.
    """
    _check_texts(texts)
    ignore = bytes([255])  # stand-in for IGNORE_TYPE_ID while rows are uint8
    rows = [(ignore if add_bos else b"") + _tag_bytes(text) + (ignore if add_eos else b"") for text in texts]
    type_ids = _pad_rows(rows, max_len, IGNORE_TYPE_ID)
    return type_ids.masked_fill(type_ids == 255, IGNORE_TYPE_ID)


def _check_texts(texts: Sequence[str]) -> None:
    # A bare str is a Sequence[str] too, and would silently become one row per character.
    if isinstance(texts, str):
        raise ValueError(f"texts must be a list of strings, got the single str {texts[:40]!r}")


def _pad_rows(rows: Sequence[Sequence[int] | bytes], max_len: int, pad_value: int) -> torch.Tensor:
    """Rows cut to `max_len` and right-padded with `pad_value` to the longest (capped) row: LongTensor (B, T)."""
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    width = min(max_len, max((len(row) for row in rows), default=0))
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        row = row[:width]
        if len(row):
            values = np.frombuffer(row, dtype=np.uint8) if isinstance(row, bytes) else np.asarray(row)
            out[i, : len(row)] = torch.from_numpy(values.astype(np.int64))
    return out


DEFAULT_TYPE_TO_EXPERT: Mapping[TokenType, str] = MappingProxyType(
    {
        # The point of the labels (PiMoE §3): digits and arithmetic operators go to the computation expert.
        TokenType.NUMBER: ExpertType.COMPUTATION.value,
        TokenType.OPERATOR: ExpertType.COMPUTATION.value,
        # Relations and grouping structure an expression without computing anything: symbolic maths.
        TokenType.COMPARISON: ExpertType.MATHEMATICAL.value,
        TokenType.PAREN: ExpertType.MATHEMATICAL.value,
        TokenType.LOGIC_WORD: ExpertType.LOGICAL.value,
        # Punctuation, spaces and unknown symbols glue the prose together, so they stay with the language expert
        # rather than adding a label class the tiny model cannot learn anything specific for.
        TokenType.WORD: ExpertType.LANGUAGE.value,
        TokenType.PUNCT: ExpertType.LANGUAGE.value,
        TokenType.SPACE: ExpertType.LANGUAGE.value,
        TokenType.OTHER: ExpertType.LANGUAGE.value,
    }
)


def _as_token_type(key: TokenType | str | int) -> TokenType:
    if isinstance(key, TokenType):
        return key
    if isinstance(key, str) and key.strip().upper() in TokenType.__members__:
        return TokenType[key.strip().upper()]
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < NUM_TOKEN_TYPES:
        return TokenType(key)
    raise ValueError(f"unknown token type {key!r}; choose one of {[t.name.lower() for t in TokenType]}")


@dataclass(frozen=True)
class TypeToExpertMapping:
    """Which expert type each token type should be routed to.

    overrides: entries replacing `DEFAULT_TYPE_TO_EXPERT`, keyed by `TokenType` or its name ("number"), valued by an
        expert type or its name. Every name is checked with `resolve_expert_type`, so a typo raises ValueError.
    fallback: where a token goes when the model has no expert of its mapped type. If the model has no expert of the
        fallback type either (or fallback is None), the token gets no target: all-False in `allowed_experts`,
        -1 in `target_expert_type_ids`. Expert types no token type maps to (by default reasoning, creative,
        analytical) are never a target; label losses leave them to whatever the LM loss makes of them.
    """

    overrides: Mapping[TokenType | str, ExpertType | Enum | str] = field(default_factory=dict)
    fallback: ExpertType | Enum | str | None = ExpertType.LANGUAGE
    type_to_expert: Mapping[TokenType, str] = field(init=False)

    def __post_init__(self) -> None:
        table = dict(DEFAULT_TYPE_TO_EXPERT)
        for key, expert_type in dict(self.overrides).items():
            table[_as_token_type(key)] = resolve_expert_type(expert_type)
        fallback = None if self.fallback is None else resolve_expert_type(self.fallback)
        # NOTE: object.__setattr__ because the dataclass is frozen; the resolved values replace the user's spellings.
        object.__setattr__(self, "fallback", fallback)
        object.__setattr__(self, "type_to_expert", MappingProxyType(table))

    def __deepcopy__(self, memo: dict) -> TypeToExpertMapping:
        # NOTE: immutable, so a copy can share it; deepcopy cannot copy the MappingProxyType it holds (a model that
        # carries a mapping is deep-copied by quantisation, pruning and the dashboard).
        return self

    def expert_type_of(self, token_type: TokenType | str | int) -> str:
        """The expert type name a token type maps to, before any fallback."""
        return self.type_to_expert[_as_token_type(token_type)]

    def target_types(self, expert_types: Sequence[ExpertType | Enum | str]) -> list[str | None]:
        """Per token type (in `TokenType` order): the expert type it is routed to in this model, after the fallback,
        or None when it gets no target."""
        present = set(_resolve_all(expert_types))
        targets: list[str | None] = []
        for token_type in TokenType:
            wanted = self.type_to_expert[token_type]
            if wanted in present:
                targets.append(wanted)
            elif self.fallback in present:
                targets.append(self.fallback)
            else:
                targets.append(None)
        return targets

    def allowed_experts(
        self, token_type_ids: torch.Tensor, expert_types: Sequence[ExpertType | Enum | str]
    ) -> torch.Tensor:
        """Which experts each token may be routed to.

        token_type_ids: LongTensor (B, T) (any shape) of `TokenType` values or `IGNORE_TYPE_ID`.
        expert_types: the type of each of the model's E experts, repeats allowed ("computation" twice).
        Returns BoolTensor (B, T, E): True for every expert whose type is the token's target type; an all-False row
        means "no target" (padding, specials, or no expert of the mapped or fallback type).
        """
        names = tuple(_resolve_all(expert_types))
        table = _allowed_table(tuple(self.target_types(names)), names, token_type_ids.device)
        return table[_table_rows(token_type_ids)]

    def target_expert_type_ids(
        self, token_type_ids: torch.Tensor, expert_types: Sequence[ExpertType | Enum | str]
    ) -> torch.Tensor:
        """Each token's target expert type as an index into `expert_type_vocabulary(expert_types)`.

        token_type_ids: LongTensor (B, T) (any shape). Returns LongTensor of the same shape, -1 where there is no target.
        """
        vocabulary = expert_type_vocabulary(expert_types)
        targets = self.target_types(vocabulary)
        lookup = [vocabulary.index(target) if target is not None else -1 for target in targets] + [-1]
        return torch.tensor(lookup, dtype=torch.long, device=token_type_ids.device)[_table_rows(token_type_ids)]


def expert_type_vocabulary(expert_types: Sequence[ExpertType | Enum | str]) -> list[str]:
    """The distinct expert type names of a model, in order of first appearance: the id space of
    `TypeToExpertMapping.target_expert_type_ids`."""
    return list(dict.fromkeys(_resolve_all(expert_types)))


def _resolve_all(expert_types: Sequence[ExpertType | Enum | str]) -> list[str]:
    if isinstance(expert_types, (str, Enum)):
        raise ValueError(f"expert_types must be a sequence of expert types, got the single value {expert_types!r}")
    names = [resolve_expert_type(expert_type) for expert_type in expert_types]
    if not names:
        raise ValueError("expert_types is empty; a model needs at least one expert")
    return names


@functools.lru_cache(maxsize=64)
def _allowed_table(targets: tuple[str | None, ...], names: tuple[str, ...], device: torch.device) -> torch.Tensor:
    """(NUM_TOKEN_TYPES + 1, E) bool on `device`; the last row, for IGNORE_TYPE_ID, is all False. Kept on the device:
    a host-to-device copy per call would cost a copy per training step, and cannot be captured in a CUDA graph."""
    table = torch.tensor([[name == target for name in names] for target in [*targets, None]], dtype=torch.bool)
    return table.to(device)


def _table_rows(token_type_ids: torch.Tensor) -> torch.Tensor:
    """Rows of a (NUM_TOKEN_TYPES + 1, ...) lookup table; IGNORE_TYPE_ID selects the last row."""
    if token_type_ids.dtype == torch.bool or token_type_ids.is_floating_point() or token_type_ids.is_complex():
        raise ValueError(f"token_type_ids must be an integer tensor, got dtype {token_type_ids.dtype}")
    if token_type_ids.numel() and host_reads_allowed():  # compiled or captured: reading the range back would break it
        low, high = int(token_type_ids.min()), int(token_type_ids.max())
        if low < IGNORE_TYPE_ID or high >= NUM_TOKEN_TYPES:
            bad = low if low < IGNORE_TYPE_ID else high
            raise ValueError(f"token type id {bad} is not a TokenType value or IGNORE_TYPE_ID ({IGNORE_TYPE_ID})")
    return torch.where(token_type_ids == IGNORE_TYPE_ID, NUM_TOKEN_TYPES, token_type_ids).long()
