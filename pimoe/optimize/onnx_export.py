"""ONNX export of a PiMoE layer's forward (output only), or of a PiMoE-LM's logits, with dynamic batch and sequence.

Legend: B batch, S sequence, D hidden size, V vocabulary.

A layer's graph takes `hidden_states` (B, S, D) and returns `output` (B, S, D); an LM's takes `input_ids` (B, S) int64
and returns `logits` (B, S, V), S up to max_seq_len. Both are traced by torch's dynamo-based
exporter (`torch.onnx.export(..., dynamo=True)`, the default in torch 2.9+), which goes through `torch.export` and so
cannot follow the engine's `sorted` dispatch: that slices by per-expert counts read back from tensors. The exported
graph therefore uses the "dense_masked" form (`pimoe.layer.dense_dispatch`): every expert runs on every token and a (T, E)
combine-weight matrix, zero outside each token's kept top-k, mixes them. It computes the same function, up to
floating-point summation order, at E/K times the expert work. The file's metadata says so.

Not in the graph: attention/padding masks (every position is routed and attended causally; a layer token's output
depends only on itself unless a capacity limit is set), the RoutingInfo and router losses, and the input checks (the
finiteness check and the LM's token-id range check read values back to the host, which a traced graph cannot).
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pimoe.layer.system import PiMoESystem
from pimoe.optimize.quantize import count_int8_linears
from pimoe.output_paths import writable_destination

__all__ = ["DEFAULT_OPSET", "LM_ONNX_INPUT", "LM_ONNX_OUTPUT", "ONNX_INPUT", "ONNX_OUTPUT", "export_lm_onnx",
           "export_onnx", "run_onnx"]

DEFAULT_OPSET = 18  # the lowest opset the dynamo exporter targets; onnxruntime >= 1.14 runs it
ONNX_INPUT = "hidden_states"
ONNX_OUTPUT = "output"
LM_ONNX_INPUT = "input_ids"
LM_ONNX_OUTPUT = "logits"


class _OutputOnly(nn.Module):
    def __init__(self, system: PiMoESystem) -> None:
        super().__init__()
        self.system = system

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.system(hidden_states)


def _example(system: PiMoESystem, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is None:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(2, 8, system.hidden_size, generator=generator)
    if example_input.dim() != 3 or example_input.shape[-1] != system.hidden_size:
        raise ValueError(f"example_input must be (batch, seq, {system.hidden_size}), got {tuple(example_input.shape)}")
    if example_input.shape[0] < 2 or example_input.shape[1] < 2:
        # torch.export specialises a dimension of size 0 or 1 to that constant, which would pin the axis.
        raise ValueError(f"example_input needs batch >= 2 and seq >= 2 for dynamic axes, got "
                         f"{tuple(example_input.shape)}")
    return example_input.detach().cpu().float()


def export_onnx(system: PiMoESystem, path: str | Path, example_input: torch.Tensor | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write `system`'s forward to `path` as ONNX (float32, CPU weights) and return the path.

    example_input: (B, S, D) with B, S >= 2, used for tracing (default: seeded random (2, 8, D)). Batch and sequence
    are dynamic axes named "batch" and "seq". The system itself is not modified (a copy is exported).
    """
    if not isinstance(system, PiMoESystem):
        raise ValueError(f"expected a PiMoESystem, got {type(system).__name__}")
    if count_int8_linears(system):
        raise ValueError("int8-quantised systems cannot be exported to ONNX here; export the float model")
    path = _check_target(path, opset)
    model = _export_copy(system)
    example = _example(model, example_input)
    _trace(_OutputOnly(model), example, path, opset, ONNX_INPUT, ONNX_OUTPUT, torch.export.Dim("seq"))
    _write_metadata(path, model, {
        "pimoe.inputs": f"{ONNX_INPUT}: float32 (batch, seq, {model.hidden_size})",
        "pimoe.outputs": f"{ONNX_OUTPUT}: float32 (batch, seq, {model.hidden_size})",
    })
    return path


def _export_copy(module: nn.Module, shared: tuple[object, ...] = ()) -> nn.Module:
    """A float32 CPU eval copy whose PiMoE layers use the traceable dense_masked dispatch and skip the host check.

    shared: attributes to reference rather than copy (read-only helpers outside the graph).
    """
    model = copy.deepcopy(module, memo={id(obj): obj for obj in shared}).float().cpu().eval()
    for layer in model.modules():
        if isinstance(layer, PiMoESystem):
            layer.dispatch = "dense_masked"
            layer.check_finite = False  # a host read of isfinite().all() has no place in a traced graph
    return model


