"""The recipe of assets/hf-tiny-qwen3-moe: a ~2 M-parameter Qwen3-MoE trained on the synthetic corpus on the CPU.

    python -m pimoe.hf.train_tiny --out assets/hf-tiny-qwen3-moe

A byte-level BPE tokenizer is trained on the corpus with the `tokenizers` package, the model is transformers' own
Qwen3MoeForCausalLM built from a config (4 layers, 8 experts, top-2, hidden 128), trained with its router load-balancing
loss, and written with `save_pretrained` (safetensors) beside the tokenizer and a `training.json` of what was measured.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from pimoe.lm.data import CorpusConfig, generate_corpus
from pimoe.output_paths import writable_destination

__all__ = ["build_tokenizer", "tiny_qwen3_moe_config", "train_tiny"]

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


def build_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`: any string encodes, none maps to unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=SPECIAL_TOKENS[0], bos_token=SPECIAL_TOKENS[0],
                                   pad_token=SPECIAL_TOKENS[1])


def tiny_qwen3_moe_config(vocab_size: int, eos_id: int, pad_id: int):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=8,
                          num_experts_per_tok=2, moe_intermediate_size=128, norm_topk_prob=True,
                          decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=256,
                          tie_word_embeddings=True, router_aux_loss_coef=0.01, output_router_logits=True,
                          bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)


def _token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    ids = []
    for row in tokenizer(texts)["input_ids"]:
        ids.extend(row + [eos])
    return torch.tensor(ids, dtype=torch.long)


def _windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    usable = (len(stream) // seq_len) * seq_len
    return stream[:usable].view(-1, seq_len)


@torch.no_grad()
def _val_loss(model, windows: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = [float(model(input_ids=w, labels=w).loss) for w in windows.split(batch_size)]
    model.train()
    return sum(losses) / len(losses)


def train_tiny(out: Path, *, steps: int = 300, batch_size: int = 16, seq_len: int = 64, lr: float = 3e-3,
               seed: int = 0, num_train: int = 6000, threads: int = 2) -> dict:
    """Train and save; returns the numbers written to training.json."""
    from transformers import Qwen3MoeForCausalLM

    writable_destination(Path(out) / "training.json", "trained model")  # before training, not after it
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    corpus = generate_corpus(CorpusConfig(seed=seed, num_train=num_train, num_val=300))
    tokenizer = build_tokenizer(corpus.train)
    train = _windows(_token_stream(tokenizer, corpus.train), seq_len)
    val = _windows(_token_stream(tokenizer, corpus.val), seq_len)
    config = tiny_qwen3_moe_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = Qwen3MoeForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(seed)
    initial_val = _val_loss(model, val, batch_size)
    start = time.perf_counter()
    for step in range(steps):
        batch = train[torch.randint(len(train), (batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss  # includes router_aux_loss_coef * load-balancing loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    model.config.output_router_logits = False
    model.eval()
    final_val = _val_loss(model, val, batch_size)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {
        "command": f"python -m pimoe.hf.train_tiny --out {out} --steps {steps} --batch-size {batch_size} --seed {seed}",
        "parameters": sum(p.numel() for p in model.parameters()), "steps": steps, "batch_size": batch_size,
        "seq_len": seq_len, "lr": lr, "seed": seed, "train_windows": len(train), "val_windows": len(val),
        "vocab_size": len(tokenizer), "val_loss_initial": round(initial_val, 4), "val_loss_final": round(final_val, 4),
        "train_seconds": round(seconds, 1), "threads": threads, "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pimoe.hf.train_tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("assets/hf-tiny-qwen3-moe"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(train_tiny(args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                       threads=args.threads), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
