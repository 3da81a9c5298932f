"""`evaluating`: eval mode for a block, each module's own mode back afterwards, an eval module never touched."""

import torch
from torch import nn

from pimoe.layer.modes import evaluating
from pimoe.lm.model import LMConfig, PiMoELM


def test_training_module_is_evaluated_then_restored_even_after_an_error():
    module = nn.Dropout(0.5).train()
    try:
        with evaluating(module):
            assert not module.training
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert module.training


def test_module_in_eval_mode_is_never_flipped():
    module = nn.Linear(2, 2).eval()
    calls = []
    original = module.train
    module.train = lambda mode=True: calls.append(mode) or original(mode)
    with evaluating(module):
        pass
    assert calls == [] and not module.training


def test_routing_a_text_never_flips_a_shared_models_training_flag():
    torch.manual_seed(0)
    model = PiMoELM(LMConfig.tiny()).eval()
    flips = []
    for sub in model.modules():
        original = sub.train
        sub.train = (lambda orig: lambda mode=True: flips.append(mode) or orig(mode))(original)
    model.route_text("2 + 2 = 4 and the cat sat")
    model.generate("1+1=", max_new_tokens=3)
    assert flips == []


def test_routing_a_text_keeps_a_training_model_in_training():
    model = PiMoELM(LMConfig.tiny()).train()
    model.route_text("abc")
    assert model.training and all(m.training for m in model.modules())
