"""HFMoEModel: a transformers causal LM whose MoE blocks run on PiMoE, traced and generated under routing edits.

Legend: B batch, S sequence, V vocabulary, N new tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pimoe.hf.block import PiMoEBlock, RoutingSession
from pimoe.hf.edits import ExpertSpec, RoutingEdits
from pimoe.hf.families import Family
from pimoe.layer.routing import RoutingInfo
from pimoe.turns import turn_point

__all__ = ["Generation", "HFMoEModel", "Trace"]


@dataclass
class Trace:
    """One forward pass. logits: (B, S, V) float32. routing: one RoutingInfo per MoE layer (tokens in B * S order),
    aligned with layer_ids. edits: the knobs it ran under."""

    input_ids: torch.Tensor
    logits: torch.Tensor
    routing: list[RoutingInfo]
    layer_ids: list[int]
    edits: RoutingEdits

    def token_log_probs(self) -> torch.Tensor:
        """(B, S - 1): log p(input_ids[:, t] | input_ids[:, :t]) for t >= 1."""
        log_probs = torch.log_softmax(self.logits[:, :-1].float(), dim=-1)
        return log_probs.gather(-1, self.input_ids[:, 1:].unsqueeze(-1).to(log_probs.device)).squeeze(-1)


@dataclass
class Generation:
    """A continuation. sequences: (B, S + N). prompt_length: S. step_routing[n]: the per-layer RoutingInfo of the
    n-th decoding forward (n = 0 routes the prompt, n >= 1 the token generated at step n - 1). trace: one pass over
    the whole sequence under the same edits, so routing and log-probs are there for every token, generated or not."""

    sequences: torch.Tensor
    prompt_length: int
    step_routing: list[list[RoutingInfo]]
    trace: Trace

    @property
    def routing(self) -> list[RoutingInfo]:
        return self.trace.routing

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]


class HFMoEModel:
    """The loaded checkpoint. `model` is the transformers model (its MoE blocks replaced by PiMoEBlock), `blocks` the
    PiMoE blocks in layer order, `tokenizer` the checkpoint's tokenizer or None."""

    def __init__(self, model: nn.Module, blocks: list[PiMoEBlock], session: RoutingSession, family: Family,
                 tokenizer=None, source: str = "") -> None:
        self.model = model
        self.blocks = blocks
        self.session = session
        self.family = family
        self.tokenizer = tokenizer
        self.source = source
        # One model object may serve several dashboard users: a call holds the session for its whole pass.
        self._lock = threading.Lock()

    @property
    def config(self):
        """The family's config: the language model's, where a multimodal checkpoint loaded whole."""
        return self.family.own_config(self.model.config)

    @property
    def moe_layer_ids(self) -> list[int]:
        return [block.layer_id for block in self.blocks]

    @property
    def num_experts(self) -> int:
        return self.blocks[0].num_experts

    @property
    def top_k(self) -> int:
        return self.blocks[0].router.rule.top_k

    @property
    def max_top_k(self) -> int:
        """The most experts a token can reach: all of them, or those of its `topk_groups` groups (DeepSeek-V3)."""
        rule = self.blocks[0].router.rule
        return self.num_experts * rule.topk_groups // rule.num_groups

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def num_zero_experts(self) -> int:
        """How many of the last experts compute nothing, returning their input (LongCat-Flash's), 0 elsewhere."""
        return self.family.zero_experts(self.config)

    def describe(self) -> str:
        """'Qwen3-MoE · 8 experts top-2 · cpu · float32', for figure titles and logs; zero-computation experts are
        named apart ('8 experts + 4 zero-computation (E8-E11)')."""
        zero = self.num_zero_experts
        experts = f"{self.num_experts} experts" if not zero else \
            (f"{self.num_experts - zero} experts + {zero} zero-computation "
             f"(E{self.num_experts - zero}{f'-E{self.num_experts - 1}' if zero > 1 else ''})")
        return f"{self.family.display_name} · {experts} top-{self.top_k} · {self.device.type} · " \
               f"{str(self.dtype).removeprefix('torch.')}"

    def beyond_trained_positions(self, num_tokens: int) -> str | None:
        """A warning when `num_tokens` exceed the config's `max_position_embeddings` (positions the model was not
        trained on: its routing there says little), else None."""
        limit = getattr(self.config, "max_position_embeddings", None)
        if isinstance(limit, int) and num_tokens > limit:
            return (f"{num_tokens} tokens exceed the model's {limit} positions (max_position_embeddings): routing past "
                    f"position {limit} is outside what it was trained on")
        return None

    def parse_ids(self, text: str, limit: int | None = None) -> torch.Tensor:
        """(1, S) token ids typed as integers separated by spaces or commas (the first `limit`), each checked against
        the vocabulary: for folders without a tokenizer."""
        words = text.replace(",", " ").split()
        vocab = self.model.get_input_embeddings().weight.shape[0]
        # isdecimal, not isdigit: int() refuses superscript digits; 12 digits bound what int() is asked to parse
        if not words or not all(word.isdecimal() and len(word) <= 12 for word in words):
            raise ValueError(f"token ids must be integers below {vocab} separated by spaces or commas")
        ids = [int(word) for word in words[:limit]]
        if max(ids) >= vocab:
            raise ValueError(f"token id {max(ids)} is past the model's vocabulary of {vocab}")
        return torch.tensor([ids], dtype=torch.long)

    def encode(self, text: str) -> torch.Tensor:
        """(1, S) token ids of `text` from the checkpoint's tokenizer."""
        if self.tokenizer is None:
            raise ValueError(f"{self.source or 'this model'} has no tokenizer (no tokenizer files beside its weights): "
                             "save the checkpoint's tokenizer there, or pass token ids")
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        if ids.numel() == 0:
            raise ValueError("the text has no tokens")
        return ids

    def edits(self, *, temperature: float | None = None, top_k: int | None = None, force: ExpertSpec = None,
              ablate: ExpertSpec = None) -> RoutingEdits:
        """Validate knobs against this model (see `pimoe.hf.edits` for the force / ablate forms)."""
        return RoutingEdits.build(temperature=temperature, top_k=top_k, force=force, ablate=ablate,
                                  moe_layer_ids=self.moe_layer_ids, num_experts=self.num_experts,
                                  default_top_k=self.top_k, max_top_k=self.max_top_k)

    @contextmanager
    def _session(self, edits: RoutingEdits) -> Iterator[list]:
        with self._lock:
            self.session.edits, self.session.records = edits, []
            try:
                yield self.session.records
            finally:
                self.session.edits, self.session.records = RoutingEdits(), None

    @torch.inference_mode()
    def trace(self, input_ids: torch.Tensor, *, temperature: float | None = None, top_k: int | None = None,
              force: ExpertSpec = None, ablate: ExpertSpec = None,
              attention_mask: torch.Tensor | None = None) -> Trace:
        """Run (B, S) token ids once under the routing edits; returns logits (B, S, V) and the routing of each layer.

        temperature: divides every MoE router's logits. top_k: experts per token in every MoE layer.
        force / ablate: an expert id, a list, or {decoder layer: id or list} (see `pimoe.hf.edits`): a forced expert
        is always chosen, an ablated one never. Defaults change nothing: the checkpoint's own routing.
        """
        edits = self.edits(temperature=temperature, top_k=top_k, force=force, ablate=ablate)
        input_ids = self._check_ids(input_ids)
        with self._session(edits) as records:
            out = self.model(input_ids=input_ids.to(self.device),
                             attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                             use_cache=False)
        return Trace(input_ids, out.logits.float(), [info for _, info in records], self.moe_layer_ids, edits)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, *, max_new_tokens: int = 20, temperature: float | None = None,
                 top_k: int | None = None, force: ExpertSpec = None, ablate: ExpertSpec = None,
                 do_sample: bool = False, **generate_kwargs) -> Generation:
        """Continue (B, S) ids by `max_new_tokens` under the routing edits, greedy unless do_sample.

        The knobs are those of `trace` (`temperature` and `top_k` are the router's). Sampling settings, which share
        those two names in transformers, go in a `generation_config=GenerationConfig(...)` through generate_kwargs.
        Returns a Generation: the ids, the routing of every decoding step and one trace over the whole sequence.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        edits = self.edits(temperature=temperature, top_k=top_k, force=force, ablate=ablate)
        input_ids = self._check_ids(input_ids)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else self.config.eos_token_id
        stopping = _with_turn_points(generate_kwargs.pop("stopping_criteria", None))
        with self._session(edits) as records:
            sequences = self.model.generate(input_ids.to(self.device), max_new_tokens=max_new_tokens,
                                            do_sample=do_sample, pad_token_id=pad, stopping_criteria=stopping,
                                            **generate_kwargs)
            per_layer = len(self.blocks)
            steps = [[info for _, info in records[i : i + per_layer]] for i in range(0, len(records), per_layer)]
        trace = self.trace(sequences, temperature=temperature, top_k=top_k, force=force, ablate=ablate)
        return Generation(sequences.cpu(), input_ids.shape[1], steps, trace)

    def _check_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64,
                                                                                                         torch.int32):
            raise ValueError("input_ids must be an integer tensor of shape [batch, seq]")
        vocab = self.model.get_input_embeddings().weight.shape[0]
        if input_ids.numel() == 0 or int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
            raise ValueError(f"input_ids must be non-empty ids in [0, {vocab})")
        return input_ids.long()


def _with_turn_points(criteria):
    """The caller's stopping criteria plus one that never stops and marks a turn point after every decoding step
    (pimoe.turns), so a server sharing the device can let other work in between tokens of transformers' own loop."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class TurnPoints(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
            turn_point()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([*(criteria or []), TurnPoints()])
