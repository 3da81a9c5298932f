"""PiMoE-LM: a small decoder-only transformer whose every feed-forward layer is a PiMoE layer.

Legend: B batch, T sequence length (<= max_seq_len), D hidden size, H attention heads, V vocabulary (259 byte tokens),
E experts, K experts per token.

Each block is pre-norm: x + attn(ln1(x)), then x + moe(ln2(x)). The PiMoE layer runs with residual=False because the
block adds the residual itself. The router losses of every layer are summed into `LMOutput.router_loss`, and with
token-type labels (`token_types`) the routers also learn the PiMoE/PiERN routing targets (arXiv 2509.18169).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pimoe.cuda.layer_norm import FastLayerNorm
from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.layer.modes import evaluating
from pimoe.layer.options import RoutingOptions
from pimoe.layer.router import TokenLevelRouter
from pimoe.layer.routing import RoutingInfo
from pimoe.layer.system import PiMoESystem
from pimoe.layer.validation import host_reads_allowed
from pimoe.lm.generation import GenerationResult, StepOutput, TokenRouting, generate_tokens
from pimoe.lm.text import ByteTokenizer, TypeToExpertMapping, tag_ids

__all__ = [
    "CachedStepper", "LMConfig", "LMOutput", "LossBreakdown", "PiMoELM", "TextRouting"]

_TOKENIZER = ByteTokenizer()


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class LMConfig:
    """The language model around the PiMoE layers.

    vocab_size: at least ByteTokenizer.vocab_size (259: 256 bytes + PAD, BOS, EOS).
    max_seq_len: the longest sequence one forward pass takes (learned position embeddings).
    moe: the PiMoE layer used as every block's FFN; its hidden_size is the model width. residual must be False
        because the block adds its own residual around the pre-norm.
    attention_bias: biases on the attention's input and output projections (as GPT-2; False as LLaMA). Their
        gradients are column sums over every token: without them the GPU preset's graphed step is 0.4 ms shorter on
        an H100 (2026-12-07, docs/performance.md), for 0.02% of its parameters.
    """

    vocab_size: int = ByteTokenizer.vocab_size
    max_seq_len: int = 128
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.0
    moe: PiMoEConfig = field(default_factory=lambda: PiMoEConfig(residual=False))
    attention_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "num_layers", "num_heads"):
            _check_positive_int(name, getattr(self, name))
        if self.vocab_size < ByteTokenizer.vocab_size:
            raise ValueError(f"vocab_size must be at least ByteTokenizer.vocab_size={ByteTokenizer.vocab_size}, "
                             f"got {self.vocab_size}")
        if not isinstance(self.attention_bias, bool):
            raise ValueError(f"attention_bias must be true or false, got {self.attention_bias!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if isinstance(self.moe, dict):
            self.moe = PiMoEConfig.from_dict(self.moe)
        if not isinstance(self.moe, PiMoEConfig):
            raise ValueError(f"moe must be a PiMoEConfig, got {type(self.moe).__name__}")
        if self.moe.residual:
            raise ValueError("moe.residual must be False: each block adds its own residual around the PiMoE layer")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden size {self.hidden_size} (moe.hidden_size) must be divisible by "
                             f"num_heads={self.num_heads}")

    @property
    def hidden_size(self) -> int:
        return self.moe.hidden_size

    def resized(self, *, hidden_size: int | None = None, intermediate_size: int | None = None,
                num_layers: int | None = None, num_heads: int | None = None) -> LMConfig:
        """This config with the given sizes replaced (None keeps one): the width lives in the MoE layer's config,
        the experts' base width in its expert config. Validated as a new config."""
        moe = self.moe
        if intermediate_size is not None:
            moe = replace(moe, expert=replace(moe.expert, intermediate_size=intermediate_size))
        if hidden_size is not None:
            moe = replace(moe, hidden_size=hidden_size)
        return replace(self, moe=moe, num_layers=self.num_layers if num_layers is None else num_layers,
                       num_heads=self.num_heads if num_heads is None else num_heads)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["moe"] = self.moe.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LMConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        if not isinstance(values, dict):
            raise ValueError(f"LMConfig must be a dict, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown LMConfig keys {unknown}; known keys are {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("moe"), dict):
            values["moe"] = PiMoEConfig.from_dict(values["moe"])
        return cls(**values)

    @classmethod
    def tiny(cls) -> LMConfig:
        """Test-sized: hidden 32, 2 layers, 4 experts covering every type the default mapping targets."""
        moe = PiMoEConfig(
            hidden_size=32,
            num_experts=4,
            expert_types=("computation", "mathematical", "logical", "language"),
            expert=ExpertConfig(intermediate_size=64),
            router=RouterConfig(top_k=2),
            residual=False,
        )
        return cls(max_seq_len=64, num_layers=2, num_heads=4, moe=moe)

    @classmethod
    def gpu(cls) -> LMConfig:
        """GPU-size: about 70 M parameters (22 M of them in the matrix products one token uses), hidden 512, 6 layers,
        8 heads, the demo's eight typed experts at intermediate 1024, top-2, sequences up to 512. Every GEMM dimension
        is a multiple of 64, as the bf16 grouped GEMMs want. No attention biases: their gradients' column sums cost
        the graphed step 0.4 ms on an H100 (25.91 against 26.39 / 26.31 ms, 2026-12-07, docs/performance.md).
        `python -m pimoe train --device cuda --preset gpu --batch-size 32 --seq-len 512`."""
        moe = PiMoEConfig(
            hidden_size=512,
            num_experts=8,
            expert_types=("reasoning", "computation", "mathematical", "logical", "language", "creative",
                          "analytical", "language"),
            expert=ExpertConfig(intermediate_size=1024),
            router=RouterConfig(top_k=2),
            residual=False,
        )
        return cls(max_seq_len=512, num_layers=6, num_heads=8, moe=moe, attention_bias=False)

    @classmethod
    def demo(cls) -> LMConfig:
        """The shipped model: hidden 96, 2 layers, 8 heads of width 12, 8 experts (the seven types plus a second
        language expert, since about 70% of byte tokens are prose), top-2. Eight narrow heads rather than four wide
        ones (same parameter count): the first router has one attention layer to find out which word a byte belongs
        to; in one run each, eight heads did a little better on new logic sentences (docs/model.md, issue 20)."""
        moe = PiMoEConfig(
            hidden_size=96,
            num_experts=8,
            expert_types=("reasoning", "computation", "mathematical", "logical", "language", "creative",
                          "analytical", "language"),
            expert=ExpertConfig(intermediate_size=192),
            router=RouterConfig(top_k=2),
            residual=False,
        )
        return cls(max_seq_len=128, num_layers=2, num_heads=8, moe=moe)


@dataclass
class LMOutput:
    """What `PiMoELM.forward` returns. Losses are scalars summed over layers, already weighted by RouterConfig.

    logits: (B, T, V). routing: one RoutingInfo per layer when return_routing_info, else None.
    past_key_values: per layer, the keys and values of every token so far, when use_cache.
    """

    logits: torch.Tensor
    routing: list[RoutingInfo] | None
    router_loss: torch.Tensor
    load_balance_loss: torch.Tensor
    z_loss: torch.Tensor
    supervised_loss: torch.Tensor
    past_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class LossBreakdown:
    """`PiMoELM.loss`: total = lm_loss + router loss (load_balance_loss + z_loss + supervised_loss, as the routers
    weighted them).

    Tensors keep their graph, so `breakdown.total.backward()` trains. routing: per layer, when asked for.
    """

    total: torch.Tensor
    lm_loss: torch.Tensor
    load_balance_loss: torch.Tensor
    z_loss: torch.Tensor
    supervised_loss: torch.Tensor
    routing: list[RoutingInfo] | None = None

    def as_floats(self) -> dict[str, float]:
        names = ("total", "lm_loss", "load_balance_loss", "z_loss", "supervised_loss")
        values = torch.stack([getattr(self, name).detach().float().reshape(()) for name in names]).tolist()
        return dict(zip(names, values, strict=True))  # one read back to the host, not five


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention through F.scaled_dot_product_attention."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, T, D). attn_mask: None (plain causal) or (B, 1, T, T) bool, True = may attend.

        past: keys and values (B, H, P, D/H) of the P tokens before x (generation's KV cache). Returns the output and
        the keys and values of all P + T tokens.
        """
        batch, seq, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.num_heads, hidden // self.num_heads).unbind(dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D/H)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, P+T, D/H)
        dropout = self.dropout if self.training else 0.0
        if past is not None and past[0].shape[2] > 0:
            # NOTE: SDPA's is_causal aligns the mask top-left when queries are fewer than keys, which would hide the
            # past from the new tokens; the mask is spelled out instead: new token i sees keys 0 .. P + i.
            prior = past[0].shape[2]
            key_pos = torch.arange(prior + seq, device=x.device)
            query_pos = prior + torch.arange(seq, device=x.device)
            causal = key_pos[None, :] <= query_pos[:, None]  # (T, P+T)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, dropout_p=dropout)
        elif attn_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.proj(out.transpose(1, 2).reshape(batch, seq, hidden)), (k, v)


class Block(nn.Module):
    """Pre-norm transformer block with a PiMoE layer as the FFN."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.ln1 = FastLayerNorm(hidden, autocast_output=True)  # read only by attention's qkv Linear
        self.attn = CausalSelfAttention(hidden, config.num_heads, config.dropout, config.attention_bias)
        self.ln2 = FastLayerNorm(hidden)  # float32 under autocast: the router's gate product stays float32
        self.moe = PiMoESystem(replace(config.moe))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, attention_mask: torch.Tensor | None,
                options: RoutingOptions, allowed_experts: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None, *, pending: torch.Tensor | None = None,
                defer: bool = False) -> tuple:
        """(x after the block, routing, present). The residual adds go into the norms after them
        (`FastLayerNorm.add_forward`, one pass over the float32 stream instead of two): pending is the previous
        block's MoE output not yet added to x, and defer=True returns (x, this block's MoE output, routing, present)
        for the next norm to add."""
        if pending is None:
            normed = self.ln1(x)
        else:
            x, normed = self.ln1.add_forward(x, pending)
        attended, present = self.attn(normed, attn_mask, past)
        x, normed = self.ln2.add_forward(x, self.dropout(attended))
        moe_out, routing = self.moe(normed, attention_mask=attention_mask, return_routing_info=True,
                                    options=options, allowed_experts=allowed_experts)
        if defer:
            return x, self.dropout(moe_out), routing, present
        return x + self.dropout(moe_out), routing, present


@dataclass
class TextRouting:
    """How the model routes one text, for the routing lab.

    tokens: display string of each byte token (see `display_tokens`). token_ids: (N,). token_types: (N,) TokenType ids.
    routing: one RoutingInfo per layer; its per-token fields (probs, expert_indices, ...) are in text order, N rows.
    Texts longer than max_seq_len are cut into consecutive windows of max_seq_len tokens routed as one batch, so
    attention does not reach across a window boundary.
    """

    tokens: list[str]
    token_ids: torch.Tensor
    token_types: torch.Tensor
    routing: list[RoutingInfo]
    expert_types: list[str]
    mapping: TypeToExpertMapping

    def top1_types(self, layer: int) -> list[str]:
        """Expert type of each token's top-1 expert in `layer`."""
        return [self.expert_types[i] for i in self.routing[layer].top1.tolist()]

    def routing_accuracy_per_layer(self) -> list[float]:
        """Routing accuracy of each layer on this text's own token-type labels (NaN where no token has a target)."""
        from pimoe.lm.metrics import layer_routing_accuracies

        return layer_routing_accuracies(self.routing, self.token_types.view(1, -1), self.expert_types, self.mapping)


def display_tokens(text: str) -> list[str]:
    """One display string per UTF-8 byte of `text`: the character on its first byte, '·' on the continuation bytes
    of a multi-byte character; space, newline and tab shown as '␣', '↵', '⇥', other control characters as \\xNN."""
    out: list[str] = []
    special = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
    for char in text:
        num_bytes = len(char.encode("utf-8", "surrogatepass"))
        if char in special:
            shown = special[char]
        elif not char.isprintable():
            shown = f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}"
        else:
            shown = char
        out.append(shown)
        out.extend("·" * (num_bytes - 1))
    return out


