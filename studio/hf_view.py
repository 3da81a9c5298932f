"""What the routing lab shows for a Hugging Face MoE checkpoint, computed from engine calls (no streamlit here).

Legend: L MoE layers, T tokens, E experts, K experts per token, N new tokens.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pimoe.hf.model import HFMoEModel, Trace
from pimoe.hf.specialization import (
    class_expert_share,
    classify_token,
    coactivation,
    token_texts,
    vocabulary_expert_share,
)
from pimoe.hf.summary import summarize_trace

__all__ = ["Counterfactual", "HFLabView", "about_line", "counterfactual", "lab_ids", "lab_view", "model_name"]

MAX_LAB_TOKENS = 256


def lab_ids(model: HFMoEModel, text: str) -> torch.Tensor:
    """(1, S) ids of the lab's input, S <= MAX_LAB_TOKENS: the checkpoint's tokenizer on the text, or, for a folder
    without one, the text read as token ids (integers separated by spaces or commas)."""
    if model.tokenizer is not None:
        return model.encode(text)[:, :MAX_LAB_TOKENS]
    try:
        return model.parse_ids(text, MAX_LAB_TOKENS)
    except ValueError as error:
        raise ValueError(f"this model has no tokenizer: {error}") from error


def _decode(model: HFMoEModel, ids: torch.Tensor) -> str:
    return model.tokenizer.decode(ids) if model.tokenizer is not None else " ".join(map(str, ids.tolist()))


def model_name(model: HFMoEModel) -> str:
    """A folder's own name (its full path says nothing to a reader of the figure), or the hub id."""
    path = Path(model.source)
    return path.name if path.is_dir() else model.source


def about_line(model: HFMoEModel) -> str:
    """'model · device · dtype · date' for every figure."""
    dtype = str(model.dtype).removeprefix("torch.")
    return f"{model_name(model)} ({model.family.display_name}) · {model.device} · {dtype} · {dt.date.today().isoformat()}"


@dataclass
class HFLabView:
    """The checkpoint's own routing of one text, ready for the figure builders."""

    tokens: list[str]
    classes: list[str]
    layer_ids: list[int]
    chosen: np.ndarray  # (L, T, K)
    load: np.ndarray  # (L, E) shares
    max_violation: list[float]
    entropy: list[float]
    coactivation: list[np.ndarray]  # L of (E, E)
    class_share: list[np.ndarray]  # L of (C, E)
    vocabulary: list[tuple[list[str], np.ndarray, list[int]]]  # L of (entries, (U, E) shares, counts), U <= MAX_VOCAB
    num_experts: int
    top_k: int
    about: str


def lab_view(model: HFMoEModel, text: str) -> HFLabView:
    """Route `text` (first MAX_LAB_TOKENS tokens, `lab_ids`) under the checkpoint's own routing."""
    ids = lab_ids(model, text)
    trace = model.trace(ids)
    tokens = token_texts(model.tokenizer, ids)
    classes = [classify_token(t) for t in tokens]
    summaries = summarize_trace(trace)
    return HFLabView(
        tokens=tokens, classes=classes, layer_ids=trace.layer_ids,
        chosen=np.stack([info.expert_indices.cpu().numpy() for info in trace.routing]),
        load=np.array([s.load for s in summaries]), max_violation=[s.max_violation for s in summaries],
        entropy=[s.entropy for s in summaries],
        coactivation=[coactivation(info).cpu().numpy() for info in trace.routing],
        class_share=[class_expert_share(info, classes).cpu().numpy() for info in trace.routing],
        vocabulary=[_vocabulary(model, info, ids) for info in trace.routing],
        num_experts=model.num_experts, top_k=model.top_k, about=about_line(model))


MAX_VOCAB = 30


def _vocabulary(model: HFMoEModel, info, ids: torch.Tensor) -> tuple[list[str], np.ndarray, list[int]]:
    entries, counts, share = vocabulary_expert_share(info, ids)
    entries, counts, share = entries[:MAX_VOCAB], counts[:MAX_VOCAB], share[:MAX_VOCAB]
    return token_texts(model.tokenizer, entries.cpu()), share.cpu().numpy(), counts.tolist()


@dataclass
class Counterfactual:
    """The own continuation beside the edited one. tokens / logprob_delta: the own continuation's N tokens and, per
    token, log p under the edited routing minus log p under the own. differing: (L, S + N) experts changed per token
    on the own sequence. own_text / edited_text: the two continuations."""

    own_text: str
    edited_text: str
    tokens: list[str]
    logprob_delta: np.ndarray
    all_tokens: list[str]
    differing: np.ndarray
    layer_ids: list[int]
    top_k: int
    about: str


def counterfactual(model: HFMoEModel, text: str, max_new_tokens: int, **edits) -> Counterfactual:
    """Greedy continuations of `text` (`lab_ids`) under the checkpoint's routing and under `edits` (trace's knobs)."""
    ids = lab_ids(model, text)
    own = model.generate(ids, max_new_tokens=max_new_tokens)
    edited = model.generate(ids, max_new_tokens=max_new_tokens, **edits)
    prompt = ids.shape[1]
    edited_on_own = model.trace(own.sequences, **edits)
    delta = (edited_on_own.token_log_probs() - own.trace.token_log_probs())[0, prompt - 1 :]
    return Counterfactual(
        own_text=_decode(model, own.new_tokens[0]), edited_text=_decode(model, edited.new_tokens[0]),
        tokens=token_texts(model.tokenizer, own.new_tokens), logprob_delta=delta.cpu().numpy(),
        all_tokens=token_texts(model.tokenizer, own.sequences), differing=_differing(own.trace, edited_on_own),
        layer_ids=own.trace.layer_ids, top_k=max(own.trace.routing[0].top_k, edited_on_own.routing[0].top_k),
        about=about_line(model))


def _differing(own: Trace, edited: Trace) -> np.ndarray:
    """(L, T): per layer and token, how many experts of the longer selection the other one lacks."""
    rows = []
    for a, b in zip(own.routing, edited.routing, strict=True):
        num_experts = a.num_experts
        chosen_a = torch.zeros(a.num_tokens, num_experts).scatter_(1, a.expert_indices.cpu(), 1.0)
        chosen_b = torch.zeros(b.num_tokens, num_experts).scatter_(1, b.expert_indices.cpu(), 1.0)
        rows.append(torch.maximum((chosen_a - chosen_b).clamp_min(0).sum(-1),
                                  (chosen_b - chosen_a).clamp_min(0).sum(-1)).numpy())
    return np.stack(rows)