def _check_target(path: str | Path, opset: int) -> Path:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 18:
        raise ValueError(f"opset must be an integer >= 18 (the dynamo exporter's lowest), got {opset!r}")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ValueError(f"opset {opset} is past the newest the installed onnx {onnx.__version__} knows, {newest}")
    if Path(path).suffix != ".onnx":
        raise ValueError(f"the ONNX file name must end in .onnx, got {str(path)!r}")
    return writable_destination(path, "ONNX file")


def _trace(module: nn.Module, example: torch.Tensor, path: Path, opset: int, input_name: str, output_name: str,
           seq_dim) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch"), 1: seq_dim},)
    # NOTE: the exporter logs one warning per torchvision op it cannot register; torchvision is not a dependency.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(path), dynamo=True, opset_version=opset, input_names=[input_name],
                output_names=[output_name], dynamic_shapes=dynamic_shapes, verbose=False,
            )
    finally:
        registration_log.setLevel(previous_level)


def _write_metadata(path: Path, model: nn.Module, io: dict[str, str]) -> None:
    import onnx

    layers = [layer for layer in model.modules() if isinstance(layer, PiMoESystem)]
    proto = onnx.load(str(path))
    proto.doc_string = (
        "PiMoE export. Each PiMoE layer uses the dense_masked dispatch: every expert runs on every token and a (T, E) "
        "combine matrix, zero outside each token's kept top-k, mixes them; numerically equivalent to the engine's "
        "sorted dispatch."
    )
    metadata = {
        "pimoe.layer.dispatch": "dense_masked",
        "pimoe.layer.config": json.dumps(model.config.to_dict()),
        "pimoe.expert_widths": json.dumps([[expert.width for expert in layer.experts] for layer in layers]),
        **io,
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


class _LMLogits(nn.Module):
    """input_ids (B, S) -> logits (B, S, V): PiMoELM.forward without its input checks (they read ids back to the
    host) and without masks or router losses. tests/optimize/test_onnx_export.py compares it with PiMoELM.forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        model = self.model
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = model.tok_emb(input_ids) + model.pos_emb(positions)  # (B, S, D)
        for block in model.blocks:
            x, _, _ = block(x, None, None, None, None, None)
        return model.lm_head(model.ln_f(x))


def export_lm_onnx(model: nn.Module, path: str | Path, example_ids: torch.Tensor | None = None,
                   opset: int = DEFAULT_OPSET) -> Path:
    """Write a PiMoELM's next-token logits to `path` as ONNX and return the path.

    example_ids: (B, S) int64 token ids with B, S >= 2 for tracing (default: seeded random (2, 8)). Batch and sequence
    are dynamic (sequence up to max_seq_len). The model itself is not modified.
    """
    from pimoe.lm.model import PiMoELM

    if not isinstance(model, PiMoELM):
        raise ValueError(f"expected a PiMoELM, got {type(model).__name__}")
    if count_int8_linears(model):
        raise ValueError("int8-quantised models cannot be exported to ONNX here; export the float model")
    path = _check_target(path, opset)
    max_len = model.config.max_seq_len
    if example_ids is None:
        example_ids = torch.randint(0, model.config.vocab_size, (2, min(8, max_len)),
                                    generator=torch.Generator().manual_seed(0))
    if example_ids.dim() != 2 or example_ids.shape[0] < 2 or not 2 <= example_ids.shape[1] < max_len:
        raise ValueError(f"example_ids must be (batch >= 2, 2 <= seq < max_seq_len={max_len}), got "
                         f"{tuple(example_ids.shape)}")
    export_model = _export_copy(model, shared=(model.mapping, model.tokenizer))  # the mapping holds a mappingproxy
    _trace(_LMLogits(export_model), example_ids.long().cpu(), path, opset, LM_ONNX_INPUT, LM_ONNX_OUTPUT,
           torch.export.Dim("seq", max=max_len))
    _write_metadata(path, export_model, {
        "pimoe.inputs": f"{LM_ONNX_INPUT}: int64 (batch, seq <= {max_len})",
        "pimoe.outputs": f"{LM_ONNX_OUTPUT}: float32 (batch, seq, {model.config.vocab_size})",
    })
    return path


def run_onnx(path: str | Path, x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Run an exported layer (x: (B, S, D) float) or LM (x: (B, S) token ids) with onnxruntime on the CPU."""
    import onnxruntime as ort

    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    array = array.astype(np.int64 if np.issubdtype(array.dtype, np.integer) else np.float32, copy=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    return session.run(None, {graph_input.name: array})[0]
