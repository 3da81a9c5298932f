"""Computation hand-off inside one decoding pass: the router's token-level decision calls the exact expert.

PiMoE/PiERN (arXiv 2509.18169) keeps computation in a physically isolated expert. While the language model generates,
its token-level router decides when the text needs a computation; a text-to-computation module
(`pimoe.handoff.extract`) turns the tokens into the expert's input; the exact expert (`pimoe.handoff.expert`) computes; its
result goes back into the token stream and decoding continues, so reasoning and computation alternate in one pass
instead of a multi-round tool call.

The trigger (`HandoffTrigger`), for a token at position t of `ids`:
    1. the token is '=' (the byte that asks for a result in the training text "17+26=43"), and
    2. the router sends it to computation: in the trigger layer (or averaged over layers, `layer="mean"`) the top-1
       expert has type "computation" and the probability mass of the computation expert(s) is >= `threshold`, and
    3. `extract_expression` finds an expression that ends at this '=' in the text of the current document.
Then the expert evaluates the expression; its result is spliced in after the '=' and generation continues from there.
A declined computation ("division by zero") is recorded with its reason, and a visible marker saying why
(`declined_marker`: "[undefined: division by zero]") is spliced instead of a result, so the text never shows a number
the model made up where the expert refused.

The '=' may be the prompt's last token ("... so she has 123456+654321="): the first model step routes it, so the
hand-off happens before the first token is generated.

Legend: L layers, E experts, N tokens of a text (EOS + its bytes), P candidate positions, W max_seq_len.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pimoe.handoff.expert import ComputationExpert
from pimoe.handoff.extract import extract_expression, find_expressions
from pimoe.layer.modes import evaluating
from pimoe.layer.options import RoutingOptions
from pimoe.lm.generation import GenerationResult, GenerationStep, OnToken, StepOutput, TokenRouting, generate_tokens
from pimoe.lm.model import PiMoELM

__all__ = [
    "COMPUTATION_TYPE",
    "DEFAULT_LAYER",
    "DEFAULT_THRESHOLD",
    "EQUALS_ID",
    "Handoff",
    "HandoffResult",
    "HandoffTrigger",
    "TriggerCandidate",
    "declined_marker",
    "encode_prompt",
    "generate_multi_round",
    "generate_with_computation",
    "handoff_positions_teacher_forced",
    "label_positions",
    "route_positions",
    "trigger_candidates",
]

EQUALS_ID = ord("=")  # the byte token of '='
# Bytes that would extend a number: after a spliced result the next token may not be one of them (see `seal_results`).
_NUMBER_CONTINUATION_IDS = [ord(c) for c in "0123456789./"]
COMPUTATION_TYPE = "computation"
# Chosen on the dev set (`pimoe.handoff.problems.DEV_SEED`), never on the eval set; docs/computation.md has the sweep.
# On the 14-template model the last layer separated best (every labelled '=' >= 0.98, every other '=' <= 0.60) and 0.8
# sat in the middle of that gap. The models retrained on the varied corpus (issue 20) also send assignment '=' to
# computation (router gate precision 0.936 at 0.8 on the dev set for the 26-template model), and the full trigger, with
# extraction, keeps precision and recall 1.000 for every last-layer threshold from 0.3 to 0.99, so 0.8 was kept.
DEFAULT_LAYER: int | str = -1
DEFAULT_THRESHOLD = 0.8


@dataclass(frozen=True)
class HandoffTrigger:
    """When a token hands off to the exact expert.

    threshold: minimum router probability of the computation expert(s), in (0, 1].
    layer: the layer whose router decides (an index, negative counts from the end) or "mean" for the probabilities
        averaged over layers.
    """

    threshold: float = DEFAULT_THRESHOLD
    layer: int | str = DEFAULT_LAYER

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t <= 1:
            raise ValueError(f"threshold must be a number in (0, 1], got {t!r}")
        if isinstance(self.layer, bool) or not (isinstance(self.layer, int) or self.layer == "mean"):
            raise ValueError(f"layer must be a layer index or 'mean', got {self.layer!r}")

    def check_model(self, model: PiMoELM) -> None:
        """ValueError unless the model has a computation expert and the trigger layer exists."""
        if COMPUTATION_TYPE not in model.expert_types:
            raise ValueError(f"the model has no {COMPUTATION_TYPE!r} expert (its experts: {model.expert_types})")
        num_layers = model.config.num_layers
        if isinstance(self.layer, int) and not -num_layers <= self.layer < num_layers:
            raise ValueError(f"layer {self.layer} is out of range for a model with {num_layers} layers")

    def layer_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """(L, ..., E) router probabilities -> (..., E) of the trigger layer (or their mean over layers)."""
        return probs.mean(dim=0) if self.layer == "mean" else probs[self.layer]

    def computation_probability(self, probs: torch.Tensor, expert_types: Sequence[str]) -> torch.Tensor:
        """(L, ..., E) -> (...): probability mass of the computation expert(s) in the trigger layer (or the mean)."""
        is_computation = torch.tensor([t == COMPUTATION_TYPE for t in expert_types], device=probs.device)
        return (self.layer_probs(probs) * is_computation).sum(dim=-1)

    def router_fires(self, probs: torch.Tensor, expert_types: Sequence[str]) -> torch.Tensor:
        """(L, ..., E) -> (...) bool: the top-1 expert is a computation expert and its mass reaches the threshold."""
        chosen = self.layer_probs(probs)
        is_computation = torch.tensor([t == COMPUTATION_TYPE for t in expert_types], device=probs.device)
        top1_is_computation = is_computation[chosen.argmax(dim=-1)]
        return top1_is_computation & (self.computation_probability(probs, expert_types) >= self.threshold)


@dataclass(frozen=True)
class Handoff:
    """One hand-off to the exact expert.

    position: index in `ids` of the '=' token the router handed off. expression: what the text-to-computation module
    extracted (as written). router_probability: the computation expert's probability at that token (trigger layer or
    mean). result_text: what the expert returned and was spliced after the '=', None when it declined.
    declined_reason: the expert's reason when it declined, else None. in_prompt: the '=' was the prompt's last token.
    result_start, result_end: the spliced tokens are ids[result_start:result_end]: the result, or the
    `declined_marker` when the expert declined.
    """

    position: int
    expression: str
    router_probability: float
    result_text: str | None
    declined_reason: str | None
    in_prompt: bool
    result_start: int
    result_end: int

    @property
    def spliced(self) -> bool:
        return self.result_text is not None

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "expression": self.expression,
                "router_probability": self.router_probability, "result_text": self.result_text,
                "declined_reason": self.declined_reason, "in_prompt": self.in_prompt,
                "result_start": self.result_start, "result_end": self.result_end}


@dataclass
class HandoffResult:
    """Generation with hand-offs.

    text: the continuation (decoded ids after the prompt, spliced results included). ids: prompt + continuation.
    handoffs: every hand-off, in order. steps: the generation steps (the model's own tokens, each with its routing and
    what replaced it). stop_reason: "eos" or "max_new_tokens". rounds: generate calls made (1 for the one-pass splice;
    the multi-round baseline makes one more per hand-off).
    """

    text: str
    ids: list[int]
    prompt_length: int
    handoffs: list[Handoff]
    steps: list[GenerationStep] = field(default_factory=list)
    stop_reason: str = "max_new_tokens"
    trigger: HandoffTrigger = field(default_factory=HandoffTrigger)
    rounds: int = 1

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.prompt_length:]


def declined_marker(reason: str | None) -> str:
    """What is spliced after the '=' when the expert declines: the reason in brackets, never a number.
    "division by zero" -> "[undefined: division by zero]"; any other reason r -> "[not computed: r]"."""
    reason = reason or "no reason given"
    return f"[undefined: {reason}]" if "division by zero" in reason else f"[not computed: {reason}]"


def encode_prompt(model: PiMoELM, prompt: str | Sequence[int] | torch.Tensor) -> list[int]:
    """Prompt ids exactly as `PiMoELM.generate` builds them: text becomes EOS + its bytes (every training document
    follows an EOS); ids are taken as given. ValueError for an empty prompt or an id outside the vocabulary."""
    tokenizer = model.tokenizer
    if isinstance(prompt, str):
        ids = [tokenizer.eos_id, *tokenizer.encode(prompt)]
    elif isinstance(prompt, torch.Tensor):
        ids = [int(t) for t in prompt.reshape(-1).tolist()]
    else:
        ids = [int(t) for t in prompt]
    if not ids:
        raise ValueError("prompt is empty: give text or at least one token id")
    bad = [t for t in ids if not 0 <= t < model.config.vocab_size]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {model.config.vocab_size})")
    return ids


def _document_text(model: PiMoELM, ids: Sequence[int], end: int) -> str:
    """Text of ids[:end] from the last special token (a document boundary) on: an expression never spans documents."""
    start = end
    num_bytes = model.tokenizer.num_bytes
    while start > 0 and ids[start - 1] < num_bytes:
        start -= 1
    return model.tokenizer.decode(ids[start:end])


def _check_max_new_tokens(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {value!r}")


class _Session:
    """State of one generation with hand-offs: the model step, the trigger and the log.

    `step` remembers the ids of its last call: `generate_tokens` calls the hook right after the step on the sequence
    ending with the new token, so at hook time those ids are the text so far.
    """

    def __init__(self, model: PiMoELM, expert: ComputationExpert, trigger: HandoffTrigger,
                 routing: RoutingOptions | None, seal_results: bool) -> None:
        self.model, self.expert, self.trigger = model, expert, trigger
        self.routing = routing
        self.seal_results = seal_results
        self.handoffs: list[Handoff] = []
        self.last_ids: list[int] = []
        self.primed: tuple[list[int], StepOutput] | None = None
        self.sealed_length: int | None = None  # len(ids) right after the last splice
        self.model_step = model.stepper(routing)  # KV-cached; a splice reads only itself

    def step(self, ids: list[int]) -> StepOutput:
        self.last_ids = ids
        if self.primed is not None and self.primed[0] == ids:
            out = self.primed[1]
        else:
            out = self.model_step(ids)
        self.primed = None
        if self.seal_results and len(ids) == self.sealed_length:
            # NOTE: the expert's result is a complete number. The demo model never saw numbers this long and glues
            # digits onto a short one ("15*20=300" -> "3000"), so the token after a splice may not extend it.
            logits = out.logits.clone()
            logits[_NUMBER_CONTINUATION_IDS] = -math.inf
            out = StepOutput(logits=logits, routing=out.routing)
        return out

    def new_request(self) -> None:
        """Forget the KV cache, as a fresh call to a model server would: the next step re-reads the whole text."""
        self.model_step = self.model.stepper(self.routing)

    def decide(self, ids: list[int], position: int, routing: TokenRouting, in_prompt: bool) -> list[int] | None:
        """The tokens that replace ids[position] ('=' + result) when the trigger fires and the expert computes, else
        None. Every firing is logged, declined ones too."""
        if ids[position] != EQUALS_ID:
            return None
        probs = torch.tensor(routing.probs)  # (L, E)
        if not bool(self.trigger.router_fires(probs, routing.expert_types)):
            return None
        extraction = extract_expression(_document_text(self.model, ids, position + 1))
        if extraction is None:
            return None
        result = self.expert.evaluate(extraction.computable)
        result_ids = self.model.tokenizer.encode(result.text if result.ok else declined_marker(result.reason))
        self.handoffs.append(Handoff(
            position=position, expression=extraction.expression,
            router_probability=float(self.trigger.computation_probability(probs, routing.expert_types)),
            result_text=result.text if result.ok else None, declined_reason=result.reason, in_prompt=in_prompt,
            result_start=position + 1, result_end=position + 1 + len(result_ids),
        ))
        self.sealed_length = position + 1 + len(result_ids)
        return [EQUALS_ID, *result_ids]

    def on_token(self, position: int, token_id: int, routing: TokenRouting) -> list[int] | None:
        assert len(self.last_ids) == position + 1 and self.last_ids[position] == token_id
        return self.decide(self.last_ids, position, routing, in_prompt=False)

    def start(self, prompt_ids: list[int]) -> list[int]:
        """Route the prompt's last token (one model step, reused by the first generation step when nothing is
        spliced) and hand off if it is a '=' that asks for a computation. Returns the ids to generate from."""
        ids = list(prompt_ids)
        out = self.model_step(ids)
        splice = self.decide(ids, len(ids) - 1, out.routing, in_prompt=True)
        if splice is None:
            self.primed = (ids, out)
            return ids
        return ids[:-1] + splice


def _generate(session: _Session, ids: list[int], budget: int, sampling_temperature: float,
              sampling_top_k: int | None, seed: int | None, stop_at_eos: bool, on_token: OnToken) -> GenerationResult:
    tokenizer = session.model.tokenizer
    return generate_tokens(session.step, ids, tokenizer, max_new_tokens=max(0, budget),
                           sampling_temperature=sampling_temperature, sampling_top_k=sampling_top_k, seed=seed, stop_at_eos=stop_at_eos, on_token=on_token,
                           banned_ids=(tokenizer.pad_id, tokenizer.bos_id))


def _prepare(model: PiMoELM, prompt: Any, expert: ComputationExpert | None, max_new_tokens: int, threshold: float,
             layer: int | str, routing: RoutingOptions | None, seal_results: bool) -> tuple[_Session, list[int]]:
    _check_max_new_tokens(max_new_tokens)
    trigger = HandoffTrigger(threshold=threshold, layer=layer)
    trigger.check_model(model)
    prompt_ids = encode_prompt(model, prompt)
    session = _Session(model, expert or ComputationExpert(), trigger, routing, bool(seal_results))
    return session, prompt_ids


@torch.no_grad()
def generate_with_computation(
    model: PiMoELM,
    prompt: str | Sequence[int] | torch.Tensor,
    expert: ComputationExpert | None = None,
    max_new_tokens: int = 64,
    threshold: float = DEFAULT_THRESHOLD,
    layer: int | str = DEFAULT_LAYER,
    *,
    sampling_temperature: float = 0.0,
    sampling_top_k: int | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    routing: RoutingOptions | None = None,
    seal_results: bool = True,
) -> HandoffResult:
    """Generate like `PiMoELM.generate`, handing computations to the exact expert in the same decoding pass.

    The generation options mean what they mean in `PiMoELM.generate`. max_new_tokens counts spliced result tokens
    too (a splice is never cut, so it can take the count past the limit). threshold / layer: see `HandoffTrigger`.
    seal_results: the token right after a spliced result may not be a digit, '.' or '/', so the model cannot extend
    the exact number (False lets it, as an ablation).
    """
    session, prompt_ids = _prepare(model, prompt, expert, max_new_tokens, threshold, layer, routing, seal_results)
    with evaluating(model):
        ids = session.start(prompt_ids) if max_new_tokens else prompt_ids
        budget = max_new_tokens - (len(ids) - len(prompt_ids))
        out = _generate(session, ids, budget, sampling_temperature, sampling_top_k, seed, stop_at_eos, session.on_token)
    return HandoffResult(text=model.tokenizer.decode(out.ids[len(prompt_ids):]), ids=out.ids,
                         prompt_length=len(prompt_ids), handoffs=session.handoffs, steps=out.steps,
                         stop_reason=out.stop_reason, trigger=session.trigger, rounds=1)


class _ToolCall(Exception):
    """Internal: the multi-round baseline stops generating at a hand-off and calls the expert from outside."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__("tool call")
        self.ids = ids


