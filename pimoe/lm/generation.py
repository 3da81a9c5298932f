"""The generation loop of PiMoE-LM, with a per-token hook that can splice tokens in.

Legend: V vocabulary, E experts, K experts per token.

The loop knows nothing about the model: it calls `step_fn(ids) -> StepOutput` (logits for the next token and the
routing of the last token). After each generated token it runs one step on the sequence that ends with that token, so
the hook sees how the token itself was routed, and the same step already holds the logits for the token after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pimoe.layer.routing import RoutingInfo
from pimoe.lm.text import ByteTokenizer
from pimoe.turns import turn_point

__all__ = ["GenerationResult", "GenerationStep", "OnToken", "StepOutput", "TokenRouting", "generate_tokens"]


@dataclass(frozen=True)
class TokenRouting:
    """How one token was routed, in every layer.

    expert_indices / expert_weights: per layer, the K chosen experts (best first) and their combine weights.
    probs: per layer, the E router probabilities. expert_types: the type of each expert.
    """

    expert_indices: list[list[int]]
    expert_weights: list[list[float]]
    probs: list[list[float]]
    expert_types: list[str]

    @property
    def top1_types(self) -> list[str]:
        """Per layer, the type of the token's best expert."""
        return [self.expert_types[indices[0]] for indices in self.expert_indices]

    @classmethod
    def from_layers(cls, routings: Sequence[RoutingInfo], row: int) -> TokenRouting:
        """The routing of routed token `row` (an index into the T routed tokens, -1 = last) from per-layer records."""
        return cls(
            expert_indices=[r.expert_indices[row].tolist() for r in routings],
            expert_weights=[r.expert_weights[row].detach().float().tolist() for r in routings],
            probs=[r.probs[row].detach().float().tolist() for r in routings],
            expert_types=list(routings[0].expert_types),
        )


@dataclass(frozen=True)
class StepOutput:
    """One model step: logits (V,) for the next token, and the routing of the last input token."""

    logits: torch.Tensor
    routing: TokenRouting


@dataclass(frozen=True)
class GenerationStep:
    """One generated token: where it went in `ids`, what the model chose, how it was routed, and what replaced it
    (the hook's list) or None."""

    position: int
    token_id: int
    routing: TokenRouting
    spliced: list[int] | None = None


@dataclass
class GenerationResult:
    """text: the continuation only (decoded new tokens; specials are skipped). ids: prompt + new tokens.

    stop_reason: "eos" (the model produced EOS and stop_at_eos was set) or "max_new_tokens".
    """

    text: str
    ids: list[int]
    prompt_length: int
    steps: list[GenerationStep] = field(default_factory=list)
    stop_reason: str = "max_new_tokens"

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.prompt_length:]


OnToken = Callable[[int, int, TokenRouting], "list[int] | None"]


def _check_options(max_new_tokens: int, sampling_temperature: float, sampling_top_k: int | None) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(sampling_temperature, bool) or not isinstance(sampling_temperature, (int, float)) or not math.isfinite(sampling_temperature) \
            or sampling_temperature < 0:
        raise ValueError(f"sampling_temperature must be a finite number >= 0 (0 = greedy), got {sampling_temperature!r}")
    if sampling_top_k is not None and (isinstance(sampling_top_k, bool) or not isinstance(sampling_top_k, int) or sampling_top_k < 1):
        raise ValueError(f"sampling_top_k must be a positive integer or None, got {sampling_top_k!r}")


def choose_token(logits: torch.Tensor, sampling_temperature: float, sampling_top_k: int | None, generator: torch.Generator | None,
                 banned_ids: Sequence[int] = ()) -> int:
    """Greedy (sampling_temperature 0) or sampled next token from logits (V,), never one of `banned_ids`."""
    logits = logits.float().clone()
    if banned_ids:
        logits[list(banned_ids)] = -math.inf
    if sampling_temperature == 0:
        return int(logits.argmax())
    logits = logits / sampling_temperature
    if sampling_top_k is not None and sampling_top_k < logits.numel():
        kth = torch.topk(logits, sampling_top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_tokens(
    step_fn: Callable[[list[int]], StepOutput],
    prompt_ids: list[int],
    tokenizer: ByteTokenizer,
    max_new_tokens: int = 64,
    sampling_temperature: float = 0.0,
    sampling_top_k: int | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    on_token: OnToken | None = None,
    banned_ids: Sequence[int] = (),
) -> GenerationResult:
    """Generate up to `max_new_tokens` tokens after `prompt_ids`.

    on_token(position, token_id, routing) is called once per generated token, after the step that routed it;
    returning a list of ids replaces that token with them (an empty list deletes it), None keeps it. Spliced tokens are
    not passed to the hook again. The loop runs at most `max_new_tokens` iterations and stops once that many new
    tokens are in `ids`; a splice is never cut, so a splice can take the count past `max_new_tokens`.
    seed: sampling uses a private torch.Generator seeded with it (the global RNG is untouched); None samples from
    the global RNG. Greedy decoding ignores it.
    """
    _check_options(max_new_tokens, sampling_temperature, sampling_top_k)
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    ids = list(prompt_ids)
    prompt_length = len(ids)
    steps: list[GenerationStep] = []
    stop_reason = "max_new_tokens"
    out = step_fn(ids) if max_new_tokens else None
    for _ in range(max_new_tokens):
        if len(ids) - prompt_length >= max_new_tokens:
            break
        turn_point()  # a caller sharing the device may let other work in between tokens (pimoe.turns)
        token = choose_token(out.logits, sampling_temperature, sampling_top_k, generator, banned_ids)
        ids.append(token)
        out = step_fn(ids)
        position, routing, spliced = len(ids) - 1, out.routing, None
        if on_token is not None:
            replacement = on_token(position, token, routing)
            if replacement is not None:
                spliced = [int(t) for t in replacement]
                bad = [t for t in spliced if not 0 <= t < tokenizer.vocab_size]
                if bad:
                    raise ValueError(f"on_token returned token id {bad[0]}, outside [0, {tokenizer.vocab_size})")
                ids[position:] = spliced
                out = step_fn(ids)
        steps.append(GenerationStep(position, token, routing, spliced))
        if stop_at_eos and token == tokenizer.eos_id and spliced is None:
            stop_reason = "eos"
            break
    return GenerationResult(
        text=tokenizer.decode(ids[prompt_length:]),
        ids=ids,
        prompt_length=prompt_length,
        steps=steps,
        stop_reason=stop_reason,
    )
