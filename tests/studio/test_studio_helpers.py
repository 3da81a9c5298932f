"""The app-side helpers on their own: token strip, text clipping, history thinning, CSV labels, teaching examples and
the live charts' thinning."""


import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pimoe.lm.model import LMConfig, PiMoELM
from studio.figures.routing import expert_color
from studio.guide import balance_example, softmax_example, temperature_sweep
from studio.routing_view import clip_text, routing_view
from studio.strip import token_strip_spec
from studio.tables import exact_answers_line, method_rows, results_csv
from studio.training_view import thin


def test_strip_colours_each_token_by_its_top1_expert_type_and_counts_them_in_the_legend():
    spec = token_strip_spec(["<", "b", ">"], ["comparison", "word", "comparison"], [0, 1, 0],
                            ["computation", "language"], confidence=[1.0, 0.0, 0.5])

    assert spec["text"] == ["<", "b", ">"]  # as text: the browser side never parses a token as HTML
    assert [spec["colors"][c] for c in spec["color"]] == [expert_color("computation"), expert_color("language"),
                                                          expert_color("computation")]
    assert spec["alpha"][0] > spec["alpha"][2] > spec["alpha"][1]  # a hesitant router's token is paler
    assert spec["legend"] == [["computation", expert_color("computation"), 2], ["language", expert_color("language"), 1]]
    assert spec["titles"][1] == "#1 'b' (word) → E1 language, p = 0.00"


def test_strip_marks_dropped_tokens_and_allows_line_breaks_after_spaces_and_at_newlines():
    spec = token_strip_spec(["a", "␣", "b", "↵", "c"], ["word", "space", "word", "newline", "word"], [0] * 5,
                            ["language"], dropped=[False, False, True, False, False])

    assert spec["dropped"] == [2] and spec["titles"][2].endswith("dropped (over capacity)")
    assert spec["breaks"] == {"wbr": [1], "br": [3]}
    assert spec["text"][1] == "\u00a0"  # a visible space keeps its width


def test_strip_spec_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 tokens, 1 token types"):
        token_strip_spec(["a", "b"], ["word"], [0, 0], ["language"])


def test_clip_text_cuts_at_a_character_boundary():
    text = "é" * 10  # two bytes each

    clipped, was_cut = clip_text(text, max_bytes=5)

    assert was_cut and clipped == "éé"
    assert clip_text("short", max_bytes=5) == ("short", False)


def test_thin_keeps_the_latest_record_and_bounds_the_count():
    records = list(range(1001))

    kept = thin(records, max_points=100)

    assert len(kept) <= 101 and kept[-1] == 1000 and kept[0] == 0


def test_results_csv_labels_every_row_with_device_dtype_and_date():
    csv = results_csv([{"batch": 1, "layer_us": 12.5, "extra": {}}],
                      {"device": "cpu", "device_name": "x86_64", "dtype": "float32", "date": "2026-01-01",
                       "torch": "2.13"}).decode()

    header, row = csv.strip().splitlines()
    assert header.split(",")[:4] == ["device", "device_name", "dtype", "date"]
    assert row.startswith("cpu,x86_64,float32,2026-01-01")


def test_softmax_example_weights_sum_to_one_and_follow_the_probabilities():
    example = softmax_example(torch.tensor([2.0, 1.0, 0.0, -1.0]), temperature=1.0, top_k=2)

    assert example.chosen == [0, 1]
    assert sum(example.weights) == pytest.approx(1.0)
    assert example.weights[0] > example.weights[1]


def test_balance_example_loss_runs_from_alpha_when_even_to_alpha_times_e_when_collapsed():
    even, collapsed = balance_example(0.0, alpha=0.01), balance_example(1.0, alpha=0.01)

    assert even.loss == pytest.approx(0.01)
    assert collapsed.loss == pytest.approx(0.04)
    assert even.dropped == 0 and collapsed.dropped == 8 - collapsed.capacity


def test_routing_view_scatters_dropped_assignments_onto_the_expert_grid():
    torch.manual_seed(0)
    config = LMConfig.tiny()
    config.moe.router.capacity_factor = 0.25
    routed = PiMoELM(config).route_text("1 + 2 = 3, if true then yes")

    view = routing_view(routed, 0, 0.01)

    info = routed.routing[0]
    assert view.dropped.shape == tuple(info.probs.shape)
    assert view.dropped.sum() == int(info.dropped.sum()) > 0
    assert (view.tokens_per_expert <= info.capacity).all()




