"""`python -m pimoe inspect SOURCE --text "..."` (or `--ids "12 7 301"`): route a text through a Hugging Face MoE
checkpoint on PiMoE.

Prints one line per MoE layer (expert load against uniform, MaxVio, mean router entropy, busiest experts) and, with
--out, writes the full trace (tokens, every layer's experts, weights and scores per token) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pimoe.output_paths import writable_destination

__all__ = ["configure_parser", "main"]


# Attention over S tokens takes time and (eager attention) memory in S^2: a megabyte of text routed whole ran past two
# minutes on the shipped tiny model before anything printed. The first tokens are routed; a warning says what was cut.
DEFAULT_MAX_TOKENS = 8192


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a save_pretrained folder, or a hub id already in the Hugging Face cache")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", help="the text to route")
    given.add_argument("--ids", help="token ids to route instead, e.g. '12 7 301' (for a folder without a tokenizer)")
    parser.add_argument("--max-tokens", type=_positive_int, default=DEFAULT_MAX_TOKENS,
                        help=f"route at most this many tokens, the text's first (default {DEFAULT_MAX_TOKENS:,})")
    parser.add_argument("--out", type=Path, help="write the full trace as JSON here")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU when visible)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--download", action="store_true", help="fetch a hub id into the Hugging Face cache")
    parser.add_argument("--temperature", type=float, default=None, help="router temperature in every MoE layer")
    parser.add_argument("--top-k", type=int, default=None, help="experts per token in every MoE layer")
    parser.add_argument("--ablate", action="append", metavar="[LAYER:]EXPERT",
                        help="remove an expert, in every MoE layer or at LAYER (repeatable)")
    parser.add_argument("--force", action="append", metavar="[LAYER:]EXPERT",
                        help="pin an expert, in every MoE layer or at LAYER (repeatable)")


def parse_expert_edits(values: list[str] | None, moe_layer_ids: list[int]) -> dict[int, list[int]] | None:
    """["3", "2:5"] -> {layer: [experts]}: a bare EXPERT applies to every MoE layer, LAYER:EXPERT to that layer."""
    if not values:
        return None
    edits: dict[int, list[int]] = {}
    for value in values:
        layer_text, _, expert_text = value.rpartition(":")
        try:
            expert = int(expert_text)
            layers = [int(layer_text)] if layer_text else moe_layer_ids
        except ValueError:
            raise ValueError(f"expected EXPERT or LAYER:EXPERT (integers), got {value!r}") from None
        for layer in layers:
            edits.setdefault(layer, []).append(expert)
    return edits


def main(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from pimoe.hf.loading import load_hf_moe
    from pimoe.hf.summary import summarize_trace, trace_to_dict

    transformers_logging.disable_progress_bar()  # the weight-loading bar would interleave with the table
    if args.out:  # before loading a checkpoint that may take minutes
        writable_destination(args.out, "trace")

    model = load_hf_moe(args.source, device=args.device, dtype=args.dtype, download=args.download)
    ids = model.encode(args.text) if args.text is not None else model.parse_ids(args.ids)
    if ids.shape[1] > args.max_tokens:
        print(f"warning: routing the first {args.max_tokens:,} of {ids.shape[1]:,} tokens (--max-tokens)",
              file=sys.stderr)
        ids = ids[:, :args.max_tokens]
    trace = model.trace(ids, temperature=args.temperature, top_k=args.top_k,
                        force=parse_expert_edits(args.force, model.moe_layer_ids),
                        ablate=parse_expert_edits(args.ablate, model.moe_layer_ids))
    print(f"{model.source}: {model.describe()}, {trace.input_ids.shape[1]} tokens")
    if warning := model.beyond_trained_positions(trace.input_ids.shape[1]):
        print(f"warning: {warning}", file=sys.stderr)
    if not trace.edits.is_default:
        print(f"routing edits: {trace.edits.to_dict()}")
    uniform = 1.0 / model.num_experts
    print(f"{'layer':>5} {'max load':>9} {'uniform':>8} {'MaxVio':>7} {'entropy':>12}  top experts (share)")
    for row in summarize_trace(trace):
        top = ", ".join(f"{e} ({share:.2f})" for e, share in row.top_experts)
        print(f"{row.layer:>5} {max(row.load):>9.3f} {uniform:>8.3f} {row.max_violation:>7.2f} "
              f"{row.entropy:>5.2f} / {row.max_entropy:.2f}  {top}")
    if args.out:
        args.out.write_text(json.dumps(trace_to_dict(model, trace)))
        print(f"trace written to {args.out}")
    return 0
