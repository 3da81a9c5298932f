"""Launch shapes of the fast path's forward tried in one process: each setting's layer time and kernels, side by side.

    python bench/tile_sweep.py --tokens 512 --expert-types language \
        --try "" --try "up_act_small=64x128x64x4x5" --try "down_tma_small=128x64x128x8x4,combine_tokens=16" \
        --json out.json

Every `--try` is a set of `pimoe.cuda.tuning` overrides (`parse_overrides`; "" is the defaults). For each token count
and setting: the layer captured in a CUDA graph and replayed (one call from an idle GPU and calls back to back, CUDA
events, medians; each replay also copies the next input into the static one), the time per call inside one graph
of 20 calls (`in_graph_ms`: neither the copy nor a graph launch per call, as a layer in a model's graph), the kernels of one eager call (PyTorch profiler, device µs per call), and the output's largest
difference from the defaults' output, so a shape that computes something else shows. The defaults run first and
again last: the two say how far the machine drifted during the sweep. The dense FFN of the same active parameters is
timed the same way once per token count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

import torch

from bench.kernel_profile import kernel_table
from pimoe.cuda.tuning import active_tuning, parse_overrides, tuning_overrides
from pimoe.layer.reference import DenseFFN
from pimoe.measure.graph_timing import in_graph_ms, time_graphed_callable
from pimoe.measure.layer_bench import BenchConfig, _build_system
from pimoe.output_paths import output_file


def time_setting(system, inputs: list[torch.Tensor], reference: torch.Tensor | None) -> dict:
    timing = {"warmup": 5, "repeats": 100}
    with torch.inference_mode():
        graphed = time_graphed_callable(system, inputs, timing)
        out = system(inputs[0])
        entry = {"graph_us": graphed.single.median_ms * 1e3, "graph_back_to_back_us": graphed.back_to_back_ms * 1e3,
                 "in_graph_us": in_graph_ms(system, inputs) * 1e3, "kernels": kernel_table(lambda: system(inputs[0]))}
    if reference is not None:
        entry["max_abs_diff_from_defaults"] = float((out.float() - reference.float()).abs().max())
    return entry, out


def sweep(system, dense, tokens: int, settings: list[str], result: dict, save) -> None:
    """Fills `result` setting by setting, calling save() after each (a run cut off by a time limit keeps what it
    measured)."""
    count = max(2, min(16, (256 << 20) // (tokens * 512 * 2)))
    inputs = [torch.randn(1, tokens, 512, device="cuda", dtype=torch.bfloat16) for _ in range(count)]
    with torch.inference_mode():
        dense_timing = time_graphed_callable(dense, [x.view(tokens, 512) for x in inputs],
                                             {"warmup": 5, "repeats": 100})
        dense_in_graph_us = in_graph_ms(dense, [x.view(tokens, 512) for x in inputs]) * 1e3
    result.update({"dense_graph_us": dense_timing.single.median_ms * 1e3,
                   "dense_graph_back_to_back_us": dense_timing.back_to_back_ms * 1e3,
                   "dense_in_graph_us": dense_in_graph_us, "settings": []})
    reference = None
    for setting in ["", *settings, ""]:
        with tuning_overrides(**parse_overrides([setting])):
            try:
                entry, out = time_setting(system, inputs, reference)
            except Exception as error:  # a shape the compiler or the card cannot take: recorded, the sweep goes on
                entry, out = {"failed": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}, None
        reference = out if reference is None else reference
        entry["setting"] = setting or "defaults"
        result["settings"].append(entry)
        save()
        if "failed" in entry:
            print(f"  {entry['setting']:60} {entry['failed']}")
            continue
        top = ", ".join(f"{row['kernel'][:24]} {row['us_per_call']:.1f}" for row in entry["kernels"][:6])
        ratio = entry["graph_back_to_back_us"] / result["dense_graph_back_to_back_us"]
        print(f"  {entry['setting']:60} graph {entry['graph_us']:7.1f} µs, back to back "
              f"{entry['graph_back_to_back_us']:7.1f} ({ratio:.3f}x dense), inside a graph of 20 calls "
              f"{entry['in_graph_us']:7.1f} (dense {result['dense_in_graph_us']:.1f})"
              f"  diff {entry.get('max_abs_diff_from_defaults', 0.0):.2e}  | {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="512")
    parser.add_argument("--expert-types", default="language")
    parser.add_argument("--try", dest="settings", action="append", default=[],
                        help="comma-separated FIELD=VALUE overrides of pimoe.cuda.tuning.Tuning; repeat per setting")
    parser.add_argument("--json", type=output_file("results file"))
    args = parser.parse_args()
    for setting in args.settings:
        parse_overrides([setting])  # a typo fails here, before any GPU work
    expert_types = tuple(args.expert_types.split(","))
    system = _build_system(BenchConfig(device="cuda", dtype="bfloat16", expert_types=expert_types))
    system = system.to("cuda", torch.bfloat16)
    dense = DenseFFN.matching(system).to("cuda", torch.bfloat16).eval()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "expert_types": [e.expert_type for e in system.experts],
              "defaults": {k: str(v) for k, v in vars(active_tuning()).items()}, "sizes": {}}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))

    for tokens in (int(t) for t in args.tokens.split(",")):
        print(f"== {tokens} tokens, experts {args.expert_types}")
        report["sizes"][tokens] = {}
        sweep(system, dense, tokens, args.settings, report["sizes"][tokens], save)


if __name__ == "__main__":
    main()
