"""An exported layer runs in onnxruntime on shapes it was not traced with and matches torch."""

import json

import onnx
import pytest
import torch

from pimoe import PiMoEConfig, PiMoESystem
from pimoe.cli.commands import main as cli_main
from pimoe.lm.checkpoint import save_checkpoint
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.optimize.onnx_export import ONNX_INPUT, export_lm_onnx, export_onnx, run_onnx
from pimoe.optimize.quantize import quantize_dynamic_int8


@pytest.fixture(scope="module")
def system() -> PiMoESystem:
    torch.manual_seed(0)
    return PiMoESystem(PiMoEConfig.tiny()).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny layer (seed 0) exported through the command line, which also checks it in onnxruntime."""
    path = tmp_path_factory.mktemp("onnx") / "layer.onnx"
    types = ",".join(PiMoEConfig.tiny().expert_types)
    code = cli_main(["export", "--onnx", str(path), "--hidden-size", "32", "--num-experts", "4", "--top-k", "2",
                     "--expert-types", types, "--seed", "0"])
    assert code == 0
    return path


@pytest.mark.parametrize("shape", [(3, 5), (1, 11), (2, 8)])
def test_onnx_output_matches_torch_on_other_batch_and_sequence_sizes(system, exported, shape):
    x = torch.randn(*shape, 32, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        expected = system(x)
    torch.testing.assert_close(torch.from_numpy(run_onnx(exported, x)), expected, rtol=1e-4, atol=1e-4)


def test_onnx_graph_has_named_dynamic_axes_and_says_it_uses_dense_dispatch(system, exported):
    proto = onnx.load(str(exported))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert proto.graph.input[0].name == ONNX_INPUT
    assert [d.dim_param for d in dims[:2]] == ["batch", "seq"] and dims[2].dim_value == 32
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata["pimoe.layer.dispatch"] == "dense_masked"
    assert json.loads(metadata["pimoe.layer.config"])["num_experts"] == system.num_experts


def test_export_rejects_quantised_systems_and_tiny_examples(system, tmp_path):
    with pytest.raises(ValueError, match="PiMoESystem"):
        export_onnx(PiMoELM(LMConfig.tiny()), tmp_path / "lm.onnx")
    with pytest.raises(ValueError, match="int8"):
        export_onnx(quantize_dynamic_int8(system), tmp_path / "q.onnx")
    with pytest.raises(ValueError, match="batch >= 2"):
        export_onnx(system, tmp_path / "one.onnx", example_input=torch.randn(1, 8, 32))
    with pytest.raises(ValueError, match=".onnx"):
        export_onnx(system, tmp_path / "layer.bin")
    (tmp_path / "blocker").write_text("a file where a folder would go")
    with pytest.raises(ValueError, match="blocker is a file"):
        export_onnx(system, tmp_path / "blocker" / "layer.onnx")


def test_export_command_refuses_a_negative_tolerance_before_exporting(tmp_path, capsys):
    assert cli_main(["export", "--onnx", str(tmp_path / "x.onnx"), "--atol", "-1"]) == 2
    assert "--atol must be a number >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_an_opset_past_the_onnx_packages_newest_is_refused_before_exporting(system, tmp_path):
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ValueError, match=f"opset {newest + 1} is past the newest .* knows, {newest}"):
        export_onnx(system, tmp_path / "late.onnx", opset=newest + 1)
    assert not (tmp_path / "late.onnx").exists()


def test_a_file_onnxruntime_cannot_run_is_a_named_error(tmp_path, capsys, monkeypatch):
    """onnxruntime lags onnx: opset 26 files from torch's exporter failed to load in onnxruntime 1.32 ("No Op
    registered for Gelu"). The command says which opset and runtime, and that the file was written."""
    import pimoe.cli.export as export_command

    def runtime_refuses(path, x):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : No Op registered for Gelu\nmore detail")

    monkeypatch.setattr(export_command, "run_onnx", runtime_refuses)
    path = tmp_path / "x.onnx"
    assert cli_main(["export", "--onnx", str(path), "--hidden-size", "16", "--num-experts", "4", "--opset", "18"]) == 2
    err = capsys.readouterr().err
    assert f"{path} was written, but onnxruntime" in err and "at opset 18: [ONNXRuntimeError]" in err
    assert "more detail" not in err and "A lower --opset" in err
    assert path.exists()


@pytest.fixture(scope="module")
def lm_export(tmp_path_factory):
    """A tiny LM saved as a checkpoint and exported through the command line, once for the module."""
    torch.manual_seed(0)
    model = PiMoELM(LMConfig.tiny()).eval()
    folder = tmp_path_factory.mktemp("lm")
    checkpoint = save_checkpoint(model, folder / "lm.safetensors")
    onnx_path = folder / "lm.onnx"
    code = cli_main(["export", "--onnx", str(onnx_path), "--checkpoint", str(checkpoint)])
    return model, onnx_path, code


def test_export_command_exports_an_lm_checkpoint(lm_export):
    _, onnx_path, code = lm_export
    assert code == 0 and onnx_path.stat().st_size > 0


@pytest.mark.parametrize("shape", [(1, 64), (2, 13)], ids=["one-full-window", "two-short"])
def test_lm_onnx_logits_match_torch_on_new_shapes(lm_export, shape):
    model, onnx_path, _ = lm_export
    ids = torch.randint(0, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(shape[1]))
    with torch.no_grad():
        expected = model(ids).logits
    torch.testing.assert_close(torch.from_numpy(run_onnx(onnx_path, ids)), expected, rtol=1e-4, atol=1e-4)


def test_lm_export_rejects_non_models_and_full_length_examples(system, tmp_path):
    with pytest.raises(ValueError, match="PiMoELM"):
        export_lm_onnx(system, tmp_path / "x.onnx")
    model = PiMoELM(LMConfig.tiny())
    with pytest.raises(ValueError, match="example_ids"):
        export_lm_onnx(model, tmp_path / "x.onnx", example_ids=torch.zeros(2, 64, dtype=torch.long))
