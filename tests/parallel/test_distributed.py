"""Expert parallelism over 2 gloo processes on CPU: the layer equals the single-process layer, the LM trains as one
process would on the ranks' combined batch, and the training command and the GPU benchmark script run.

One pair of processes (torch.multiprocessing.spawn) runs every scenario once per session: the workers compare the
expert-parallel layer against a PiMoESystem with identical weights in the same process and write what they measured
(largest differences, loads, drops, losses) to JSON, which the tests below check.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pimoe.cli.commands import main as cli_main
from pimoe.layer.config import ExpertConfig, PiMoEConfig, RouterConfig
from pimoe.layer.system import PiMoESystem
from pimoe.lm.checkpoint import load_checkpoint
from pimoe.lm.data import CorpusConfig
from pimoe.lm.model import LMConfig, PiMoELM
from pimoe.lm.train import TrainConfig, Trainer
from pimoe.parallel.expert_parallel import ExpertParallelPiMoE, expert_parallel_layers, sync_gradients
from pimoe.parallel.train import ExpertParallelTrainer

pytestmark = pytest.mark.distributed

WORLD = 2
BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "distributed_bench.py"
TOL = 1e-5  # float32: the experts see the same rows in different batch compositions


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _init(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A short timeout turns a collective that one rank skipped into an error instead of a hung test.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=dt.timedelta(seconds=60))


# --- layer scenarios --------------------------------------------------------------------------------------------------

CASES = {
    "top1": dict(top_k=1),
    "top2": dict(top_k=2),
    "top1_capacity": dict(top_k=1, capacity_factor=0.5),
    "top2_capacity": dict(top_k=2, capacity_factor=0.75),
    "top2_one_expert_unused": dict(top_k=2, unused=(1,)),
    "top1_one_expert_unused_capacity": dict(top_k=1, capacity_factor=0.8, unused=(2,)),
    "top2_rank1_receives_nothing": dict(top_k=2, unused=(2, 3)),
    "top2_eight_experts_no_residual": dict(top_k=2, num_experts=8, residual=False),
    "top2_rank1_all_padding": dict(top_k=2, rank1_all_padding=True),
}


def _case_system(top_k: int, capacity_factor: float | None = None, num_experts: int = 4, residual: bool = True,
                 unused: tuple[int, ...] = (), **_) -> PiMoESystem:
    torch.manual_seed(0)  # the same weights on every rank
    types = ("reasoning", "computation", "mathematical", "logical", "language", "creative", "analytical")
    config = PiMoEConfig(hidden_size=32, num_experts=num_experts, expert_types=types, residual=residual,
                         router=RouterConfig(top_k=top_k, capacity_factor=capacity_factor),
                         expert=ExpertConfig(intermediate_size=48))
    system = PiMoESystem(config).train()
    if unused:
        with torch.no_grad():
            # Inputs are positive (see _case_inputs), so a gate row of -1s gives these experts the lowest logit.
            system.router.gate.weight.mul_(0.05)
            system.router.gate.weight[list(unused)] = -1.0
    return system


def _case_inputs(rank: int, case: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(100 + rank)
    shape = (2, 7, 32) if rank == 0 else (3, 5, 32)  # ranks send different numbers of tokens
    x = torch.randn(shape, generator=generator)
    if case.get("unused"):
        x = x.abs() + 0.1
    mask = None
    if rank == 0:
        mask = torch.ones(shape[:2])
        mask[1, 4:] = 0
    elif case.get("rank1_all_padding"):
        mask = torch.zeros(shape[:2])
    return x.requires_grad_(), mask


def _loss(out: torch.Tensor, routing, rank: int) -> torch.Tensor:
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(7 + rank))
    return (out * projection).sum() + routing.router_loss


def _max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    a = torch.zeros(()) if a is None else a
    b = torch.zeros(()) if b is None else b
    return float((a - b).abs().max())


def _run_case(rank: int, case: dict) -> dict:
    system = _case_system(**case)
    reference = copy.deepcopy(system)
    layer = ExpertParallelPiMoE.from_system(system)
    x, mask = _case_inputs(rank, case)
    x_ref = x.detach().clone().requires_grad_()

    out, routing = layer(x, attention_mask=mask, return_routing_info=True)
    out_ref, routing_ref = reference(x_ref, attention_mask=mask, return_routing_info=True)
    _loss(out, routing, rank).backward()
    _loss(out_ref, routing_ref, rank).backward()

    # The layer's expert gradients sum every rank's loss: compare with the sum of the single-process gradients.
    for param in reference.experts.parameters():
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
    expert_diff = max(
        _max_diff(p.grad, p_ref.grad)
        for local, global_id in zip(layer.experts, layer.local_expert_ids, strict=True)
        for p, p_ref in zip(local.parameters(), reference.experts[global_id].parameters(), strict=True)
    )
    global_load = routing.tokens_per_expert.clone()
    dist.all_reduce(global_load)
    return {
        "output": _max_diff(out, out_ref),
        "input_grad": _max_diff(x.grad, x_ref.grad),
        "router_grad": _max_diff(layer.router.gate.weight.grad, reference.router.gate.weight.grad),
        "expert_grad": expert_diff,
        "same_routing": bool(torch.equal(routing.expert_indices, routing_ref.expert_indices)
                             and torch.equal(routing.dropped, routing_ref.dropped)),
        "global_tokens_per_expert": global_load.tolist(),
        "dropped": int(routing.dropped.sum()),
        "local_tokens": routing.num_tokens,
    }


def _check_sync_gradients(rank: int) -> dict:
    """sync_gradients gives the gradient of the mean of the ranks' losses, as one process would compute it."""
    system = _case_system(top_k=2)
    reference = copy.deepcopy(system)
    layer = ExpertParallelPiMoE.from_system(system)
    x, mask = _case_inputs(rank, {})
    out, routing = layer(x, attention_mask=mask, return_routing_info=True)
    _loss(out, routing, rank).backward()
    sync_gradients(layer)
    out_ref, routing_ref = reference(x.detach(), attention_mask=mask, return_routing_info=True)
    _loss(out_ref, routing_ref, rank).backward()
    for param in reference.parameters():  # the mean over ranks of each rank's single-process gradient
        dist.all_reduce(param.grad)
        param.grad.div_(WORLD)
    router = _max_diff(layer.router.gate.weight.grad, reference.router.gate.weight.grad)
    experts = max(
        _max_diff(p.grad, p_ref.grad)
        for local, global_id in zip(layer.experts, layer.local_expert_ids, strict=True)
        for p, p_ref in zip(local.parameters(), reference.experts[global_id].parameters(), strict=True)
    )
    return {"router_grad": router, "expert_grad": experts}


