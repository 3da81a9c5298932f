"""The MFU a plain PyTorch dense transformer reaches at the GPU preset's shape: the ceiling PiMoE-LM's figure sits under.

PiMoE-LM's GPU preset (hidden 512, 6 layers, 8 heads, sequences of 512, a byte vocabulary) has its MoE layers' FLOPs in
GEMMs of K = 512 and its step's other passes bandwidth-bound (docs/performance.md). What a dense model of the same
shape reaches with nothing but stock PyTorch (nn.Linear, nn.LayerNorm, GELU, scaled_dot_product_attention, bf16
autocast over float32 weights, fused AdamW, gradient clipping: the same recipe as the Trainer) says how much of the
gap to a utilisation goal is the model's size rather than the routing. The FFN is as wide as the preset's active
expert parameters (top-k x the mean expert), so the model FLOPs per token match.

    python bench/dense_lm_mfu.py [--batch-size 64] [--seq-len 512] [--steps 20] [--modes eager,compile,graph]
        [--hidden 512 --layers 6 --heads 8 --intermediate 1024 | --ffn WIDTH] [--json PATH]

MFU uses the same count as PiMoE-LM's (`pimoe.measure.flops`: 6 N + 12 L D S per token, N the matrix parameters a
token uses). Steps are timed with CUDA events around each step, the median of the second half reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pimoe.cuda.graphs import capture_after_warmup  # noqa: E402
from pimoe.lm.model import LMConfig  # noqa: E402
from pimoe.lm.text import ByteTokenizer  # noqa: E402
from pimoe.measure.flops import mfu  # noqa: E402
from pimoe.output_paths import output_file  # noqa: E402


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.out = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.up, self.down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, seq, hidden))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class DenseLM(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, ffn: int, max_seq: int) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, hidden), nn.Embedding(max_seq, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads, ffn) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(hidden), nn.Linear(hidden, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def matched_ffn_width(config: LMConfig) -> int:
    """The FFN width whose two GEMMs hold top-k x the preset's mean expert parameters (a multiple of 64)."""
    from pimoe.lm.model import PiMoELM

    with torch.device("meta"):
        moe = PiMoELM(config).blocks[0].moe
    mean_expert = sum(e.up.weight.numel() + e.down.weight.numel() for e in moe.experts) / len(moe.experts)
    width = moe.router.top_k * mean_expert / (2 * config.hidden_size)
    return int(round(width / 64) * 64)


def flops_per_token(model: DenseLM, layers: int, hidden: int, seq: int) -> float:
    matrices = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return 6.0 * matrices + 12.0 * layers * hidden * seq


def _elapsed_ms(call, device: torch.device) -> float:
    """One call's time: CUDA events around it on a GPU, the wall clock on the CPU (where this script only checks
    itself: tests/bench)."""
    if device.type != "cuda":
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def run(args, mode: str, ffn: int) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = DenseLM(ByteTokenizer.vocab_size, args.hidden, args.layers, args.heads, ffn, args.seq_len).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda",
                                  capturable=mode == "graph")
    ids = torch.randint(0, ByteTokenizer.vocab_size, (args.batch_size, args.seq_len + 1), device=device)
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    forward = torch.compile(model) if mode == "compile" else model

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=mode != "graph")
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=mode != "graph"):
            logits = forward(inputs)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        return loss

    if mode == "graph":  # warm-ups on a side stream, then one capture of the whole step
        call = capture_after_warmup(step, warmups=3)[0].replay
    else:
        call = step
    times = [_elapsed_ms(call, device) for _ in range(args.steps)]
    steady_ms = statistics.median(times[len(times) // 2:])
    tokens_per_s = args.batch_size * args.seq_len / steady_ms * 1e3
    per_token = flops_per_token(model, args.layers, args.hidden, args.seq_len)
    utilisation = mfu(per_token * tokens_per_s, 1.0, _device_name(device))
    row = {"mode": mode, "ffn": ffn, "step_ms": [round(t, 2) for t in times], "steady_median_ms": steady_ms,
           "tokens_per_s": tokens_per_s, "flops_per_token": per_token, "mfu": utilisation,
           "parameters": sum(p.numel() for p in model.parameters())}
    print(f"dense {mode}: {row['parameters'] / 1e6:.1f} M parameters, {per_token / 1e6:.1f} MFLOP per token, "
          f"{steady_ms:.2f} ms/step, {tokens_per_s:,.0f} tokens/s, MFU "
          f"{'n/a' if utilisation is None else f'{100 * utilisation:.1f}%'}", flush=True)
    return row


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    preset = LMConfig.gpu()
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", default="eager,compile,graph")
    parser.add_argument("--hidden", type=int, default=preset.hidden_size)
    parser.add_argument("--layers", type=int, default=preset.num_layers)
    parser.add_argument("--heads", type=int, default=preset.num_heads)
    parser.add_argument("--intermediate", type=int,
                        help="the experts' base width of the MoE model to match (default: the preset's)")
    parser.add_argument("--ffn", type=int, help="FFN width (default: the active expert parameters of the preset at "
                        "--hidden and --intermediate)")
    parser.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a check of the script)")
    parser.add_argument("--json", type=output_file("results file"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (--device cpu only checks the script)")
    ffn = args.ffn or matched_ffn_width(preset.resized(hidden_size=args.hidden, intermediate_size=args.intermediate,
                                                       num_heads=args.heads))
    rows = []
    for mode in args.modes.split(","):
        try:
            rows.append(run(args, mode, ffn))
        except Exception as error:  # one mode failing must not hide the others' numbers
            print(f"dense {mode}: failed: {type(error).__name__}: {error}", flush=True)
            rows.append({"mode": mode, "error": f"{type(error).__name__}: {error}"})
    if args.json:
        args.json.write_text(json.dumps({"card": _device_name(torch.device(args.device)), "torch": torch.__version__,
                                         "date": time.strftime("%Y-%m-%d", time.gmtime()), "hidden": args.hidden,
                                         "layers": args.layers, "heads": args.heads, "batch_size": args.batch_size,
                                         "seq_len": args.seq_len, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