def test_fresh_model_sizes_keep_the_sidebar_experts_and_refuse_unknown_sizes():
    from pimoe.lm.model import LMConfig
    from studio.fresh_model import fresh_lm_config

    gpu = fresh_lm_config(("computation", "language"), 4, None, size="gpu")
    assert gpu.hidden_size == LMConfig.gpu().hidden_size and gpu.num_layers == LMConfig.gpu().num_layers
    assert gpu.moe.num_experts == 4 and set(gpu.moe.expert_types) == {"computation", "language"}
    assert gpu.attention_bias == LMConfig.gpu().attention_bias and gpu.moe.intermediate_size == \
        LMConfig.gpu().moe.intermediate_size
    assert fresh_lm_config(("language",), 2, None).hidden_size == LMConfig.demo().hidden_size
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        fresh_lm_config(("language",), 2, None, size="huge")


def test_size_labels_count_each_presets_parameters():
    from pimoe.lm.model import PiMoELM
    from studio.fresh_model import MODEL_SIZES, size_label

    for size, (factory, batch_size, seq_len) in MODEL_SIZES.items():
        config = factory()
        with torch.device("meta"):
            parameters = sum(p.numel() for p in PiMoELM(config).parameters())
        label = size_label(size)
        assert f"{parameters / 1e6:.1f} M parameters" in label
        assert f"hidden {config.hidden_size}" in label and f"batch {batch_size} × {seq_len}" in label


def test_exact_answers_line_names_each_method_in_words_with_its_share():
    report = {"summary": {"plain": {"accuracy": 0.25}, "expert": {"accuracy": 1.0}, "multi_round": {"accuracy": 0.875}}}

    assert exact_answers_line(report) == "plain generation 25% · one-pass hand-off 100% · multi-round tool call 88%"


def test_method_rows_name_the_methods_in_words_and_keep_the_figures():
    rows = method_rows([{"method": "multi_round", "exact answers": 0.5}, {"method": "a new method", "exact answers": 1.0}])

    assert rows == [{"method": "multi-round tool call", "exact answers": 0.5}, {"method": "a new method", "exact answers": 1.0}]


@given(st.lists(st.tuples(st.sampled_from(["a", "␣", "↵", "⇥", "<", "7", "é"]), st.integers(0, 3),
                          st.floats(0.0, 1.0), st.booleans()), max_size=60))
def test_strip_spec_of_any_text_keeps_one_entry_per_token_and_counts_every_token_once(cells):
    expert_types = ["language", "computation", "logical", "language"]
    tokens = [token for token, _, _, _ in cells]
    spec = token_strip_spec(tokens, ["t"] * len(cells), [e for _, e, _, _ in cells], expert_types,
                            confidence=[c for _, _, c, _ in cells], dropped=[d for _, _, _, d in cells])

    assert len(spec["text"]) == len(spec["color"]) == len(spec["alpha"]) == len(spec["titles"]) == len(cells)
    assert all(0 <= a <= 255 for a in spec["alpha"])
    assert spec["dropped"] == [i for i, (_, _, _, d) in enumerate(cells) if d]
    assert sum(count for _, _, count in spec["legend"]) == len(cells)
    for index, (_, expert, _, _) in enumerate(cells):
        assert spec["colors"][spec["color"][index]] == expert_color(expert_types[expert])
    assert set(spec["breaks"]["wbr"]) | set(spec["breaks"]["br"]) == {i for i, t in enumerate(tokens) if t in "␣⇥↵"}


def test_temperature_sweep_entropy_share_is_a_share_and_undefined_for_one_expert():
    rows = temperature_sweep(torch.tensor([2.0, 0.5, -1.0]))
    assert all(0.0 < row["entropy / log E"] <= 1.0 for row in rows)
    assert [row["entropy / log E"] for row in rows] == sorted(row["entropy / log E"] for row in rows)  # hotter: flatter
    assert all(row["entropy / log E"] is None and row["top-1 probability"] == 1.0
               for row in temperature_sweep(torch.tensor([0.3])))
