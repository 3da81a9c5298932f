"""The weight gradients split into pieces of at most `split_rows` rows equal the unsplit per-expert products."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pimoe.cuda.train_ops import grouped_weight_grad, split_groups


def _reference(a: torch.Tensor, b: torch.Tensor, ends: list[int]) -> torch.Tensor:
    starts = [0, *ends[:-1]]
    return torch.stack([a[s:e].double().t() @ b[s:e].double() for s, e in zip(starts, ends, strict=True)])


@st.composite
def grouped_rows(draw):
    split_rows = draw(st.sampled_from([4, 8, 16]))
    total = draw(st.integers(2 * split_rows, 12 * split_rows))
    experts = draw(st.integers(1, 6))
    # group sizes: any split of the kept rows, empty experts and dropped rows past the last end included
    kept = draw(st.integers(0, total))
    cuts = sorted(draw(st.lists(st.integers(0, kept), min_size=experts - 1, max_size=experts - 1)))
    return split_rows, total, [*cuts, kept]


@settings(max_examples=60, deadline=None)
@given(grouped_rows(), st.integers(0, 2**31 - 1))
def test_split_weight_gradient_equals_each_experts_product(case, seed):
    split_rows, total, ends = case
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(total, 16, generator=gen), torch.randn(total, 8, generator=gen)
    a[ends[-1]:] = float("nan")  # dropped rows must not be read
    offsets = torch.tensor(ends, dtype=torch.int32)
    got = grouped_weight_grad(a, b, offsets, split_rows=split_rows)
    assert got.dtype == torch.float32 and got.shape == (len(ends), 16, 8)
    torch.testing.assert_close(got.double(), _reference(a, b, ends), rtol=1e-5, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(grouped_rows())
def test_pieces_cover_each_expert_exactly_and_stay_short(case):
    split_rows, total, ends = case
    piece_ends, owned = split_groups(torch.tensor(ends, dtype=torch.int32), total, split_rows)
    assert piece_ends.shape[0] % 8 == 0 and owned.shape == (len(ends), piece_ends.shape[0])
    piece_starts = [0, *piece_ends[:-1].tolist()]
    assert all(end - start <= split_rows for start, end in zip(piece_starts, piece_ends.tolist(), strict=True))
    for expert, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        mine = [(s, e) for s, e, own in zip(piece_starts, piece_ends.tolist(), owned[expert].tolist(), strict=True)
                if own]
        assert all(e > s for s, e in mine)  # empty pieces are owned by nobody
        assert sum(e - s for s, e in mine) == end - start and all(start <= s and e <= end for s, e in mine)


def test_bf16_rows_split_or_not_agree_within_bf16_rounding():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(512, 16, generator=gen).bfloat16()
    b = torch.randn(512, 8, generator=gen).bfloat16()
    offsets = torch.tensor([300, 300, 480], dtype=torch.int32)
    whole = grouped_weight_grad(a, b, offsets, split_rows=None).float()
    split = grouped_weight_grad(a, b, offsets, split_rows=64)
    exact = _reference(a.float(), b.float(), offsets.tolist()).float()
    assert torch.equal(split[1], torch.zeros(16, 8))
    # each piece is rounded to bf16 once: the split sum stays within a few bf16 roundings of the exact products
    torch.testing.assert_close(split, exact, rtol=2e-2, atol=0.1)
    torch.testing.assert_close(whole, exact, rtol=2e-2, atol=0.1)
