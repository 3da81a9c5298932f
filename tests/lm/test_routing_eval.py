"""Routing accuracy beside its baselines (pimoe/lm/routing_eval.py), the held-out hand-off report
(pimoe/handoff/heldout_eval.py) and the figure that shows them (studio/figures/baselines.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pimoe.handoff.heldout_eval import heldout_handoff_report
from pimoe.lm.checkpoint import load_checkpoint
from pimoe.lm.heldout import HELDOUT_TEXTS
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.lm.routing_eval import chance_line, majority_baseline, routing_report, score_text
from pimoe.lm.text import TokenType, TypeToExpertMapping, tag_ids
from studio.figures.baselines import baseline_rows, build_accuracy_baseline_figure


@pytest.fixture(scope="module")
def tiny() -> PiMoELM:
    torch.manual_seed(0)
    return PiMoELM(LMConfig.tiny()).eval()


def test_majority_baseline_is_the_share_of_the_most_common_target_type():
    types = tag_ids("ab 12+3")  # a b ␣ -> language (3), 1 2 + 3 -> computation (4)
    share, kind, tokens = majority_baseline(types, TypeToExpertMapping(), ["computation", "language"])
    assert (share, kind, tokens) == (4 / 7, "computation", 7)
    share, kind, _ = majority_baseline(tag_ids("hello world"), TypeToExpertMapping(), ["computation", "language"])
    assert (share, kind) == (1.0, "language")


def test_majority_baseline_of_a_text_without_targets_is_nan():
    empty = torch.full((3,), -1)
    share, kind, tokens = majority_baseline(empty, TypeToExpertMapping(), ["language"])
    assert math.isnan(share) and kind == "" and tokens == 0


def test_chance_line_is_k_over_e():
    assert chance_line(2, 8) == 0.25


def test_score_text_agrees_with_the_routing_lab_and_a_hand_count(tiny):
    text = "The cat sat on the mat. If 3>2 then 3+4=7."
    score = score_text(tiny, "t", text)
    routed = tiny.route_text(text)
    assert score.accuracy_per_layer == tuple(routed.routing_accuracy_per_layer())
    # By hand: the share of tokens whose top-1 expert type is the tagger's target type, mean over layers.
    targets = tiny.mapping.target_types(tiny.expert_types)
    wanted = [targets[t] for t in routed.token_types.tolist()]
    by_hand = [sum(w == g for w, g in zip(wanted, routed.top1_types(layer), strict=True)) / len(wanted)
               for layer in range(2)]
    assert score.accuracy == pytest.approx(sum(by_hand) / 2)
    assert score.chance == 2 / 4 and score.beats_baseline == (score.accuracy > score.all_language)
    languages = [t for t in routed.token_types.tolist() if targets[t] == "language"]
    assert score.majority_type == "language" and score.all_language == pytest.approx(len(languages) / len(wanted))


def test_routing_report_has_both_parts_with_every_fixed_text(tiny):
    report = routing_report(tiny)
    out = report["out_of_template"]
    assert set(HELDOUT_TEXTS) <= {t["name"] for t in out["texts"]}
    assert len(report["in_template"]["texts"]) == 8
    assert out["all_beat_baseline"] == all(t["beats_baseline"] for t in out["texts"])
    assert out["min_accuracy"] == min(t["accuracy"] for t in out["texts"])


def test_heldout_handoff_report_counts_labels_and_an_untrained_router_finds_none(tiny):
    report = heldout_handoff_report(tiny, count=2)
    kinds = {row["kind"]: row for row in report["per_kind"]}
    assert kinds["warehouse"]["labels"] == 2 and kinds["date"]["labels"] == 0
    assert report["labels"] == sum(row["labels"] for row in report["per_kind"])
    # At threshold 1.0 nothing can fire: recall 0, precision undefined.
    strict = heldout_handoff_report(tiny, count=1, threshold=1.0)
    assert strict["fired"] == 0 and strict["recall"] == 0 and strict["precision"] is None


def test_baseline_figure_draws_accuracy_baselines_and_chance(tiny):
    report = routing_report(tiny)
    spec = build_accuracy_baseline_figure(report)
    names = [item[0] for item in spec["legend_items"]]
    assert names == ["in-template accuracy", "out-of-template accuracy", "below all-language", "all-language baseline"]
    rows = baseline_rows(report)
    [panel] = spec["panels"]
    bars = panel["hbars"]
    assert bars["labels"] == [row["text"] for row in rows]
    assert bars["marks"] == pytest.approx([row["all-language"] for row in rows], rel=1e-4)
    [line] = bars["vlines"]
    assert line["x"] == 0.5  # top-2 of 4 experts
    assert [c == "#dc2626" for c in bars["colors"]] == [not row["beats all-language"] for row in rows]


def test_baseline_figure_refuses_an_empty_report():
    with pytest.raises(ValueError, match="no texts"):
        build_accuracy_baseline_figure({})


def test_majority_baseline_ignores_tokens_without_a_target():
    types = torch.tensor([int(TokenType.WORD), -1, int(TokenType.NUMBER), -1])
    share, _, tokens = majority_baseline(types, TypeToExpertMapping(), ["computation", "language"])
    assert tokens == 2 and share == 0.5


DEMO = Path(__file__).resolve().parents[2] / "assets" / "pimoe-demo.safetensors"


def _assert_demo_routes_new_text(path: Path) -> None:
    model = load_checkpoint(path)
    report = routing_report(model)
    out = report["out_of_template"]
    below = [(t["name"], round(t["accuracy"], 3), round(t["all_language"], 3)) for t in out["texts"]
             if not t["beats_baseline"]]
    assert not below, f"out-of-template texts at or below their all-language baseline: {below}"
    assert out["mean_accuracy"] >= 0.95
    # the numbers quoted from the metadata (README, docs/model.md) are the ones the weights give
    stored = model.checkpoint_metadata["generalisation"]["routing"]["out_of_template"]
    assert stored["mean_accuracy"] == pytest.approx(out["mean_accuracy"], abs=1e-6)


def test_shipped_demo_model_beats_the_all_language_baseline_on_every_out_of_template_text():
    _assert_demo_routes_new_text(DEMO)