def _check_construction(rank: int) -> dict:
    config = _case_system(top_k=2, num_experts=8).config
    torch.manual_seed(3)
    full = PiMoESystem(config)
    torch.manual_seed(3)
    layer = ExpertParallelPiMoE(config)
    full_state = full.state_dict()
    from_config_diff = max(
        _max_diff(value, full_state[f"experts.{global_id}.{key}"])
        for local, global_id in zip(layer.experts, layer.local_expert_ids, strict=True)
        for key, value in local.state_dict().items()
    )
    gathered = layer.gather_state_dict(dst=0)
    gathered_ok = None
    if rank == 0:
        rebuilt = PiMoESystem(config)
        rebuilt.load_state_dict(gathered)
        gathered_ok = all(torch.equal(v, full_state[k]) for k, v in rebuilt.state_dict().items())
    try:
        ExpertParallelPiMoE(PiMoEConfig(hidden_size=32, num_experts=3, router=RouterConfig(top_k=2)))
        divisibility_error = ""
    except ValueError as error:
        divisibility_error = str(error)
    return {
        "local_expert_ids": list(layer.local_expert_ids),
        "from_config_diff": from_config_diff,
        "gathered_equals_full": gathered_ok,
        "divisibility_error": divisibility_error,
    }


def _layer_part(rank: int, ports: dict[str, int], out_dir: str) -> dict:
    _init(rank, ports["layer"])
    report = {name: _run_case(rank, case) for name, case in CASES.items()}
    report["sync_gradients"] = _check_sync_gradients(rank)
    report["construction"] = _check_construction(rank)
    dist.barrier()
    dist.destroy_process_group()
    return report