@torch.no_grad()
def generate_multi_round(
    model: PiMoELM,
    prompt: str | Sequence[int] | torch.Tensor,
    expert: ComputationExpert | None = None,
    max_new_tokens: int = 64,
    threshold: float = DEFAULT_THRESHOLD,
    layer: int | str = DEFAULT_LAYER,
    *,
    sampling_temperature: float = 0.0,
    sampling_top_k: int | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    routing: RoutingOptions | None = None,
    seal_results: bool = True,
) -> HandoffResult:
    """The multi-round tool-call baseline: generation stops where the same trigger fires, the expert is called as an
    external tool, and a new generate call re-reads prompt + partial output + result from scratch before continuing.

    Same trigger, expert and options as `generate_with_computation`, so the two differ only in how the result gets
    back into the model. A sampled run reseeds every round with `seed`, so it is not the same sample as one pass.
    """
    session, prompt_ids = _prepare(model, prompt, expert, max_new_tokens, threshold, layer, routing, seal_results)

    steps: list[GenerationStep] = []  # across rounds: a round cut short by a tool call returns no result record

    def stop_for_tool(position: int, token_id: int, routing: TokenRouting) -> None:
        handed_off = len(session.handoffs)
        splice = session.on_token(position, token_id, routing)
        steps.append(GenerationStep(position, token_id, routing, splice))
        if len(session.handoffs) > handed_off:
            raise _ToolCall(session.last_ids[:position] + (splice if splice is not None else [token_id]))

    rounds = 1
    with evaluating(model):
        ids = session.start(prompt_ids) if max_new_tokens else prompt_ids
        if session.handoffs:
            rounds += 1  # the first round read the prompt, stopped at its '=' and called the tool
            session.new_request()
        while True:
            budget = max_new_tokens - (len(ids) - len(prompt_ids))
            try:
                out = _generate(session, ids, budget, sampling_temperature, sampling_top_k, seed, stop_at_eos, stop_for_tool)
                break
            except _ToolCall as call:
                ids = call.ids
                rounds += 1
                session.new_request()
    return HandoffResult(text=model.tokenizer.decode(out.ids[len(prompt_ids):]), ids=out.ids,
                         prompt_length=len(prompt_ids), handoffs=session.handoffs, steps=steps,
                         stop_reason=out.stop_reason, trigger=session.trigger, rounds=rounds)


