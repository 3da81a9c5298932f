"""Width classes (`pimoe.cuda.width_classes`): which experts share a grouped GEMM, and the two-buffer layout."""

from __future__ import annotations

import torch
from class_routing import random_routing
from hypothesis import given, settings
from hypothesis import strategies as st

from pimoe.cuda.grouped import sort_by_expert_torch
from pimoe.cuda.width_classes import MIN_SAVING, class_layout, plan_width_classes


def _padded_work(groups: list[list[int]], up: list[int], widths: list[int]) -> int:
    return sum(len(g) * (max(up[e] for e in g) + max(widths[e] for e in g)) for g in groups if g)


def test_the_gpu_presets_pack_splits_its_five_narrow_experts_from_the_three_wide() -> None:
    # reasoning, computation (2x), mathematical (gated), logical, language, creative (1.5x), analytical, language
    up = [1024, 2048, 2048, 1024, 1024, 1536, 1024, 1024]
    widths = [1024, 2048, 1024, 1024, 1024, 1536, 1024, 1024]
    plan = plan_width_classes(up, widths)
    assert plan is not None and plan.narrow == 5
    assert plan.order == (0, 3, 4, 6, 7, 1, 2, 5)
    assert abs(plan.saving - (1 - (5 * 2048 + 3 * 4096) / (8 * 4096))) < 1e-12


def test_uniform_or_nearly_uniform_packs_keep_one_call() -> None:
    assert plan_width_classes([512] * 8, [512] * 8) is None
    assert plan_width_classes([1024, 1024, 1152], [1024, 1024, 1152]) is None  # saves under MIN_SAVING


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([16, 32, 48, 64, 96, 128]), st.booleans()), min_size=1, max_size=12))
def test_the_plan_is_the_best_two_class_split_and_a_permutation(experts) -> None:
    widths = [w for w, _ in experts]
    up = [w * (2 if gated else 1) for w, gated in experts]
    plan = plan_width_classes(up, widths)
    whole = len(widths) * (max(up) + max(widths))
    best = max((1 - _padded_work([[e for e in range(len(up)) if up[e] <= b], [e for e in range(len(up)) if up[e] > b]],
                                 up, widths) / whole for b in set(up) if any(u > b for u in up)), default=0.0)
    if plan is None:
        assert best < MIN_SAVING
        return
    assert sorted(plan.order) == list(range(len(up)))
    narrow, wide = plan.order[:plan.narrow], plan.order[plan.narrow:]
    assert narrow and wide and max(up[e] for e in narrow) < min(up[e] for e in wide)
    assert abs(plan.saving - best) < 1e-12 and plan.saving >= MIN_SAVING
    assert abs(plan.saving - (1 - _padded_work([list(narrow), list(wide)], up, widths) / whole)) < 1e-12


@settings(max_examples=40, deadline=None)
@given(tokens=st.integers(1, 30), top_k=st.integers(1, 3), experts=st.integers(2, 7), narrow=st.integers(1, 6),
       drop=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_every_kept_assignment_lands_in_its_class_buffer_inside_its_experts_group(tokens, top_k, experts, narrow,
                                                                                 drop, seed) -> None:
    narrow = min(narrow, experts - 1)
    top_k = min(top_k, experts)
    routing = random_routing(tokens, top_k, experts, drop, seed)
    ranked, dropped = routing.expert_indices, routing.dropped
    layout = sort_by_expert_torch(routing)
    rows = tokens * top_k
    split = class_layout(layout.position, layout.offsets, layout.sorted_expert, ranked.reshape(-1), narrow)
    starts = torch.cat([split.offsets.new_zeros(1), split.offsets[:-1]])
    for slot in range(rows):
        expert, row = int(ranked.reshape(-1)[slot]), int(split.position[slot])
        if dropped.reshape(-1)[slot]:
            assert row == 2 * rows
            continue
        group = expert if expert < narrow else expert + 1  # the gap group sits between the classes
        assert int(starts[group]) <= row < int(split.offsets[group])
        if expert < narrow:
            assert row < int(split.narrow_offsets[-1]) and int(split.narrow_expert[row]) == expert
        else:
            local = row - rows
            assert 0 <= local < int(split.wide_offsets[-1]) and int(split.wide_expert[local]) == expert - narrow
    assert int(split.offsets[narrow]) == rows  # the gap group ends where the wide buffer starts
    kept = int((~dropped).sum())
    assert int(split.narrow_offsets[-1]) + int(split.wide_offsets[-1]) == kept
