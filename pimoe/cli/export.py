"""`python -m pimoe export --onnx FILE`: export a PiMoE layer, or a PiMoE-LM checkpoint, to ONNX and check the file
against torch in onnxruntime on a shape other than the one it was traced with.

Without --checkpoint the layer is built from the flags with seeded weights; with --checkpoint PATH.safetensors the
language model saved there (pimoe.lm.checkpoint) is exported, input_ids -> logits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.layer.system import PiMoESystem
from pimoe.memory_fit import check_fits
from pimoe.optimize.onnx_export import DEFAULT_OPSET, export_lm_onnx, export_onnx, run_onnx


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = PiMoEConfig.demo()
    parser.add_argument("--onnx", type=Path, required=True, help="output file, e.g. pimoe.onnx")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a PiMoE-LM .safetensors checkpoint to export instead of a freshly built layer")
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    parser.add_argument("--num-experts", type=int, default=defaults.num_experts)
    parser.add_argument("--top-k", type=int, default=defaults.router.top_k)
    parser.add_argument("--intermediate-size", type=int, default=None, help="default 4 * hidden size")
    parser.add_argument("--expert-types", default=",".join(defaults.expert_types),
                        help="comma-separated expert types, assigned round-robin")
    parser.add_argument("--seed", type=int, default=0, help="seed of the layer's weights and of the check's input")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--atol", type=float, default=1e-4, help="tolerance of the onnxruntime check")


def _export_layer(args: argparse.Namespace) -> tuple[Path, torch.Tensor, torch.Tensor]:
    config = PiMoEConfig(
        hidden_size=args.hidden_size,
        num_experts=args.num_experts,
        expert_types=tuple(t for t in args.expert_types.split(",") if t),
        router=RouterConfig(top_k=args.top_k),
        expert=ExpertConfig(intermediate_size=args.intermediate_size),
    )
    check_fits(lambda: PiMoESystem(config), "cpu", "the PiMoE layer to export")
    torch.manual_seed(args.seed)
    system = PiMoESystem(config).eval()
    path = export_onnx(system, args.onnx, opset=args.opset)
    x = torch.randn(3, 5, config.hidden_size, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        return path, x, system(x)


def _export_checkpoint(args: argparse.Namespace) -> tuple[Path, torch.Tensor, torch.Tensor]:
    from pimoe.lm.checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    path = export_lm_onnx(model, args.onnx, opset=args.opset)
    seq = min(5, model.config.max_seq_len)
    ids = torch.randint(0, model.config.vocab_size, (3, seq), generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        return path, ids, model(ids).logits


def main(args: argparse.Namespace) -> int:
    if not args.atol >= 0:  # NaN too
        raise ValueError(f"--atol must be a number >= 0, got {args.atol}")
    path, check_input, expected = _export_checkpoint(args) if args.checkpoint else _export_layer(args)
    what = f"language model {args.checkpoint}" if args.checkpoint else "PiMoE layer"
    print(f"wrote {path}: {what} ({path.stat().st_size / 2**20:.2f} MiB, opset {args.opset}, "
          "dynamic axes batch and seq)")
    try:
        got = run_onnx(path, check_input)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own classes (InvalidGraph, Fail, ...)
        # a valid file at an opset this onnxruntime does not run yet (opset 26 with onnxruntime 1.32: its Gelu node)
        import onnxruntime

        raise ValueError(f"{path} was written, but onnxruntime {onnxruntime.__version__} cannot run it at opset "
                         f"{args.opset}: {str(error).splitlines()[0][:300]}. A lower --opset (default "
                         f"{DEFAULT_OPSET}) gives a file it runs") from None
    max_abs = float(abs(got - expected.numpy()).max())
    ok = max_abs <= args.atol
    print(f"onnxruntime (CPU) vs torch on a {tuple(check_input.shape)} input: max abs difference {max_abs:.3g} "
          f"({'within' if ok else 'OUTSIDE'} atol {args.atol:g})")
    return 0 if ok else 1