def _worker(rank: int, ports: dict[str, int], out_dir: str) -> None:
    """Both scenarios in one pair of processes (starting them costs more than running either); a part that fails
    records its traceback, so the other part's tests still report."""
    for name, part in (("layer", _layer_part), ("lm", _lm_part)):
        try:
            report = part(rank, ports, out_dir)
        except Exception:  # noqa: BLE001 - the traceback goes to the test that reads this part
            report = {"error": traceback.format_exc()}
            if dist.is_initialized():
                dist.destroy_process_group()
        Path(out_dir, f"{name}-rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("expert_parallel")
    ports = {name: _free_port() for name in ("layer", "lm", "cli", "bench")}
    mp.spawn(_worker, args=(ports, str(directory)), nprocs=WORLD, join=True)
    return directory


def _read_reports(directory: Path, part: str) -> list[dict]:
    reports = [json.loads((directory / f"{part}-rank{rank}.json").read_text()) for rank in range(WORLD)]
    for rank, report in enumerate(reports):
        if "error" in report:
            pytest.fail(f"the {part} scenario failed on rank {rank}:\n{report['error']}")
    return reports


@pytest.fixture(scope="module")
def layer_reports(spawned: Path) -> list[dict]:
    return _read_reports(spawned, "layer")


# --- layer tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_expert_parallel_layer_matches_single_process_outputs_and_gradients(layer_reports, case: str) -> None:
    for rank, report in enumerate(layer_reports):
        result = report[case]
        assert result["same_routing"], (rank, result)
        for quantity in ("output", "input_grad", "router_grad", "expert_grad"):
            assert result[quantity] < TOL, (rank, quantity, result)


def test_capacity_cases_really_drop_assignments(layer_reports) -> None:
    for case in ("top1_capacity", "top2_capacity", "top1_one_expert_unused_capacity"):
        assert sum(report[case]["dropped"] for report in layer_reports) > 0, case


def test_unused_expert_cases_leave_those_experts_without_tokens(layer_reports) -> None:
    for case, spec in CASES.items():
        load = layer_reports[0][case]["global_tokens_per_expert"]
        for expert_id in spec.get("unused", ()):
            assert load[expert_id] == 0, (case, load)
        assert sum(load) > 0, case


def test_fully_padded_rank_routes_nothing_and_still_takes_part(layer_reports) -> None:
    assert layer_reports[1]["top2_rank1_all_padding"]["local_tokens"] == 0
    assert layer_reports[0]["top2_rank1_all_padding"]["local_tokens"] == 11


def test_sync_gradients_gives_the_gradient_of_the_mean_loss(layer_reports) -> None:
    for report in layer_reports:
        assert report["sync_gradients"]["router_grad"] < TOL
        assert report["sync_gradients"]["expert_grad"] < TOL


def test_each_rank_holds_its_own_contiguous_share_of_experts(layer_reports) -> None:
    assert [r["construction"]["local_expert_ids"] for r in layer_reports] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_config_constructor_gives_the_single_process_weights_for_the_same_seed(layer_reports) -> None:
    for report in layer_reports:
        assert report["construction"]["from_config_diff"] == 0.0


def test_gathered_state_dict_loads_into_the_full_layer(layer_reports) -> None:
    assert layer_reports[0]["construction"]["gathered_equals_full"] is True


def test_experts_not_divisible_by_world_size_is_a_value_error(layer_reports) -> None:
    for report in layer_reports:
        assert "num_experts=3 is not divisible" in report["construction"]["divisibility_error"]


def test_building_without_a_process_group_names_the_fix() -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(ValueError, match="torchrun"):
        ExpertParallelPiMoE(PiMoEConfig.tiny())


# --- LM training ------------------------------------------------------------------------------------------------------

LM_STEPS = 4
LM_BATCH = 2  # per rank


def _lm_train_config(batch_size: int) -> TrainConfig:
    # Unsupervised routing and no balancing loss: every remaining loss term is a mean over tokens, so the mean of the
    # ranks' losses is exactly the loss of the ranks' batches taken together, and the runs below must agree.
    return TrainConfig(steps=LM_STEPS, batch_size=batch_size, seq_len=32, lr=3e-3, warmup=1, routing_mode="unsupervised",
                       load_balance_weight=0.0, seed=0, corpus=CorpusConfig(seed=0, num_train=80, num_val=6))


def _replicated_vector(model: torch.nn.Module) -> torch.Tensor:
    expert_ids = {id(p) for layer in expert_parallel_layers(model) for p in layer.expert_parameters()}
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if id(p) not in expert_ids])