class PiMoELM(nn.Module):
    """Decoder-only transformer: token + position embeddings, `num_layers` PiMoE blocks, final norm, LM head."""

    def __init__(self, config: LMConfig | None = None, mapping: TypeToExpertMapping | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else LMConfig()
        cfg = self.config
        self.mapping = mapping if mapping is not None else TypeToExpertMapping()
        self.tokenizer = _TOKENIZER
        self.checkpoint_metadata: dict[str, Any] = {}  # training metadata of a loaded checkpoint
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = FastLayerNorm(cfg.hidden_size, autocast_output=True)  # read only by the LM head
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 scale for embeddings and attention; the experts and router keep the engine's own initialisation.
        for module in (self.tok_emb, self.pos_emb):
            nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        for block in self.blocks:
            for linear in (block.attn.qkv, block.attn.proj):
                nn.init.normal_(linear.weight, std=0.02)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    @property
    def routers(self) -> list[TokenLevelRouter]:
        """The router of each layer, for controllers that adjust temperature, weights or selection biases."""
        return [block.moe.router for block in self.blocks]

    @property
    def expert_types(self) -> list[str]:
        """Type of each expert (the same in every layer)."""
        return list(self.blocks[0].moe.expert_types)

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def set_router_options(self, **options: Any) -> None:
        """Set RouterConfig fields (temperature, load_balance_weight, supervised_weight, ...) on every layer's router
        and in `config.moe.router`, so a saved checkpoint records them. Validated by RouterConfig."""
        self.config.moe.router = replace(self.config.moe.router, **options)
        for router in self.routers:
            router.config = replace(router.config, **options)

    def allowed_experts(self, token_types: torch.Tensor) -> torch.Tensor:
        """(B, T) TokenType ids -> (B, T, E) bool: the experts each token may be routed to under `self.mapping`."""
        return self.mapping.allowed_experts(token_types, self.expert_types)

    def _check_ids(self, input_ids: torch.Tensor, prior: int = 0) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, seq) tensor, got {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        batch, seq = input_ids.shape
        if batch == 0 or seq == 0:
            raise ValueError(f"input_ids is empty: shape {(batch, seq)}")
        if prior + seq > self.config.max_seq_len:
            cached = f" after {prior} cached tokens" if prior else ""
            raise ValueError(f"sequence length {seq}{cached} exceeds max_seq_len={self.config.max_seq_len}")
        if not host_reads_allowed():  # compiled or captured: the range check below would read back to the host
            return
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(f"token id {low if low < 0 else high} is outside the vocabulary "
                             f"[0, {self.config.vocab_size})")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        token_types: torch.Tensor | None = None,
        return_routing_info: bool = False,
        past_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        use_cache: bool = False,
        options: RoutingOptions | None = None,
    ) -> LMOutput:
        """Next-token logits and router losses.

        input_ids: (B, T) token ids, T <= max_seq_len. attention_mask: (B, T), 0 marks padding (not attended to, not
        routed). options: this call's router knobs for every layer (temperature= / top_k= are shorthands).
        token_types: (B, T) TokenType ids (or
        IGNORE_TYPE_ID); they add the supervised routing loss when the routers' supervised_weight > 0.
        past_key_values: the cache of an earlier call with use_cache (the tokens before input_ids); positions continue
        after it, and past + new tokens may not exceed max_seq_len. No attention_mask with a cache.
        """
        prior = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        self._check_ids(input_ids, prior)
        if past_key_values is not None and (attention_mask is not None or len(past_key_values) != len(self.blocks)):
            raise ValueError("past_key_values needs one (keys, values) pair per block and no attention_mask")
        options = RoutingOptions.of(options, temperature=temperature, top_k=top_k)
        options.resolve(self.routers[0].config, self.config.moe.num_experts)  # a bad top_k fails before any compute
        batch, seq = input_ids.shape
        attn_mask = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (batch, seq):
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
                                 f"{(batch, seq)}")
            # A mask without padding (every packed training window) changes nothing but the route: read once here,
            # it spares every MoE layer its gather, scatter and host sync, and lets attention take its causal kernel.
            if host_reads_allowed() and bool((attention_mask == 1).all()):  # other values go on to the layers' check
                attention_mask = None
            else:
                attn_mask = _causal_padding_mask(attention_mask.bool())
        allowed = None
        if token_types is not None:
            if tuple(token_types.shape) != (batch, seq):
                raise ValueError(f"token_types shape {tuple(token_types.shape)} does not match input_ids "
                                 f"{(batch, seq)}")
            if any(router.config.supervised_weight > 0 for router in self.routers):
                allowed = self.allowed_experts(token_types.to(input_ids.device))

        positions = torch.arange(prior, prior + seq, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(positions)  # (B, T, D)
        routings: list[RoutingInfo] = []
        presents: list[tuple[torch.Tensor, torch.Tensor]] = []
        pending = None  # each block's MoE output, added to x by the next norm in its own pass
        for index, block in enumerate(self.blocks):
            past = None if past_key_values is None else past_key_values[index]
            x, pending, routing, present = block(x, attn_mask, attention_mask, options, allowed, past,
                                                 pending=pending, defer=True)
            routings.append(routing)
            presents.append(present)
        normed = self.ln_f(x) if pending is None else self.ln_f.add_forward(x, pending)[1]
        logits = self.lm_head(normed)  # (B, T, V)
        return LMOutput(
            logits=logits,
            routing=routings if return_routing_info else None,
            router_loss=torch.stack([r.router_loss for r in routings]).sum(),
            load_balance_loss=torch.stack([r.load_balance_loss for r in routings]).sum(),
            z_loss=torch.stack([r.z_loss for r in routings]).sum(),
            supervised_loss=torch.stack([r.supervised_loss for r in routings]).sum(),
            past_key_values=presents if use_cache else None,
        )

    def loss(self, batch, temperature: float | None = None, return_routing_info: bool = False) -> LossBreakdown:
        """Next-token cross-entropy plus the router losses for an `LMBatch` (input_ids, target_ids, attention_mask,
        token_types). Targets at padding positions, and PAD targets, are ignored."""
        device = self.device
        input_ids, target_ids = batch.input_ids.to(device), batch.target_ids.to(device)
        attention_mask = batch.attention_mask.to(device) if batch.attention_mask is not None else None
        out = self.forward(input_ids, attention_mask=attention_mask, temperature=temperature,
                           token_types=batch.token_types, return_routing_info=return_routing_info)
        ignore = target_ids == self.tokenizer.pad_id
        if attention_mask is not None:
            ignore |= attention_mask == 0
        targets = target_ids.masked_fill(ignore, -100)
        lm = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]).float(), targets.reshape(-1),
                             ignore_index=-100)
        return LossBreakdown(total=lm + out.router_loss, lm_loss=lm, load_balance_loss=out.load_balance_loss,
                             z_loss=out.z_loss, supervised_loss=out.supervised_loss, routing=out.routing)

    # --- generation -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, ids: list[int], options: RoutingOptions | None = None) -> StepOutput:
        """One generation step: logits (V,) for the token after `ids` and the routing of `ids[-1]`.

        Only the last max_seq_len tokens are seen: generation slides its window, so no forward pass ever exceeds
        max_seq_len while the output can grow longer.
        """
        window = ids[-self.config.max_seq_len:]
        input_ids = torch.tensor([window], dtype=torch.long, device=self.device)
        out = self.forward(input_ids, options=options, return_routing_info=True)
        return StepOutput(logits=out.logits[0, -1].float(), routing=TokenRouting.from_layers(out.routing, -1))

    def stepper(self, options: RoutingOptions | None = None) -> CachedStepper:
        """A `step` for one generation that keeps a KV cache; see CachedStepper."""
        return CachedStepper(self, options)

    def generate(
        self,
        prompt: str | list[int] | torch.Tensor,
        max_new_tokens: int = 64,
        sampling_temperature: float = 0.0,
        sampling_top_k: int | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
        on_token=None,
        routing: RoutingOptions | None = None,
        use_cache: bool = True,
    ) -> GenerationResult:
        """Continue `prompt`; see `pimoe.generation.generate_tokens` for the loop, the hook and the window.

        prompt: text (encoded as EOS + its bytes: in training every document follows an EOS separator) or token ids.
        sampling_temperature: 0 = greedy. sampling_top_k: sample among the k most likely tokens.
        seed: seeds sampling (a private generator, so the global RNG is untouched). routing: the router's knobs for
        every step (the `options` of `forward`).
        on_token(position, token_id, routing) -> list[int] | None: called for every generated token; a list replaces
        that token (splicing, e.g. the exact result of a computation).
        use_cache: keep keys and values between steps (CachedStepper), so each step reads only the new tokens while
        the text fits in max_seq_len; False recomputes the whole window every step.
        """
        if isinstance(prompt, str):
            prompt_ids = [self.tokenizer.eos_id, *self.tokenizer.encode(prompt)]
        elif isinstance(prompt, torch.Tensor):
            prompt_ids = [int(t) for t in prompt.reshape(-1).tolist()]
        else:
            prompt_ids = [int(t) for t in prompt]
        if not prompt_ids:
            raise ValueError("prompt is empty: give text or at least one token id")
        bad = [t for t in prompt_ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.config.vocab_size})")
        with evaluating(self):
            step = self.stepper(routing) if use_cache else (lambda ids: self.step(ids, routing))
            return generate_tokens(
                step,
                prompt_ids,
                self.tokenizer,
                max_new_tokens=max_new_tokens,
                sampling_temperature=sampling_temperature,
                sampling_top_k=sampling_top_k,
                seed=seed,
                stop_at_eos=stop_at_eos,
                on_token=on_token,
                banned_ids=(self.tokenizer.pad_id, self.tokenizer.bos_id),
            )

    # --- routing lab ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def route_text(self, text: str, temperature: float | None = None, top_k: int | None = None,
                   options: RoutingOptions | None = None) -> TextRouting:
        """Route every byte of `text` through the model (eval mode, no gradients); see `TextRouting`."""
        if not isinstance(text, str) or not text:
            raise ValueError("route_text needs a non-empty string")
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        types = tag_ids(text)
        window = self.config.max_seq_len
        num_windows = -(-len(ids) // window)
        width = min(window, len(ids))
        grid = torch.full((num_windows * width,), self.tokenizer.pad_id, dtype=torch.long)
        grid[: len(ids)] = ids
        mask = torch.zeros(num_windows * width, dtype=torch.long)
        mask[: len(ids)] = 1
        with evaluating(self):
            out = self.forward(grid.view(num_windows, width).to(self.device),
                               attention_mask=mask.view(num_windows, width).to(self.device),
                               options=RoutingOptions.of(options, temperature=temperature, top_k=top_k),
                               return_routing_info=True)
        return TextRouting(
            tokens=display_tokens(text),
            token_ids=ids,
            token_types=types,
            routing=[r.detach().to("cpu") for r in out.routing],
            expert_types=self.expert_types,
            mapping=self.mapping,
        )


class CachedStepper:
    """`PiMoELM.step` with a KV cache, for one generation: call it with the growing list of ids.

    When the ids extend the ids of the last call and still fit in max_seq_len, only the new tokens go through the
    model (a splice of k result tokens costs one forward over k tokens). Anything else (a changed prefix, or a text
    past max_seq_len, where the sliding window shifts every position) recomputes the window and, if it fits, starts a
    new cache. Results equal `PiMoELM.step` up to float rounding.
    """

    def __init__(self, model: PiMoELM, options: RoutingOptions | None = None) -> None:
        self.model, self.options = model, options
        self.cached_ids: list[int] = []
        self.past: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @torch.no_grad()
    def __call__(self, ids: list[int]) -> StepOutput:
        model, limit = self.model, self.model.config.max_seq_len
        known = len(self.cached_ids)
        if self.past is not None and known < len(ids) <= limit and ids[:known] == self.cached_ids:
            new, past = ids[known:], self.past
        elif len(ids) <= limit:
            new, past = list(ids), None
        else:
            self.cached_ids, self.past = [], None
            return model.step(ids, self.options)
        input_ids = torch.tensor([new], dtype=torch.long, device=model.device)
        out = model.forward(input_ids, options=self.options, return_routing_info=True,
                            past_key_values=past, use_cache=True)
        self.cached_ids, self.past = list(ids), out.past_key_values
        return StepOutput(logits=out.logits[0, -1].float(), routing=TokenRouting.from_layers(out.routing, -1))


def _causal_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, 1, T, T) bool: query t may attend key s <= t when s is not padding.

    Every query also keeps itself, so a padding row is never fully masked (SDPA would return NaN for it); padding
    outputs are ignored by the loss and are not routed.
    """
    seq = valid.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=valid.device).tril()
    diagonal = torch.eye(seq, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, None, :]) | diagonal).view(valid.shape[0], 1, seq, seq)