# ---------------------------------------------------------------------------------------------------------------------
# Teacher forcing: where the trigger fires on a finished reference text, for precision and recall.


@torch.no_grad()
def route_positions(model: PiMoELM, ids: Sequence[int], positions: Sequence[int],
                    routing: RoutingOptions | None = None) -> torch.Tensor:
    """Router probabilities (L, P, E) of the tokens at `positions` of `ids`, each seen exactly as generation sees it:
    with the last W = max_seq_len tokens up to and including it (the sliding window of `PiMoELM.step`).

    Positions inside the first window share one forward pass; each later position gets its own window, all of them
    in one batched pass.
    """
    window = model.config.max_seq_len
    ids_t = torch.tensor(list(ids), dtype=torch.long, device=model.device)
    pos = torch.tensor(list(positions), dtype=torch.long)
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= len(ids_t)):
        raise ValueError(f"positions must lie in [0, {len(ids_t)}), got {pos.tolist()}")
    num_layers, num_experts = model.config.num_layers, model.config.moe.num_experts
    probs = torch.zeros(num_layers, pos.numel(), num_experts)
    with evaluating(model):
        early = pos < window
        if bool(early.any()):
            first = ids_t[: min(len(ids_t), window)].unsqueeze(0)  # (1, min(N, W))
            out = model.forward(first, options=routing, return_routing_info=True)
            layer_probs = torch.stack([r.probs.float().cpu() for r in out.routing])  # (L, min(N, W), E)
            probs[:, early] = layer_probs[:, pos[early]]
        late = ~early
        if bool(late.any()):
            windows = ids_t.unfold(0, window, 1)[pos[late].to(ids_t.device) - window + 1]  # (P_late, W)
            out = model.forward(windows, options=routing, return_routing_info=True)
            layer_probs = torch.stack([r.probs.float().cpu().view(len(windows), window, -1)[:, -1]
                                       for r in out.routing])  # (L, P_late, E)
            probs[:, late] = layer_probs
    return probs


