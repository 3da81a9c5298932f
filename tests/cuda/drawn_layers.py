"""Layer configurations drawn by a seeded generator (hidden sizes, widths, expert counts and types, top-k,
temperature, capacity and token counts that no hand-written test picked), and the gradient helpers the fast path's
tests share: tests/cuda/test_generated_layers.py on a GPU, test_grouped_cpu.py and the interpreter's tests on the CPU."""

from __future__ import annotations

import random

import torch

from pimoe import ExpertConfig, PiMoEConfig, PiMoESystem, RouterConfig

TYPES = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")
# the float64 reference runs every expert on every token on the CPU: draws stay under this many multiply-adds
_REFERENCE_BUDGET = 4e9


def draw(seed: int) -> dict:
    rng = random.Random(seed)
    experts = rng.choice([1, 2, 3, 5, 8, 13, 16, 33])
    hidden = rng.choice([16, 48, 80, 100, 144, 208, 528])  # the kernels take multiples of 16; 100 falls back
    width = rng.choice([8, 40, 100, 300, 1000])
    capacity = rng.choice([None, None, 0.7])
    batch, seq = rng.choice([(1, 1), (2, 63), (1, 513), (3, 333), (1, 1500)])
    if capacity is not None:  # the reference's capacity rule is a Python loop over tokens
        seq = min(seq, 200)
    while batch * seq > 1 and experts * batch * seq * hidden * width * 2 > _REFERENCE_BUDGET:
        seq = max(1, seq // 2)
    return dict(hidden=hidden, width=width, types=tuple(rng.choice(TYPES) for _ in range(experts)),
                top_k=rng.randint(1, min(experts, 4)), temperature=rng.choice([0.5, 1.0, 2.0]), capacity=capacity,
                shape=(batch, seq, hidden), seed=seed)


def build(config: dict, residual: bool = False) -> PiMoESystem:
    torch.manual_seed(config["seed"])
    system = PiMoESystem(PiMoEConfig(
        hidden_size=config["hidden"], num_experts=len(config["types"]), expert_types=config["types"],
        residual=residual, expert=ExpertConfig(intermediate_size=config["width"]),
        router=RouterConfig(top_k=config["top_k"], temperature=config["temperature"],
                            capacity_factor=config["capacity"])))
    system.check_finite = False
    system.dispatch = "cuda_fast"
    return system


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-30))


def assert_gradients_match(fast: dict, expected: dict, tolerance: float, config: dict) -> None:
    """The fast path's gradients by name against the sorted dispatch's. An expert no token reached has none there
    (the sorted dispatch never calls it); the fast path's stacked weights hand it zeros, which is all it may get."""
    for name in fast.keys() - expected.keys():
        assert not fast[name].any(), (config, name)
    assert expected.keys() <= fast.keys(), config
    for name, grad in expected.items():
        assert relative(fast[name], grad) < tolerance, (config, name)


def grads_of(system: PiMoESystem, x: torch.Tensor, dispatch: str, autocast: bool = False):
    """(output, input gradient, parameter gradients by name) of one training call through `dispatch`, as float64 on
    the CPU: a fixed random upstream gradient on the output plus the router's loss. Parameters without a gradient
    are left out."""
    system.zero_grad(set_to_none=True)
    system.dispatch = dispatch
    x = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out, routing = system(x, return_routing_info=True)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    ((out * upstream).sum() + routing.router_loss).backward()
    return out.detach().double().cpu(), x.grad.double().cpu(), {
        n: p.grad.double().cpu() for n, p in system.named_parameters() if p.grad is not None}


def draw_lm(seed: int) -> dict:
    """A PiMoE-LM configuration: hidden sizes the kernels take (multiples of 16), 1 to 3 blocks, heads of 8 to 48
    columns, 1 to 9 experts of mixed types, top-1 to 3, widths the packs pad, 1 to 4 sequences of 16 to 128 bytes."""
    rng = random.Random(seed)
    hidden = rng.choice([32, 48, 96, 144, 208])
    heads = rng.choice([h for h in (1, 2, 3, 4, 6, 8) if hidden % h == 0 and 8 <= hidden // h <= 48])
    experts = rng.choice([1, 2, 3, 5, 8, 9])
    return dict(hidden=hidden, heads=heads, layers=rng.randint(1, 3), width=rng.choice([24, 64, 100, 256]),
                types=tuple(rng.choice(TYPES) for _ in range(experts)), top_k=rng.randint(1, min(experts, 3)),
                temperature=rng.choice([0.5, 1.0, 2.0]), shape=(rng.randint(1, 4), rng.choice([16, 63, 128])),
                seed=seed)


def build_lm(config: dict):
    from pimoe.lm.model import LMConfig, PiMoELM

    torch.manual_seed(config["seed"])
    model = PiMoELM(LMConfig(max_seq_len=128, num_layers=config["layers"], num_heads=config["heads"], moe=PiMoEConfig(
        hidden_size=config["hidden"], num_experts=len(config["types"]), expert_types=config["types"], residual=False,
        expert=ExpertConfig(intermediate_size=config["width"]),
        router=RouterConfig(top_k=config["top_k"], temperature=config["temperature"]))))
    for block in model.blocks:
        block.moe.check_finite = False
    return model
