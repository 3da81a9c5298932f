"""Figure builders for a Hugging Face MoE checkpoint's routing: data in, `go.Figure` out, no streamlit.

Legend: L MoE layers, T tokens, E experts, K experts per token, C token classes.

Every builder takes `about`, the line that says which model, device, dtype and date the numbers come from, and prints it
under the title, so a screenshot of any figure still says what it shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

__all__ = [
    "build_class_specialization_figure",
    "build_coactivation_figure",
    "build_expert_path_figure",
    "build_layer_load_figure",
    "build_logprob_change_figure",
    "build_routing_difference_figure",
    "build_vocabulary_specialization_figure",
    "expert_palette",
]

_FONT = {"size": 13}
_MARGIN = {"l": 10, "r": 10, "t": 70, "b": 10}
MAX_CELL_TEXT = 400
# 20 distinguishable colours; experts beyond that repeat them (top-1 also shows on hover and as cell text).
_PALETTE = ("#4f46e5", "#dc2626", "#16a34a", "#ea580c", "#0891b2", "#c026d3", "#ca8a04", "#64748b", "#0d9488",
            "#9333ea", "#be123c", "#65a30d", "#0369a1", "#a16207", "#7c3aed", "#15803d", "#b91c1c", "#1d4ed8",
            "#d97706", "#475569")


def expert_palette(num_experts: int) -> list[str]:
    return [_PALETTE[e % len(_PALETTE)] for e in range(num_experts)]


def _layout(fig: go.Figure, title: str, about: str, height: int, **extra) -> go.Figure:
    text = f"{title}<br><sup>{about}</sup>"
    fig.update_layout(title={"text": text, "x": 0.0, "xanchor": "left"}, height=height, margin=_MARGIN, font=_FONT,
                      **extra)
    return fig


def _token_axis(tokens: Sequence[str]) -> dict:
    return {"tickmode": "array", "tickvals": list(range(len(tokens))), "ticktext": [t.replace(" ", "␣")
                                                                                     for t in tokens],
            "tickangle": -60, "title": {"text": "token"}}


def build_expert_path_figure(tokens: Sequence[str], chosen, layer_ids: Sequence[int], num_experts: int, *,
                             about: str) -> go.Figure:
    """Layers along y, the tokenizer's tokens along x; colour = the token's top-1 expert at that layer, cell text =
    all K chosen experts. A column is one token's path through the model.

    chosen: (L, T, K) expert indices, best first.
    """
    chosen = np.asarray(chosen)
    num_layers, num_tokens, _ = chosen.shape
    if len(tokens) != num_tokens or len(layer_ids) != num_layers:
        raise ValueError(f"chosen is {chosen.shape} but got {len(tokens)} tokens and {len(layer_ids)} layers")
    top1 = chosen[:, :, 0].astype(float)
    palette = expert_palette(num_experts)
    # a stepped colourscale: expert e gets its colour over [e/E, (e+1)/E)
    scale = []
    for e, colour in enumerate(palette):
        scale += [[e / num_experts, colour], [(e + 1) / num_experts, colour]]
    labels = np.array([[",".join(map(str, chosen[layer, t])) for t in range(num_tokens)]
                       for layer in range(num_layers)])
    heatmap = go.Heatmap(z=top1, x=list(range(num_tokens)), y=[f"layer {i}" for i in layer_ids], zmin=-0.5,
                         zmax=num_experts - 0.5, colorscale=scale, showscale=False, customdata=labels,
                         hovertemplate="token %{x}<br>%{y}<br>experts %{customdata}<extra></extra>",
                         name="top-1 expert")
    if top1.size <= MAX_CELL_TEXT:
        heatmap.update(text=labels, texttemplate="%{text}", textfont={"size": 10, "color": "white"})
    fig = go.Figure(heatmap)
    fig.update_xaxes(**_token_axis(tokens))
    fig.update_yaxes(title={"text": "MoE layer"}, autorange="reversed")
    return _layout(fig, "Chosen experts per layer and token (colour: top-1 expert)", about, 140 + 28 * num_layers)


def build_layer_load_figure(load, max_violation: Sequence[float], layer_ids: Sequence[int], *,
                            about: str) -> go.Figure:
    """Expert load per layer against uniform: colour = share / (1/E), 1 = uniform; y labels carry each layer's MaxVio.

    load: (L, E) share of each layer's assignments per expert (rows sum to 1).
    """
    load = np.asarray(load, dtype=np.float64)
    num_layers, num_experts = load.shape
    ratio = load * num_experts
    fig = go.Figure(go.Heatmap(
        z=ratio, x=[f"E{e}" for e in range(num_experts)],
        y=[f"layer {i} · MaxVio {v:.2f}" for i, v in zip(layer_ids, max_violation, strict=True)],
        colorscale="RdBu_r", zmid=1.0, zmin=0.0, colorbar={"title": {"text": "load ÷ uniform"}, "thickness": 12},
        customdata=load, hovertemplate="%{y}<br>%{x}: share %{customdata:.3f} (%{z:.2f}× uniform)<extra></extra>",
        name="load"))
    fig.update_xaxes(title={"text": "expert"})
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Expert load per layer against uniform (1/E = {1 / num_experts:.3f})", about,
                   140 + 28 * num_layers)


def build_coactivation_figure(matrix, layer: int, *, about: str) -> go.Figure:
    """(E, E) share of tokens that chose both experts i and j at one layer; the diagonal is each expert's share."""
    matrix = np.asarray(matrix, dtype=np.float64)
    names = [f"E{e}" for e in range(matrix.shape[0])]
    fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, colorscale="Viridis", zmin=0.0,
                               colorbar={"title": {"text": "share"}, "thickness": 12},
                               hovertemplate="%{y} with %{x}: %{z:.3f} of tokens<extra></extra>", name="co-activation"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Expert co-activation, layer {layer}", about, 460)


