"""Width classes: a typed pack's expert GEMMs in two grouped calls, narrow experts apart from wide ones.

Legend: T tokens, K experts per token, A = T * K assignment rows, E experts, k experts in the narrow class.

Why: `torch._grouped_mm` takes one N (and one K) for all its groups, so one call over a pack of mixed widths runs
every row at the widest expert's width. The GPU preset's eight typed experts are 1,024 wide except the computation
expert (2 x 1,024 up and down), the gated mathematical one (2 x 1,024 up) and the creative one (1,536): a single call
executes ~1.5x the model's expert FLOPs, and the activation kernel moves the padded columns too. Split into the five
1,024-wide experts and the three wide ones, the padded work falls to ~0.7x of that (equal loads assumed).

Both calls' groups must start at row 0 of their operand (the library's offsets are group ends), and where the narrow
rows end is known only on the device. So each class gets its own A-row buffer: the narrow experts' rows at the start
of the first, the wide experts' at the start of the second, each row found by a "virtual" position in a 2A-row space
(wide rows at A + their rank). No host read, so CUDA graphs and the whole-step graph capture it. The cost is memory:
the saved activations of the expert MLP are A rows per class (pre and hidden: A x (N1_lo + N1_hi) instead of A x N1).

The virtual layout is also what the combine reads: E + 1 groups over 2A rows (the narrow experts, one empty "gap"
group for rows n_lo..A that no assignment uses, the wide experts), dropped assignments at row 2A, past every group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ClassLayout", "WidthClasses", "class_layout", "plan_width_classes"]

# A split is worth its second call and its memory only when it removes at least this share of the padded work.
MIN_SAVING = 0.2


@dataclass(frozen=True)
class WidthClasses:
    """A static split of a pack: `order` lists expert ids narrow class first (each class in id order), `narrow` is
    how many lead it, `saving` the share of padded GEMM work removed under equal loads."""

    order: tuple[int, ...]
    narrow: int
    saving: float


def plan_width_classes(up_widths: list[int], widths: list[int]) -> WidthClasses | None:
    """The two-class split of experts (up width N1_e, intermediate width F_e) with the least padded work per row,
    each class padded to its own widest N1 and F; None when no split saves MIN_SAVING of one padded call."""
    experts = len(widths)
    whole = experts * (max(up_widths) + max(widths))
    best: WidthClasses | None = None
    for bound in sorted(set(up_widths)):
        narrow = [e for e in range(experts) if up_widths[e] <= bound]
        wide = [e for e in range(experts) if up_widths[e] > bound]
        if not narrow or not wide:
            continue
        work = sum(len(group) * (max(up_widths[e] for e in group) + max(widths[e] for e in group))
                   for group in (narrow, wide))
        saving = 1.0 - work / whole
        if saving >= MIN_SAVING and (best is None or saving > best.saving):
            best = WidthClasses(order=tuple(narrow + wide), narrow=len(narrow), saving=saving)
    return best


@dataclass
class ClassLayout:
    """The sorted layout in two class buffers (module docstring). position: (A,) virtual row of each assignment
    (2A where dropped). offsets: (E + 1,) virtual group ends (the gap group at index `narrow`). narrow_offsets /
    wide_offsets: each class's group ends within its own buffer. narrow_expert / wide_expert: (A,) each buffer row's
    expert within its class (any valid one past the class's rows)."""

    position: torch.Tensor
    offsets: torch.Tensor
    narrow_offsets: torch.Tensor
    wide_offsets: torch.Tensor
    narrow_expert: torch.Tensor
    wide_expert: torch.Tensor


def class_layout(position: torch.Tensor, offsets: torch.Tensor, sorted_expert: torch.Tensor,
                 ranked_slots: torch.Tensor, narrow: int) -> ClassLayout:
    """From the counting sort over experts renumbered narrow class first: position (A,) each assignment's sorted row,
    offsets (E,) group ends, sorted_expert (A,) each row's renumbered expert (E past the kept rows), ranked_slots (A,)
    each assignment's renumbered expert. Device ops only."""
    rows = position.shape[0]
    experts = offsets.shape[0]
    offsets64 = offsets.long()
    narrow_rows = offsets64[narrow - 1]
    kept = position.long() < offsets64[-1]
    wide_slot = ranked_slots.long() >= narrow
    virtual = torch.where(wide_slot, position.long() - narrow_rows + rows, position.long())
    virtual = torch.where(kept, virtual, torch.full_like(virtual, 2 * rows)).to(torch.int32)
    narrow_offsets = offsets[:narrow]
    wide_offsets = (offsets64[narrow:] - narrow_rows).to(offsets.dtype)
    gap_end = offsets.new_full((1,), rows)
    virtual_offsets = torch.cat([narrow_offsets, gap_end, wide_offsets + rows])
    row_ids = torch.arange(rows, device=position.device)
    narrow_expert = sorted_expert.clamp(max=narrow - 1)
    wide_rows = (row_ids + narrow_rows).clamp(max=rows - 1)
    wide_expert = (sorted_expert[wide_rows].long() - narrow).clamp(0, experts - narrow - 1).to(sorted_expert.dtype)
    return ClassLayout(position=virtual, offsets=virtual_offsets, narrow_offsets=narrow_offsets,
                       wide_offsets=wide_offsets, narrow_expert=narrow_expert, wide_expert=wide_expert)
