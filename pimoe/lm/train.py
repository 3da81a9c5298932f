"""Training loop for PiMoE-LM that a live dashboard can drive one step at a time.

Legend: B batch_size, T seq_len, L layers, E experts.

`Trainer.step()` runs one optimisation step and returns a `StepRecord` (losses, per-layer loads, routing accuracy,
throughput, the router settings used). Pausing is simply not calling `step()`; the trainer keeps its own torch RNG
state and its batch iterator, so other work done between steps (sampling, routing a text) changes nothing in the run.
Temperature and load-balance weight can be changed between steps; the change applies at the next step and is written
into that step's `events`.

Routing modes: "supervised" trains the routers with the token-type labels as well (supervised_weight > 0, PiMoE/PiERN,
arXiv 2509.18169); "unsupervised" trains them only through the LM loss and the balancing losses.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from pimoe.devices import available_device, parse_device
from pimoe.layer.modes import evaluating
from pimoe.layer.router import TokenLevelRouter
from pimoe.layer.validation import check_temperature
from pimoe.lm.data import Corpus, CorpusConfig, LMBatch, corpus_datasets, split_datasets
from pimoe.lm.metrics import RoutingTally, unigram_loss
from pimoe.lm.model import LossBreakdown, PiMoELM
from pimoe.lm.step_graph import StepGraph, step_graph_unsupported
from pimoe.memory_fit import check_training_fits

__all__ = ["ROUTING_MODES", "Controller", "EvalResult", "StepRecord", "TrainConfig", "Trainer", "TrainerState"]

ROUTING_MODES = ("supervised", "unsupervised")
PRECISIONS = ("auto", "bf16", "float32")


def _check_number(name: str, value: Any, low: float, *, low_inclusive: bool = True, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (value == low and not low_inclusive) or (high is not None and value > high):
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class TrainConfig:
    """One training run.

    steps: optimisation steps of the LR schedule (`Trainer.run()` runs to it; `step()` can go past it at min LR).
    lr: peak AdamW learning rate, reached after `warmup` linear steps, then cosine decay to lr * min_lr_ratio.
    routing_mode: "supervised" (routers also learn the token-type targets, weight `supervised_weight`) or
        "unsupervised" (supervised weight forced to 0).
    load_balance_weight, temperature: set on every router at the start.
    eval_every: evaluate every that many steps inside `run()` (0 = never; call `evaluate()` yourself).
    eval_max_batches: cap on validation batches per evaluation (None = the whole validation split).
    corpus: the synthetic corpus used when the Trainer is given no texts.
    precision: "bf16" runs forward and backward under bf16 autocast (weights and optimiser state stay float32);
        "float32" does not; "auto" picks bf16 on CUDA and float32 elsewhere (the CPU's bf16 matmuls are slower).
    compile: compile every transformer block with torch.compile (the fast path's kernels are custom ops inside the
        compiled graph): on a GPU an eager step spends most of its time launching small kernels from Python.
    cuda_graph: capture the whole step (forward, backward, clip, update) in one CUDA graph after three warm-up steps and
        replay it (`pimoe.lm.step_graph`); needs a CUDA device, no adaptive controller, no dropout. With `compile` the
        compiled blocks' kernels are what the graph records.
    """

    steps: int = 600
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    warmup: int = 30
    grad_clip: float = 1.0
    routing_mode: str = "supervised"
    supervised_weight: float = 0.5
    load_balance_weight: float = 0.01
    temperature: float = 1.0
    seed: int = 0
    device: str = "cpu"
    eval_every: int = 0
    eval_max_batches: int | None = None
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    precision: str = "auto"
    compile: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seq_len", self.seq_len, 1)
        _check_number("lr", self.lr, 0.0, low_inclusive=False)
        _check_number("min_lr_ratio", self.min_lr_ratio, 0.0, high=1.0)
        _check_number("weight_decay", self.weight_decay, 0.0)
        _check_int("warmup", self.warmup, 0)
        _check_number("grad_clip", self.grad_clip, 0.0)
        if self.routing_mode not in ROUTING_MODES:
            raise ValueError(f"routing_mode must be one of {ROUTING_MODES}, got {self.routing_mode!r}")
        _check_number("supervised_weight", self.supervised_weight, 0.0)
        _check_number("load_balance_weight", self.load_balance_weight, 0.0)
        _check_number("temperature", self.temperature, 0.0, low_inclusive=False)
        _check_int("seed", self.seed, 0)
        _check_int("eval_every", self.eval_every, 0)
        if self.eval_max_batches is not None:
            _check_int("eval_max_batches", self.eval_max_batches, 1)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a device name such as 'cpu' or 'cuda', got {self.device!r}")
        parse_device(self.device)  # a name torch knows; whether this machine has it is the Trainer's check
        if isinstance(self.corpus, dict):
            self.corpus = CorpusConfig(**self.corpus)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def autocast_bf16(self) -> bool:
        """Whether steps run under bf16 autocast (precision "bf16", or "auto" on CUDA)."""
        return self.precision == "bf16" or (self.precision == "auto" and torch.device(self.device).type == "cuda")

    @property
    def router_supervised_weight(self) -> float:
        """The supervised weight the routers get: 0 in unsupervised mode."""
        return self.supervised_weight if self.routing_mode == "supervised" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def demo(cls, seed: int = 0, routing_mode: str = "supervised") -> TrainConfig:
        """The recipe of the shipped checkpoint (`python -m pimoe train` defaults to it). 1,800 steps: at 600 the
        demo model had not yet learned to send the connectives of new sentences to the logical expert (issue 20)."""
        return cls(steps=1800, batch_size=16, seq_len=128, lr=3e-3, warmup=30, routing_mode=routing_mode,
                   supervised_weight=0.5, load_balance_weight=0.01, seed=seed,
                   corpus=CorpusConfig(seed=seed, num_train=20000, num_val=500))


@dataclass
class EvalResult:
    """Validation numbers. Losses in nats per token; see `pimoe.lm.metrics` for accuracy and purity.

    unigram_loss: the training split's byte frequencies (add-one smoothed) evaluated on the same validation targets.
    load: per layer, each expert's share of the assignments on the validation split.
    """

    step: int
    lm_loss: float
    unigram_loss: float
    routing_accuracy: float
    routing_accuracy_per_layer: list[float]
    type_purity: float
    type_purity_per_layer: list[float]
    expert_purity: float
    expert_purity_per_layer: list[float]
    load: list[list[float]]
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepRecord:
    """One optimisation step, as a dashboard draws it.

    loss = lm_loss + the router losses (load_balance_loss + z_loss + supervised_loss, summed over layers, already weighted).
    load: per layer, each expert's share of this batch's assignments. routing_accuracy: mean over layers on this
    batch's labels (NaN when no token has a target). tokens_per_s and step_ms: wall time of forward, backward and
    optimiser update. temperature, load_balance_weight: the values this step used (layer 0's router).
    selection_bias: per layer, the routers' loss-free balancing biases. events: changes applied before this step.
    adaptation: what the controller returned after this step. eval: filled by `run()` on eval_every steps.
    """

    step: int
    loss: float
    lm_loss: float
    load_balance_loss: float
    z_loss: float
    supervised_loss: float
    load: list[list[float]]
    routing_accuracy: float
    routing_accuracy_per_layer: list[float]
    tokens_per_s: float
    step_ms: float
    lr: float
    temperature: float
    load_balance_weight: float
    selection_bias: list[list[float]]
    events: list[str] = field(default_factory=list)
    adaptation: dict | None = None
    eval: EvalResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainerState:
    """Where a Trainer stands; it resumes from here when `step()` is next called."""

    step: int
    epoch: int
    tokens_seen: int
    train_seconds: float
    lr: float
    temperature: float
    load_balance_weight: float
    supervised_weight: float
    routing_mode: str
    pending_events: tuple[str, ...]


class Controller(Protocol):
    """Adapts the routers between steps (e.g. AdaptivePiMoE); what it returns is stored in `record.adaptation`."""

    def update(self, record: StepRecord, routers: list[TokenLevelRouter]) -> dict | None: ...


def _split_texts(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """The last 10% of the documents (at least one) become the validation split."""
    not_text = next((t for t in texts if not isinstance(t, str)), None)
    if not_text is not None:
        raise ValueError(f"corpus documents must be str, got a {type(not_text).__name__}: {not_text!r:.60}")
    texts = [t for t in texts if t]
    if len(texts) < 2:
        raise ValueError(f"training needs at least 2 non-empty documents (one held out for validation), got {len(texts)}")
    num_val = max(1, len(texts) // 10)
    return texts[:-num_val], texts[-num_val:]


class Trainer:
    """Trains a PiMoELM; see the module docstring.

    corpus: a `Corpus` (train and val splits), a list of documents (the last 10% are held out for validation), or
    None for `generate_corpus(config.corpus)`. controller: optional, called after every step.
    """

    def __init__(self, model: PiMoELM, config: TrainConfig | None = None, corpus: Corpus | Sequence[str] | None = None,
                 controller: Controller | None = None) -> None:
        self.config = config if config is not None else TrainConfig()
        cfg = self.config
        if cfg.seq_len > model.config.max_seq_len:
            raise ValueError(f"seq_len {cfg.seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}")
        if isinstance(corpus, str):
            raise ValueError("corpus must be a Corpus or a list of documents, got a single str")
        # before the corpus is tokenised and anything is moved: a batch no machine holds must not take the host down
        self.device = available_device(cfg.device)
        check_training_fits(model, cfg.batch_size, cfg.seq_len, model.config.vocab_size, model.config.hidden_size,
                            model.config.num_layers, self.device)
        if corpus is None:  # the generated corpus: its datasets are shared with other trainers of the same settings
            self.train_set, self.val_set = corpus_datasets(cfg.corpus, model.tokenizer, cfg.seq_len)
        else:
            train_texts, val_texts = (corpus.train, corpus.val) if isinstance(corpus, Corpus) else _split_texts(corpus)
            self.train_set, self.val_set = split_datasets(train_texts, val_texts, model.tokenizer, cfg.seq_len)
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            # NOTE: each MoE layer's NaN check reads a bool back from the GPU in the middle of the forward, which
            # stalls the host's launch queue once per layer per step; the loss, read every step, shows a NaN as well.
            for block in model.blocks:
                block.moe.check_finite = False
        if cfg.compile:
            for block in model.blocks:
                block.compile()
        self.controller = controller
        if cfg.cuda_graph and (reason := step_graph_unsupported(model, self.device, controller, cfg.autocast_bf16)):
            raise ValueError(f"cuda_graph: {reason}")
        model.set_router_options(temperature=cfg.temperature, load_balance_weight=cfg.load_balance_weight,
                                 supervised_weight=cfg.router_supervised_weight)
        self.optimizer = self._make_optimizer()
        self._step_graph = StepGraph(model, self.optimizer, self._forward_backward_update) if cfg.cuda_graph else None
        self._rng_state = torch.Generator().manual_seed(cfg.seed).get_state()
        self._cuda_rng_state = None
        self._drop_last = len(self.train_set) >= cfg.batch_size
        self._epoch = 0
        self._batches = self._epoch_batches()
        self._pending: dict[str, float] = {}
        self._step = 0
        self._tokens_seen = 0
        self._train_seconds = 0.0
        self._unigram: float | None = None

    def _make_optimizer(self) -> torch.optim.Optimizer:
        # NOTE: no weight decay on biases, norms and the selection-bias buffer's neighbours (1-D parameters).
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # fused: one kernel for every parameter's update, where the default takes several per tensor. On the CPU too:
        # the dashboard's live step went from 30-33 to 26-27 ms (demo size, one thread, this project's machine).
        if self.config.cuda_graph:  # a replay reads the learning rate from the device, where step() writes it
            return torch.optim.AdamW(groups, lr=torch.tensor(self.config.lr, device=self.device), betas=(0.9, 0.95),
                                     fused=True, capturable=True)
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.95),
                                 fused=self.device.type in ("cuda", "cpu"))

    def _epoch_batches(self) -> Iterator[LMBatch]:
        # Each epoch has its own order, derived from the seed, so a resumed run sees the same batches.
        return self.train_set.batches(self.config.batch_size, seed=self.config.seed * 100_003 + self._epoch,
                                      drop_last=self._drop_last)

    def _next_batch(self) -> LMBatch:
        try:
            return next(self._batches)
        except StopIteration:
            self._epoch += 1
            self._batches = self._epoch_batches()
            return next(self._batches)

    def lr_at(self, step: int) -> float:
        """Linear warmup over `warmup` steps, cosine decay to lr * min_lr_ratio at `steps`, then constant."""
        cfg = self.config
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # --- live changes -------------------------------------------------------------------------------------------

    def set_temperature(self, value: float) -> None:
        """Router temperature for every layer from the next step on."""
        check_temperature(value)
        self._pending["temperature"] = float(value)

    def set_load_balance_weight(self, value: float) -> None:
        """Load-balancing loss weight for every layer from the next step on."""
        _check_number("load_balance_weight", value, 0.0)
        self._pending["load_balance_weight"] = float(value)

    def set_supervised_weight(self, value: float) -> None:
        """Supervised routing loss weight from the next step on (0 makes the run unsupervised from there)."""
        _check_number("supervised_weight", value, 0.0)
        self._pending["supervised_weight"] = float(value)

    def _apply_pending(self) -> list[str]:
        # Swap the dict out first: a dashboard thread may call set_* while the training thread applies changes.
        pending, self._pending = self._pending, {}
        events = []
        router = self.model.routers[0]
        for name, value in pending.items():
            old = getattr(router.config, name)
            self.model.set_router_options(**{name: value})
            events.append(f"{name.replace('_', ' ')} {old:g} → {value:g}")
        return events

    # --- stepping -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _own_rng(self):
        """Run with the trainer's RNG state (dropout), then restore the caller's."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._rng_state)
            if devices and self._cuda_rng_state is not None:
                torch.cuda.set_rng_state(self._cuda_rng_state, self.device)
            yield
            self._rng_state = torch.get_rng_state()
            if devices:
                self._cuda_rng_state = torch.cuda.get_rng_state(self.device)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _finish_gradients(self) -> None:
        """Between backward and the update: clip. Expert-parallel training overrides it to average across ranks first."""
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)

    def _forward_backward_update(self, batch: LMBatch) -> LossBreakdown:
        """Forward, backward, clip and update, gradients zeroed by the caller (a graph's capture zeroes them before)."""
        # NOTE: autocast's weight-cast cache must be off where a CUDA graph may capture (torch.cuda.graphs' rule)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.autocast_bf16,
                            cache_enabled=self._step_graph is None):
            breakdown = self.model.loss(batch, return_routing_info=True)
        breakdown.total.backward()
        self._finish_gradients()
        self.optimizer.step()
        return breakdown

    def step(self) -> StepRecord:
        """One optimisation step on the next training batch."""
        events = self._apply_pending()
        host_batch = self._next_batch()
        num_tokens = int(host_batch.attention_mask.sum())  # counted on the host: on a GPU a read back is a sync
        batch = host_batch.to(self.device)
        lr = self.lr_at(self._step)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        model = self.model
        model.train()
        self._synchronize()
        started = time.perf_counter()
        if self._step_graph is not None:  # no dropout (checked), so no random numbers to keep apart
            breakdown = self._step_graph.run(batch)
        else:
            with self._own_rng():
                self.optimizer.zero_grad(set_to_none=True)
                breakdown = self._forward_backward_update(batch)
        self._synchronize()
        seconds = time.perf_counter() - started
        self._step += 1
        self._tokens_seen += num_tokens
        self._train_seconds += seconds

        routings = [r.detach() for r in breakdown.routing]
        tally = RoutingTally(len(routings), model.expert_types, model.mapping)
        tally.update(routings, batch.token_types)
        router = model.routers[0]
        losses = breakdown.as_floats()
        record = StepRecord(
            step=self._step,
            loss=losses["total"],
            lm_loss=losses["lm_loss"],
            load_balance_loss=losses["load_balance_loss"],
            z_loss=losses["z_loss"],
            supervised_loss=losses["supervised_loss"],
            load=tally.load_shares(),
            routing_accuracy=tally.accuracy(),
            routing_accuracy_per_layer=tally.accuracy_per_layer(),
            tokens_per_s=num_tokens / seconds if seconds > 0 else math.inf,
            step_ms=seconds * 1e3,
            lr=lr,
            temperature=router.temperature,
            load_balance_weight=router.load_balance_weight,
            selection_bias=torch.stack([r.selection_bias.detach() for r in model.routers]).cpu().tolist(),
            events=events,
        )
        if self.controller is not None:
            record.adaptation = self.controller.update(record, model.routers)
        return record

    def run(self, num_steps: int | None = None) -> Iterator[StepRecord]:
        """Yield one StepRecord per step: `num_steps` of them, or until `config.steps` when None.

        Stop iterating to pause; call `run` or `step` again to resume.
        """
        if num_steps is None:
            num_steps = max(0, self.config.steps - self._step)
        _check_int("num_steps", num_steps, 0)
        for _ in range(num_steps):
            record = self.step()
            if self.config.eval_every and record.step % self.config.eval_every == 0:
                record.eval = self.evaluate()
            yield record

    # --- evaluation ---------------------------------------------------------------------------------------------

    def unigram_loss(self) -> float:
        """The unigram baseline on the validation targets (computed once)."""
        if self._unigram is None:
            targets = torch.cat([b.target_ids.reshape(-1) for b in self._val_batches()])
            self._unigram = unigram_loss(self.train_set.tokens[1:], targets, self.model.config.vocab_size)
        return self._unigram

    def _val_batches(self) -> Iterator[LMBatch]:
        batches = self.val_set.batches(self.config.batch_size, shuffle=False)
        limit = self.config.eval_max_batches
        for index, batch in enumerate(batches):
            if limit is not None and index >= limit:
                return
            yield batch

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Validation LM loss, routing accuracy and purity (overall and per layer), unigram baseline."""
        model = self.model
        tally = RoutingTally(model.config.num_layers, model.expert_types, model.mapping)
        loss_sum, tokens = 0.0, 0
        with evaluating(model):
            for batch in self._val_batches():
                breakdown = model.loss(batch.to(self.device), return_routing_info=True)
                count = int(batch.target_ids.numel())
                loss_sum += float(breakdown.lm_loss) * count
                tokens += count
                tally.update(breakdown.routing, batch.token_types)
        purity = tally.purity_per_layer()
        type_purity = [p[0] for p in purity]
        expert_purity = [p[1] for p in purity]
        return EvalResult(
            step=self._step,
            lm_loss=loss_sum / max(tokens, 1),
            unigram_loss=self.unigram_loss(),
            routing_accuracy=tally.accuracy(),
            routing_accuracy_per_layer=tally.accuracy_per_layer(),
            type_purity=_mean(type_purity),
            type_purity_per_layer=type_purity,
            expert_purity=_mean(expert_purity),
            expert_purity_per_layer=expert_purity,
            load=tally.load_shares(),
            tokens=tokens,
        )

    @property
    def state(self) -> TrainerState:
        router = self.model.routers[0]
        return TrainerState(
            step=self._step,
            epoch=self._epoch,
            tokens_seen=self._tokens_seen,
            train_seconds=self._train_seconds,
            lr=self.lr_at(self._step),
            temperature=router.temperature,
            load_balance_weight=router.load_balance_weight,
            supervised_weight=router.config.supervised_weight,
            routing_mode=self.config.routing_mode,
            pending_events=tuple(f"{k} → {v:g}" for k, v in self._pending.items()),
        )


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