def build_class_specialization_figure(share, classes: Sequence[str], chance: float, layer: int, *,
                                      about: str) -> go.Figure:
    """Per token class, the share of its tokens each expert received (one bar group per expert), with the K/E chance
    line. share: (C, E); NaN rows (absent classes) are left out."""
    share = np.asarray(share, dtype=np.float64)
    fig = go.Figure()
    experts = [f"E{e}" for e in range(share.shape[1])]
    for row, name in zip(share, classes, strict=True):
        if np.isnan(row).all():
            continue
        fig.add_trace(go.Bar(x=experts, y=row, name=name,
                             hovertemplate=f"{name}: %{{x}} took %{{y:.2f}} of them<extra></extra>"))
    fig.add_hline(y=chance, line={"dash": "dash", "color": "#111827"}, annotation_text=f"chance K/E = {chance:.3f}")
    fig.update_xaxes(title={"text": "expert"})
    fig.update_yaxes(title={"text": "share of the class's tokens"}, rangemode="tozero")
    return _layout(fig, f"Expert specialisation by token class, layer {layer}", about, 380, barmode="group")


def build_vocabulary_specialization_figure(tokens: Sequence[str], share, counts: Sequence[int], chance: float,
                                           layer: int, *, about: str) -> go.Figure:
    """Per repeated vocabulary entry (most frequent first): the share of its occurrences sent to its favourite expert,
    labelled with that expert, against the K/E chance line. share: (U, E)."""
    share = np.asarray(share, dtype=np.float64)
    if share.ndim != 2:  # NOTE: a (0, E) share stays 2-D: numpy cannot infer -1 in reshape(0, -1)
        share = share.reshape(len(tokens), -1)
    best = share.argmax(axis=1) if len(tokens) else np.zeros(0, dtype=int)
    best_share = share.max(axis=1) if len(tokens) else np.zeros(0)
    palette = expert_palette(share.shape[1])
    labels = [t.replace(" ", "␣") for t in tokens]
    fig = go.Figure(go.Bar(x=list(range(len(tokens))), y=best_share, text=[f"E{e}" for e in best],
                           marker_color=[palette[e] for e in best], customdata=np.stack([labels, list(counts)], -1)
                           if len(tokens) else None,
                           hovertemplate="%{customdata[0]} (×%{customdata[1]}): %{y:.2f} to %{text}<extra></extra>",
                           name="favourite expert"))
    fig.add_hline(y=chance, line={"dash": "dash", "color": "#111827"}, annotation_text=f"chance K/E = {chance:.3f}")
    fig.update_xaxes(**_token_axis(labels))
    fig.update_yaxes(title={"text": "share to its favourite expert"}, range=[0, 1.05])
    if not len(tokens):
        fig.add_annotation(text="No token occurs twice in this text: a longer text shows which experts each repeated "
                                "token favours", x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    return _layout(fig, f"Expert specialisation by vocabulary (tokens seen twice or more), layer {layer}", about, 380)


def build_logprob_change_figure(tokens: Sequence[str], delta, *, about: str) -> go.Figure:
    """Per token of the checkpoint's own continuation: log p under the edited routing minus log p under its own."""
    delta = np.asarray(delta, dtype=np.float64)
    if len(tokens) != len(delta):
        raise ValueError(f"{len(tokens)} tokens but {len(delta)} log-probability changes")
    colours = ["#dc2626" if d < 0 else "#16a34a" for d in delta]
    fig = go.Figure(go.Bar(x=list(range(len(tokens))), y=delta, marker_color=colours, customdata=list(tokens),
                           hovertemplate="%{customdata}: Δ log p = %{y:.3f}<extra></extra>", name="Δ log p"))
    fig.update_xaxes(**_token_axis(tokens))
    fig.update_yaxes(title={"text": "Δ log p (edited − own)"})
    return _layout(fig, "How the edit changes the likelihood of the model's own continuation", about, 360)


def build_routing_difference_figure(tokens: Sequence[str], differing, layer_ids: Sequence[int], top_k: int, *,
                                    about: str) -> go.Figure:
    """(L, T) how many of each token's chosen experts differ between own and edited routing (0 .. max K)."""
    differing = np.asarray(differing, dtype=np.float64)
    fig = go.Figure(go.Heatmap(z=differing, x=list(range(len(tokens))), y=[f"layer {i}" for i in layer_ids],
                               colorscale="Reds", zmin=0, zmax=max(top_k, 1),
                               colorbar={"title": {"text": "experts changed"}, "thickness": 12},
                               hovertemplate="token %{x}, %{y}: %{z:.0f} experts changed<extra></extra>",
                               name="routing difference"))
    fig.update_xaxes(**_token_axis(tokens))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Routing difference: experts changed by the edit", about, 140 + 28 * len(layer_ids))
