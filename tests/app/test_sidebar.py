"""The sidebar's model sources and custom expert types: good uploads load, bad ones leave the current model in use."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save as save_safetensors
from studio_apptest import chart, new_session, on_page

from pimoe.lm.checkpoint import save_checkpoint
from pimoe.lm.model import LMConfig, PiMoELM

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[bytes, bytes]:
    """A tiny trained-format checkpoint: (safetensors bytes with the config embedded, the JSON config bytes)."""
    torch.manual_seed(0)
    path = save_checkpoint(PiMoELM(LMConfig.tiny()), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    return path.read_bytes(), path.with_suffix(".json").read_bytes()


def upload(at, weights: bytes, name: str = "model.safetensors", config: bytes | None = None):
    at.radio(key="model.source").set_value("upload").run()
    at.file_uploader(key="model.upload_weights").set_value((name, weights, "application/octet-stream"))
    if config is not None:
        at.file_uploader(key="model.upload_config").set_value(("model.json", config, "application/json"))
    return at.run()


def model_in_use(at):
    return at.session_state["_settings"].model


def test_a_valid_upload_becomes_the_model_in_use(app, checkpoint):
    upload(app, checkpoint[0], "tiny.safetensors")

    assert not app.exception and not app.sidebar.error
    assert app.session_state["_settings"].source.label == "uploaded tiny.safetensors"
    assert model_in_use(app).config.moe.num_experts == LMConfig.tiny().moe.num_experts
    on_page(app, "app_pages/routing_lab.py")
    assert not app.exception


@pytest.mark.parametrize("problem", ["garbage", "truncated", "mismatched config"])
def test_a_bad_upload_shows_an_error_and_keeps_the_current_model(app, checkpoint, problem):
    before = model_in_use(app)
    weights, config = checkpoint
    if problem == "garbage":
        upload(app, b"this is not a safetensors file")
    elif problem == "truncated":
        upload(app, weights[: len(weights) // 2])
    else:
        other = json.loads(config)
        other["config"]["moe"]["num_experts"] = 3  # the tensors were saved for 4 experts
        upload(app, weights, config=json.dumps(other).encode())

    assert not app.exception
    assert any("Could not load" in error.value and "current model stays in use" in error.value
               for error in app.sidebar.error)
    assert model_in_use(app) is before


class _CreatesFileWhenUnpickled:
    """A pickle payload with a visible side effect: unpickling it opens (so creates) `path` for writing."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_an_upload_is_never_unpickled(app, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_CreatesFileWhenUnpickled(str(marker)))
    upload(app, payload)
    upload(app, save_safetensors({"x": torch.zeros(1)}) + payload)  # pickle after a valid header: junk bytes

    assert not app.exception
    assert app.sidebar.error
    assert not marker.exists()  # neither upload ran the payload


def test_registering_a_custom_expert_type_adds_it_to_the_expert_set(app):
    app.text_input(key="experts.custom.name").set_value("studio_apptest_type")
    app.selectbox(key="experts.custom.activation").set_value("silu")
    app.slider(key="experts.custom.width_multiplier").set_value(1.5)
    app.button(key="experts.custom.submit").click().run()

    assert not app.exception
    assert "studio_apptest_type" in app.pills(key="experts.types").value
    assert "studio_apptest_type" in model_in_use(app).expert_types


def test_a_custom_type_name_cannot_redefine_another_architecture(app):
    for activation in ("silu", "tanh"):
        app.text_input(key="experts.custom.name").set_value("studio_apptest_clash")
        app.selectbox(key="experts.custom.activation").set_value(activation)
        app.button(key="experts.custom.submit").click().run()

    assert any("already exists with a different architecture" in e.value for e in app.sidebar.error)
    assert not app.exception


def test_a_pickle_upload_is_named_as_a_pickle(app):
    upload(app, pickle.dumps({"w": [1.0]}), "weights.safetensors")

    assert any("weights.safetensors is a Python pickle" in error.value and "Pickles are refused" in error.value
               for error in app.sidebar.error)


def test_a_pt_file_is_accepted_by_the_picker_and_refused_with_the_reason(app, tmp_path):
    marker = tmp_path / "unpickled"
    upload(app, pickle.dumps(_CreatesFileWhenUnpickled(str(marker))), "model.pt")

    assert not app.exception
    assert any("model.pt is a PyTorch pickle (.pt)" in error.value and "only safetensors" in error.value
               for error in app.sidebar.error)
    assert not marker.exists()


def test_precision_defaults_to_float32_on_the_cpu_and_bf16_on_a_gpu_and_the_other_reaches_the_routing_lab():
    at = new_session()
    settings = at.session_state["_settings"]
    default, other = ("bfloat16", "float32") if settings.device.startswith("cuda") else ("float32", "bfloat16")
    assert settings.precision == default and next(settings.model.parameters()).dtype == getattr(torch, default)
    [radio] = [r for r in at.sidebar.radio if r.label == "Precision"]
    radio.set_value(other).run()

    assert not at.exception
    settings = at.session_state["_settings"]
    assert settings.precision == other and next(settings.model.parameters()).dtype == getattr(torch, other)
    assert any(other in c.value for c in at.sidebar.caption)
    assert chart(at, "lab.heatmap")["panels"][0]["heatmap"]["z"], "the Routing lab still draws with a bf16 model"


def test_the_device_choice_names_each_visible_gpu_and_starts_on_the_first():
    at = new_session()
    [select] = [s for s in at.sidebar.selectbox if s.label == "Device"]
    cards = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]

    assert select.options[: len(cards)] == [f"GPU {i}: {card.name} ({card.total_memory / 2**30:.0f} GiB)"
                                            for i, card in enumerate(cards)]
    assert select.options[-1].startswith("CPU (") and len(select.options) == len(cards) + 1
    assert at.session_state["_settings"].device == ("cuda:0" if cards else "cpu")
