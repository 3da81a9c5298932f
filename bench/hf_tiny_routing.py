"""What the shipped assets/hf-tiny-qwen3-moe routes where, measured on the corpus's validation split (seed 0).

    python bench/hf_tiny_routing.py [--out bench/results/hf-tiny-routing.json]

Per MoE layer: MaxVio, mean router entropy (ln 8 = 2.08 at uniform), and per token class (number, operator, word,
other) the expert that takes the largest share of that class's tokens against the chance share K/E = 0.25. Then the
validation loss (mean next-token NLL, nats) under the checkpoint's own routing and under edits: top-1, temperature 2,
and the number class's favourite expert ablated in every layer; and greedy 10-token continuations of three
prompts under each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pimoe.hf import load_hf_moe  # noqa: E402
from pimoe.hf.specialization import TOKEN_CLASSES, class_expert_share, classify_token, token_texts  # noqa: E402
from pimoe.hf.summary import summarize_trace  # noqa: E402
from pimoe.hf.train_tiny import _token_stream, _windows  # noqa: E402
from pimoe.lm.data import CorpusConfig, generate_corpus  # noqa: E402

PROMPTS = ("Ana has 12 apples and buys 7 more, so she has", "12+7=", "If 3>5 then")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/hf-tiny-qwen3-moe")
    parser.add_argument("--out", type=Path, default=Path("bench/results/hf-tiny-routing.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = load_hf_moe(args.model, device="cpu")
    val = generate_corpus(CorpusConfig(seed=0, num_train=6000, num_val=300)).val
    windows = _windows(_token_stream(model.tokenizer, val), 64)  # (N, 64): the training script's validation windows
    trace = model.trace(windows)
    classes = [classify_token(text) for text in token_texts(model.tokenizer, windows)]
    report = {"model": args.model, "device": "cpu", "dtype": "float32", "tokens": windows.numel(), "layers": []}
    for summary, info in zip(summarize_trace(trace), trace.routing, strict=True):
        share = class_expert_share(info, classes)
        favourite = {name: {"expert": int(share[c].argmax()), "share": round(float(share[c].max()), 3)}
                     for c, name in enumerate(TOKEN_CLASSES)}
        report["layers"].append({"layer": summary.layer, "max_violation": round(summary.max_violation, 3),
                                 "entropy": round(summary.entropy, 3), "favourite_expert_by_class": favourite})
    report["class_counts"] = {name: classes.count(name) for name in TOKEN_CLASSES}
    number_experts = {layer["layer"]: layer["favourite_expert_by_class"]["number"]["expert"]
                      for layer in report["layers"]}
    edits = {"own routing": {}, "top_k=1": {"top_k": 1}, "temperature=2": {"temperature": 2.0},
             "ablate each layer's number expert": {"ablate": number_experts}}
    report["val_loss"] = {name: round(float(-model.trace(windows, **kw).token_log_probs().mean()), 4)
                          for name, kw in edits.items()}
    report["continuations"] = {
        prompt: {name: model.tokenizer.decode(model.generate(model.encode(prompt), max_new_tokens=10, **kw)
                                               .new_tokens[0]) for name, kw in edits.items()}
        for prompt in PROMPTS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
