"""Trainer: learning, live changes, pause/resume, controller contract, evaluation definitions, the train command."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import pytest
import torch

from pimoe import cli
from pimoe.lm.data import Corpus, CorpusConfig, generate_corpus
from pimoe.lm.metrics import purity_from_counts, unigram_loss
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.lm.text import expert_type_vocabulary
from pimoe.lm.train import StepRecord, TrainConfig, Trainer
from pimoe.measure.metrics import routing_accuracy


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return generate_corpus(CorpusConfig(seed=3, num_train=300, num_val=30))


def make_trainer(corpus: Corpus, seed: int = 0, dropout: float = 0.0, **changes) -> Trainer:
    torch.manual_seed(seed)
    model_config = LMConfig.tiny()
    model_config.dropout = dropout
    config = TrainConfig(**{"steps": 30, "batch_size": 8, "seq_len": 64, "warmup": 5, "seed": seed, **changes})
    return Trainer(PiMoELM(model_config), config, corpus)


def test_short_supervised_training_lowers_loss_and_raises_routing_accuracy(corpus: Corpus) -> None:
    trainer = make_trainer(corpus)
    before = trainer.evaluate()
    records = list(trainer.run())
    after = trainer.evaluate()
    assert len(records) == 30 and records[-1].step == 30
    assert after.lm_loss < before.lm_loss - 1.0
    assert after.routing_accuracy > before.routing_accuracy + 0.2
    assert after.routing_accuracy > 0.7
    assert len(after.routing_accuracy_per_layer) == 2
    assert sum(r.loss for r in records[-5:]) < sum(r.loss for r in records[:5])


def test_step_record_carries_per_layer_load_and_router_settings(corpus: Corpus) -> None:
    trainer = make_trainer(corpus)
    record = trainer.step()
    assert isinstance(record, StepRecord)
    assert len(record.load) == 2 and all(abs(sum(layer) - 1.0) < 1e-9 for layer in record.load)
    assert record.loss == pytest.approx(record.lm_loss + record.load_balance_loss + record.z_loss + record.supervised_loss,
                                        rel=1e-5)
    assert record.supervised_loss > 0
    assert record.tokens_per_s > 0 and record.step_ms > 0
    assert record.temperature == 1.0 and record.load_balance_weight == 0.01
    assert len(record.selection_bias) == 2 and len(record.selection_bias[0]) == 4
    assert 0.0 <= record.routing_accuracy <= 1.0
    assert record.to_dict()["step"] == 1


def test_unsupervised_mode_trains_routers_without_labels(corpus: Corpus) -> None:
    trainer = make_trainer(corpus, routing_mode="unsupervised", supervised_weight=0.7)
    records = list(trainer.run(3))
    assert all(r.supervised_loss == 0.0 for r in records)
    assert all(router.config.supervised_weight == 0.0 for router in trainer.model.routers)


def test_live_changes_apply_at_the_next_step_and_are_recorded(corpus: Corpus) -> None:
    trainer = make_trainer(corpus)
    trainer.step()
    trainer.set_temperature(0.5)
    trainer.set_load_balance_weight(0.05)
    assert trainer.state.pending_events  # not applied until the next step
    assert trainer.model.routers[0].temperature == 1.0
    record = trainer.step()
    assert record.events == ["temperature 1 → 0.5", "load balance weight 0.01 → 0.05"]
    assert record.temperature == 0.5 and record.load_balance_weight == 0.05
    assert all(r.temperature == 0.5 and r.load_balance_weight == 0.05 for r in trainer.model.routers)
    assert trainer.step().events == []
    assert trainer.model.config.moe.router.temperature == 0.5  # what a checkpoint saves


def test_live_changes_reject_bad_values(corpus: Corpus) -> None:
    trainer = make_trainer(corpus)
    with pytest.raises(ValueError, match="temperature"):
        trainer.set_temperature(0.0)
    with pytest.raises(ValueError, match="load_balance_weight"):
        trainer.set_load_balance_weight(-1.0)


def test_pausing_with_other_random_work_in_between_changes_nothing(corpus: Corpus) -> None:
    straight = make_trainer(corpus, dropout=0.2)
    paused = make_trainer(corpus, dropout=0.2)
    straight_losses = [r.loss for r in straight.run(6)]
    paused_losses = [r.loss for r in paused.run(3)]
    torch.rand(1000)  # a dashboard drawing random numbers, sampling text, routing a text while paused
    paused.model.generate("Ana", max_new_tokens=3, sampling_temperature=1.0)
    paused.model.route_text("1+1=2")
    paused_losses += [r.loss for r in paused.run(3)]
    assert paused_losses == straight_losses
    for a, b in zip(straight.model.parameters(), paused.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert paused.state.step == 6 and paused.state.tokens_seen == straight.state.tokens_seen


def test_controller_is_called_after_each_step_and_its_output_recorded(corpus: Corpus) -> None:
    class HalveTemperature:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def update(self, record, routers):
            self.seen.append(record.step)
            for router in routers:
                router.temperature = router.temperature / 2
            return {"temperature": routers[0].temperature}

    controller = HalveTemperature()
    torch.manual_seed(0)
    config = TrainConfig(steps=2, batch_size=8, seq_len=64, warmup=1)
    trainer = Trainer(PiMoELM(LMConfig.tiny()), config, corpus, controller=controller)
    records = list(trainer.run())
    assert controller.seen == [1, 2]
    assert [r.adaptation for r in records] == [{"temperature": 0.5}, {"temperature": 0.25}]
    assert records[1].temperature == 0.5  # step 2 ran with what the controller set after step 1


def test_evaluation_accuracy_is_the_metrics_definition_per_layer(corpus: Corpus) -> None:
    trainer = make_trainer(corpus, eval_max_batches=1)
    list(trainer.run(5))
    result = trainer.evaluate()
    batch = next(trainer.val_set.batches(trainer.config.batch_size, shuffle=False))
    model = trainer.model.eval()
    with torch.no_grad():
        routing = model(batch.input_ids, return_routing_info=True).routing
    targets = model.mapping.target_expert_type_ids(batch.token_types, model.expert_types).reshape(-1)
    vocabulary = expert_type_vocabulary(model.expert_types)
    type_ids = torch.tensor([vocabulary.index(t) for t in model.expert_types])
    expected = [routing_accuracy(r, targets[r.token_positions], type_ids) for r in routing]
    assert result.routing_accuracy_per_layer == pytest.approx(expected)
    assert result.routing_accuracy == pytest.approx(sum(expected) / len(expected))
    assert result.tokens == batch.target_ids.numel()


def test_unigram_baseline_is_the_smoothed_training_frequency_cross_entropy() -> None:
    train = torch.tensor([0, 0, 0, 1])
    held_out = torch.tensor([0, 1, 2])
    probs = torch.tensor([4.0, 2.0, 1.0]) / 7.0  # add-one counts over a vocabulary of 3
    expected = float(-(probs.log()).mean())
    assert unigram_loss(train, held_out, vocab_size=3) == pytest.approx(expected)


def test_purity_counts_majorities_from_both_sides() -> None:
    counts = torch.tensor([[3, 1, 0], [2, 0, 0]])  # rows: token types, columns: top-1 experts
    type_purity, expert_purity = purity_from_counts(counts)
    assert type_purity == pytest.approx(5 / 6)
    assert expert_purity == pytest.approx(4 / 6)
    collapsed = torch.tensor([[4, 0], [2, 0]])  # every token on expert 0
    assert purity_from_counts(collapsed) == pytest.approx((1.0, 4 / 6))
    assert all(math.isnan(v) for v in purity_from_counts(torch.zeros(2, 2)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"routing_mode": "both"}, "routing_mode"),
        ({"lr": 0.0}, "lr"),
        ({"steps": -1}, "steps"),
        ({"temperature": float("nan")}, "temperature"),
        ({"device": "gpu"}, "device"),
    ],
)
def test_train_config_rejects_bad_values(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_trainer_rejects_seq_len_beyond_the_model(corpus: Corpus) -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        Trainer(PiMoELM(LMConfig.tiny()), TrainConfig(seq_len=65), corpus)


def test_train_command_saves_a_loadable_checkpoint(tmp_path, capsys) -> None:
    from pimoe.lm.checkpoint import load_checkpoint

    out = tmp_path / "tiny.safetensors"
    code = cli.main(["train", "--preset", "tiny", "--steps", "3", "--seq-len", "32", "--batch-size", "4",
                     "--num-train", "40", "--num-val", "8", "--no-progress", "--heldout-count", "1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "routing accuracy" in printed and "unigram baseline" in printed
    assert "all-language" in printed and "out-of-template" in printed
    model = load_checkpoint(out)
    assert model.checkpoint_metadata["seed"] == 0
    assert "--seed 0" in model.checkpoint_metadata["command"]
    assert model.checkpoint_metadata["eval"]["tokens"] > 0
    generalisation = model.checkpoint_metadata["generalisation"]
    assert generalisation["routing"]["out_of_template"]["chance"] == 2 / 4
    assert generalisation["handoff"]["labels"] > 0


def test_expert_parallel_flag_hands_over_to_the_distributed_module(monkeypatch) -> None:
    received = []
    module = types.ModuleType("pimoe.parallel.train")
    module.train_expert_parallel = lambda config, model_config, out, **kw: received.append(config.seed) or 0
    monkeypatch.setitem(sys.modules, "pimoe.parallel.train", module)
    assert cli.main(["train", "--expert-parallel", "--seed", "4"]) == 0
    assert received == [4]


@pytest.mark.parametrize(("setup", "reason"), [
    ({"device": "cpu"}, "CUDA device"),
    ({"controller": True}, "adaptive controller"),
    ({"dropout": 0.1}, "dropout"),
    ({"float32": True}, "float32 training on CUDA"),
])
def test_a_whole_step_graph_names_what_it_cannot_capture(setup, reason):
    from pimoe.lm.step_graph import step_graph_unsupported

    model = PiMoELM(LMConfig.demo() if "dropout" not in setup else dataclasses.replace(LMConfig.demo(),
                                                                                      dropout=setup["dropout"]))
    device = torch.device(setup.get("device", "cuda"))
    got = step_graph_unsupported(model, device, object() if setup.get("controller") else None,
                                 autocast_bf16=not setup.get("float32"))
    assert got is not None and reason in got
    assert step_graph_unsupported(PiMoELM(LMConfig.demo()), torch.device("cuda"), None) is None


def test_float32_whole_step_graph_is_allowed_once_the_grouped_rows_kernels_are_on():
    from pimoe.cuda.tuning import tuning_overrides
    from pimoe.lm.step_graph import step_graph_unsupported

    model = PiMoELM(LMConfig.demo())
    with tuning_overrides(grouped_rows_kernels=True):
        assert step_graph_unsupported(model, torch.device("cuda"), None, autocast_bf16=False) is None


def test_cuda_graph_training_on_the_cpu_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="cuda_graph: CUDA graphs need a CUDA device"):
        Trainer(PiMoELM(LMConfig.demo()), TrainConfig(steps=1, batch_size=2, seq_len=16, cuda_graph=True,
                                                      corpus=CorpusConfig(seed=0, num_train=16, num_val=4)))


@pytest.mark.parametrize(("out", "message"), [
    ("{tmp}/model.pt", "must end in .safetensors"),
    ("{tmp}/blocker/model.safetensors", "cannot create the checkpoint's folder"),
    ("{tmp}/folder.safetensors", "is a folder"),
])
def test_train_command_checks_its_out_path_before_training(tmp_path, capsys, monkeypatch, out, message) -> None:
    """A bad --out fails at once: found only after training, it would cost the whole run."""
    import pimoe.cli.train as train_cli

    (tmp_path / "blocker").write_text("a file where a folder would go")
    (tmp_path / "folder.safetensors").mkdir()

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(train_cli, "run_training_loop", must_not_train)
    code = cli.main(["train", "--preset", "tiny", "--steps", "1", "--no-progress", "--out", out.format(tmp=tmp_path)])
    assert code != 0
    assert message in capsys.readouterr().err


def test_train_command_refuses_a_negative_held_out_count_before_training(tmp_path, capsys, monkeypatch) -> None:
    import pimoe.cli.train as train_cli

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started before --heldout-count was checked")

    monkeypatch.setattr(train_cli, "run_training_loop", must_not_train)
    code = cli.main(["train", "--preset", "tiny", "--heldout-count", "-1", "--out", str(tmp_path / "m.safetensors")])
    assert code != 0 and "--heldout-count must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize(("documents", "message"), [
    ([123, 456], "corpus documents must be str, got a int: 123"),
    (["fine text", b"bytes"], "got a bytes"),
    (["", "", "one"], "at least 2 non-empty documents"),
])
def test_a_corpus_of_documents_that_are_not_text_is_named(documents, message) -> None:
    with pytest.raises(ValueError, match=message):
        Trainer(PiMoELM(LMConfig.tiny()), TrainConfig(steps=1, batch_size=2, seq_len=16), corpus=documents)