def _byte_offsets(text: str) -> list[int]:
    """Token position (in EOS + bytes) of each character of `text`."""
    offsets, position = [], 1
    for char in text:
        offsets.append(position)
        position += len(char.encode("utf-8", "surrogatepass"))
    return offsets


def label_positions(text: str) -> list[int]:
    """The hand-off labels of a reference text: token positions (in EOS + its bytes) of every '=' that ends an
    arithmetic expression, from `find_expressions`."""
    offsets = _byte_offsets(text)
    return [offsets[found.equals] for found in find_expressions(text) if found.equals is not None]


@dataclass(frozen=True)
class TriggerCandidate:
    """A lone '=' of a reference text and what each part of the trigger says about it.

    position: token index in EOS + the text's bytes. char_offset: index of the '=' in the text. probs: (L, E) router
    probabilities of that token. expression: what `extract_expression` finds ending there (text up to the '='), or
    None.
    """

    position: int
    char_offset: int
    probs: torch.Tensor
    expression: str | None


def trigger_candidates(model: PiMoELM, text: str, routing: RoutingOptions | None = None) -> list[TriggerCandidate]:
    """Every '=' of `text` with its teacher-forced routing (the model reads EOS + text once, as during generation)
    and the causal extraction (only the text up to the '=', as the trigger sees it while generating)."""
    if not isinstance(text, str) or not text:
        raise ValueError("trigger_candidates needs a non-empty string")
    char_offsets = [i for i, c in enumerate(text) if c == "="]
    if not char_offsets:
        return []
    byte_offsets = _byte_offsets(text)
    positions = [byte_offsets[i] for i in char_offsets]
    ids = encode_prompt(model, text)
    probs = route_positions(model, ids, positions, routing)  # (L, P, E)
    out = []
    for index, (char_offset, position) in enumerate(zip(char_offsets, positions, strict=True)):
        extraction = extract_expression(text[: char_offset + 1])
        out.append(TriggerCandidate(position=position, char_offset=char_offset, probs=probs[:, index],
                                    expression=extraction.expression if extraction is not None else None))
    return out


def handoff_positions_teacher_forced(model: PiMoELM, text: str, threshold: float = DEFAULT_THRESHOLD,
                                     layer: int | str = DEFAULT_LAYER,
                                     routing: RoutingOptions | None = None) -> list[int]:
    """Token positions (in EOS + the text's bytes) where the hand-off trigger fires on a finished text.

    One teacher-forced read of the text: the same trigger as `generate_with_computation` (a '=', routed to
    computation, an expression extracted), evaluated at every '=' without generating. Compare with
    `label_positions(text)` for precision and recall.
    """
    trigger = HandoffTrigger(threshold=threshold, layer=layer)
    trigger.check_model(model)
    candidates = trigger_candidates(model, text, routing)
    if not candidates:
        return []
    fires = trigger.router_fires(torch.stack([c.probs for c in candidates], dim=1), model.expert_types)  # (P,)
    return [c.position for c, fired in zip(candidates, fires.tolist(), strict=True)
            if fired and c.expression is not None]