def _lm_part(rank: int, ports: dict[str, int], out_dir: str) -> dict:
    _init(rank, ports["lm"])
    torch.manual_seed(0)
    trainer = ExpertParallelTrainer(PiMoELM(LMConfig.tiny()), _lm_train_config(LM_BATCH))
    losses = [trainer.mean_loss(record.loss) for record in trainer.run()]
    replicated = _replicated_vector(trainer.model)
    everyone = [torch.empty_like(replicated) for _ in range(WORLD)]
    dist.all_gather(everyone, replicated)
    state = trainer.full_state_dict()
    dist.destroy_process_group()
    report: dict = {"rank": rank, "losses": losses,
                    "replicated_identical": all(torch.equal(everyone[0], other) for other in everyone)}
    if rank == 0:
        # One process, one batch of WORLD * LM_BATCH sequences: the same windows the ranks took between them.
        torch.manual_seed(0)
        reference = Trainer(PiMoELM(LMConfig.tiny()), _lm_train_config(WORLD * LM_BATCH))
        report["reference_losses"] = [record.loss for record in reference.run()]
        reference_state = reference.model.state_dict()
        report["weights_max_diff"] = max(float((state[k] - v).abs().max()) for k, v in reference_state.items())
        report["same_keys"] = sorted(state) == sorted(reference_state)

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(ports["cli"]))
    checkpoint = Path(out_dir, "expert-parallel.safetensors")
    report["cli_exit"] = cli_main([
        "train", "--expert-parallel", "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--seq-len", "32",
        "--num-train", "60", "--num-val", "4", "--no-progress", "--device", "cpu", "--out", str(checkpoint),
    ])

    # The GPU benchmark script, whole, at tiny sizes on gloo: only the device differs from the real run.
    os.environ["MASTER_PORT"] = str(ports["bench"])
    spec = importlib.util.spec_from_file_location("distributed_bench", BENCH_SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report["bench_exit"] = bench.main(["--device", "cpu", "--tiny", "--experts", "4", "--warmup", "1", "--repeats", "1",
                                       "--out", str(Path(out_dir, "bench.json"))])
    return report


@pytest.fixture(scope="module")
def lm_reports(spawned: Path) -> tuple[list[dict], Path]:
    return _read_reports(spawned, "lm"), spawned


def test_expert_parallel_training_matches_one_process_on_the_combined_batch(lm_reports) -> None:
    reports, _ = lm_reports
    report = reports[0]
    assert report["same_keys"]
    assert report["weights_max_diff"] < 1e-4, report["weights_max_diff"]
    for distributed, single in zip(report["losses"], report["reference_losses"], strict=True):
        assert abs(distributed - single) < 1e-4, (report["losses"], report["reference_losses"])


def test_expert_parallel_training_lowers_the_loss(lm_reports) -> None:
    losses = lm_reports[0][0]["losses"]
    assert len(losses) == LM_STEPS
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses


def test_replicated_weights_stay_identical_across_ranks(lm_reports) -> None:
    assert all(report["replicated_identical"] for report in lm_reports[0])


def test_train_command_with_expert_parallel_writes_a_loadable_checkpoint(lm_reports) -> None:
    reports, directory = lm_reports
    assert [report["cli_exit"] for report in reports] == [0, 0]
    model = load_checkpoint(directory / "expert-parallel.safetensors")
    assert model.checkpoint_metadata["expert_parallel"]["world_size"] == WORLD
    assert len(model.blocks[0].moe.experts) == LMConfig.tiny().moe.num_experts
    ids = torch.tensor([model.tokenizer.encode("Ana has 3 apples")])
    assert torch.isfinite(model(ids).logits).all()


def test_benchmark_script_measures_both_sides_and_checks_equivalence(lm_reports) -> None:
    reports, directory = lm_reports
    assert [report["bench_exit"] for report in reports] == [0, 0]
    results = json.loads((directory / "bench.json").read_text())
    assert results["meta"]["world_size"] == WORLD and results["meta"]["backend"] == "gloo"
    equivalence = results["equivalence_float32"]
    assert equivalence["gathered_state_matches"] is True
    assert max(v for k, v in equivalence.items() if k.endswith("relative_error")) < 1e-5, equivalence
    (row,) = results["results"]
    assert row["errors"] == {}
    for side in ("single_device", "expert_parallel"):
        for kind in ("layer", "train_step"):
            assert row[side][kind]["tokens_per_s"] > 0, (side, kind)
    assert 0 < row["expert_parallel"]["train_step"]["exchange"]["share"] < 1
    assert row["expert_parallel"]["train_step"]["exchange"]["collectives_per_call"] == 5 * 2  # 3 forward + 2 backward
