"""The dense MFU reference (bench/dense_lm_mfu.py) checked on the CPU, so its GPU run cannot fail on the script."""

from __future__ import annotations

import json

from bench.dense_lm_mfu import DenseLM, flops_per_token, main, matched_ffn_width
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.measure.flops import lm_flops_per_token


def test_the_matched_ffn_gives_the_presets_model_flops_per_token() -> None:
    preset = LMConfig.gpu()
    dense = DenseLM(259, preset.hidden_size, preset.num_layers, preset.num_heads, matched_ffn_width(preset),
                    preset.max_seq_len)
    ours = lm_flops_per_token(PiMoELM(preset), preset.max_seq_len)
    theirs = flops_per_token(dense, preset.num_layers, preset.hidden_size, preset.max_seq_len)
    assert abs(theirs - ours) / ours < 0.01


def test_every_mode_that_runs_on_the_cpu_writes_its_row(tmp_path) -> None:
    out = tmp_path / "dense.json"
    code = main(["--device", "cpu", "--batch-size", "2", "--seq-len", "8", "--steps", "3", "--modes", "eager,graph",
                 "--hidden", "16", "--layers", "1", "--heads", "2", "--ffn", "32", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    eager, graph = rows
    assert eager["mode"] == "eager" and len(eager["step_ms"]) == 3 and eager["steady_median_ms"] > 0
    assert eager["tokens_per_s"] > 0 and eager["mfu"] is None  # no peak for a CPU
    assert "error" in graph  # CUDA graphs need a GPU: reported, not raised


def test_the_matched_ffn_follows_a_resized_preset() -> None:
    wide = LMConfig.gpu().resized(hidden_size=256, intermediate_size=256, num_layers=2, num_heads=4)
    dense = DenseLM(259, 256, 2, 4, matched_ffn_width(wide), wide.max_seq_len)
    ours = lm_flops_per_token(PiMoELM(wide), wide.max_seq_len)
    theirs = flops_per_token(dense, 2, 256, wide.max_seq_len)
    assert abs(theirs - ours) / ours < 0.03
