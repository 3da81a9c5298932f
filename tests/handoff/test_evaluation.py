"""The held-out problem set and the hand-off evaluation: seeded, out of the training range, and measured on the demo
checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pimoe.cli.commands import main as cli_main
from pimoe.handoff.decode import HandoffTrigger, TriggerCandidate, label_positions
from pimoe.handoff.evaluation import (
    ComputeEvalConfig,
    answer_of,
    latest_report,
    run_compute_eval,
    score_trigger,
    summary_rows,
    trigger_rows,
)
from pimoe.handoff.expert import ComputationExpert
from pimoe.handoff.extract import extract_expression, find_expressions
from pimoe.handoff.problems import (
    DEV_SEED,
    EVAL_SEED,
    PROBLEM_KINDS,
    TRAINING_MAX_OPERAND,
    ProblemSetConfig,
    build_control_texts,
    build_problems,
)
from pimoe.lm.checkpoint import load_checkpoint

DEMO = Path(__file__).resolve().parents[2] / "assets" / "pimoe-demo.safetensors"
EXPERTS = ["language", "computation"]


@pytest.fixture(scope="module")
def tiny_report():
    model = load_checkpoint(DEMO)
    return run_compute_eval(model, ComputeEvalConfig(num_problems=7, num_controls=3, warmup=0, max_new_tokens=8))


def test_evaluation_shares_turns_between_problems_but_never_inside_a_timed_answer():
    """A timed answer must not hand its turn to other work (that work's time would be counted as the answer's latency),
    while the evaluation as a whole lets other work in between problems (pimoe.turns)."""
    from pimoe.turns import sharing_turns

    model = load_checkpoint(DEMO)
    turns = []
    with sharing_turns(lambda: turns.append(1)):
        run_compute_eval(model, ComputeEvalConfig(num_problems=3, num_controls=3, warmup=0, max_new_tokens=4))
    assert len(turns) == 3


def test_same_seed_gives_the_same_problems_and_another_seed_other_ones():
    config = ProblemSetConfig(seed=3, num_problems=14, num_controls=6)

    assert build_problems(config) == build_problems(config)
    assert build_control_texts(config) == build_control_texts(config)
    other = ProblemSetConfig(seed=4, num_problems=14, num_controls=6)
    assert [p.prompt for p in build_problems(other)] != [p.prompt for p in build_problems(config)]


def test_dev_and_eval_sets_share_no_text():
    dev = ProblemSetConfig(seed=DEV_SEED)
    held_out = ProblemSetConfig(seed=EVAL_SEED)

    dev_texts = {p.reference for p in build_problems(dev)} | set(build_control_texts(dev))
    eval_texts = {p.reference for p in build_problems(held_out)} | set(build_control_texts(held_out))
    assert dev_texts.isdisjoint(eval_texts)


def test_every_operand_lies_outside_the_training_range():
    config = ProblemSetConfig(num_problems=70, min_digits=3, max_digits=6)
    problems = build_problems(config)

    assert {p.kind for p in problems} == set(PROBLEM_KINDS)
    for problem in problems:
        assert all(operand > TRAINING_MAX_OPERAND for operand in problem.operands), problem
        assert all(100 <= operand for operand in problem.operands)


def test_reference_answers_are_exact_and_the_expression_is_extractable():
    expert = ComputationExpert()
    for problem in build_problems(ProblemSetConfig(num_problems=35)):
        assert expert.evaluate(problem.expression).text == problem.answer, problem
        assert extract_expression(problem.prompt).expression == problem.expression
        assert problem.reference.startswith(problem.prompt + problem.answer)
        assert find_expressions(problem.reference)[-1].result == problem.answer


def test_control_texts_hold_equals_signs_but_no_labels():
    for text in build_control_texts(ProblemSetConfig(num_controls=9)):
        assert "=" in text
        assert label_positions(text) == []


def test_problem_set_config_names_the_bad_value():
    with pytest.raises(ValueError, match="min_digits"):
        ProblemSetConfig(min_digits=2)
    with pytest.raises(ValueError, match="num_problems"):
        ComputeEvalConfig(num_problems=0)
    with pytest.raises(ValueError, match="min_digits .* must be <= max_digits"):
        ProblemSetConfig(min_digits=5, max_digits=4)
    with pytest.raises(ValueError, match=r"num_problems must be an int in \[1, 100,000\], got 1000000000"):
        ProblemSetConfig(num_problems=10**9)  # a mistyped count, refused before a list of a billion problems
    with pytest.raises(ValueError, match="num_controls"):
        ComputeEvalConfig(num_controls=10**6)


def test_answer_is_the_number_the_continuation_starts_with():
    assert answer_of("777777 apples.") == "777777"
    assert answer_of(" -3.5 m") == "-3.5"
    assert answer_of("471609/209=") == "471609/209"
    assert answer_of("are left.") is None


def _candidate(position: int, computation_prob: float, expression: str | None) -> TriggerCandidate:
    probs = torch.tensor([[1 - computation_prob, computation_prob]])  # (L=1, E=2)
    return TriggerCandidate(position=position, char_offset=position - 1, probs=probs, expression=expression)


def test_trigger_scores_count_hits_against_labels():
    candidates = [
        [_candidate(5, 0.9, "1+2"), _candidate(9, 0.9, None), _candidate(12, 0.2, "3*4")],  # labels 5 and 12
        [_candidate(4, 0.95, "7-1")],  # no label: a false positive
    ]
    scores = score_trigger(candidates, [[5, 12], []], HandoffTrigger(threshold=0.5, layer=0), EXPERTS)

    assert (scores["trigger"].fired, scores["trigger"].true_positives, scores["trigger"].labels) == (2, 1, 2)
    assert scores["trigger"].precision == 0.5 and scores["trigger"].recall == 0.5
    assert (scores["router"].fired, scores["router"].true_positives) == (3, 1)
    assert (scores["extraction"].fired, scores["extraction"].true_positives) == (3, 2)
    assert math.isnan(score_trigger([[]], [[]], HandoffTrigger(), EXPERTS)["trigger"].precision)


def test_expert_answers_every_extracted_problem_and_beats_plain_generation(tiny_report):
    report = tiny_report
    plain, expert = report.methods["plain"], report.methods["expert"]

    assert expert.accuracy > plain.accuracy
    assert report.extraction_rate == 1.0
    assert report.expert_accuracy_when_extracted == 1.0
    assert report.methods["multi_round"].correct == expert.correct
    for value in (report.extraction_rate, report.handoff_rate, plain.accuracy, expert.accuracy):
        assert 0.0 <= value <= 1.0
    for score in report.trigger.values():
        assert 0.0 <= score.precision <= 1.0 and 0.0 <= score.recall <= 1.0
    assert report.trigger["trigger"].labels >= 7  # one label per problem, two in the two-step one


def test_report_latencies_and_forward_passes_are_measured_per_problem(tiny_report):
    for result in tiny_report.methods.values():
        assert len(result.latency_ms) == 7 and all(ms > 0 for ms in result.latency_ms)
        assert all(passes >= 1 for passes in result.forward_passes)
        assert all(tokens >= passes for tokens, passes in zip(result.tokens_through_model, result.forward_passes,
                                                               strict=True))
    data = json.loads(json.dumps(tiny_report.to_dict()))
    assert [row["method"] for row in summary_rows(data)] == ["plain", "expert", "multi_round"]
    summary = data["summary"]["expert"]
    assert summary["latency_p95_ms"] >= summary["latency_median_ms"] > 0
    assert [row["trigger"] for row in trigger_rows(data)] == ["router + extraction", "router gate only",
                                                            "extraction only"]
    assert data["meta"]["date"] and data["meta"]["device"] == "cpu"


def test_command_prints_the_table_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "compute-eval-2026-01-01.json"
    threads = torch.get_num_threads()
    try:
        code = cli_main(["eval-compute", "--checkpoint", str(DEMO), "--num-problems", "7", "--num-controls", "3",
                         "--max-new-tokens", "6", "--heldout-count", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)

    assert code == 0
    printed = capsys.readouterr().out
    assert "exact answers" in printed and "router + extraction" in printed
    # Every routing accuracy comes with its baselines and what it measures.
    assert "all-language" in printed and "chance k/E" in printed and "rule-based regex tagger" in printed
    assert "in-template" in printed and "out-of-template" in printed and "hand-off precision" in printed
    path, data = latest_report(tmp_path)
    assert path == out and data["config"]["num_problems"] == 7
    routing = data["generalisation"]["routing"]
    assert routing["out_of_template"]["chance"] == 2 / 8
    assert {t["name"] for t in routing["out_of_template"]["texts"]} >= {"german", "russian", "logic", "code"}
    assert latest_report(tmp_path / "empty") is None


def test_a_negative_held_out_count_is_refused_before_any_evaluation(tmp_path, capsys, monkeypatch):
    import pimoe.cli.eval_compute as command

    def fail(*args, **kwargs):
        raise AssertionError("the evaluation ran before the arguments were checked")

    monkeypatch.setattr(command, "run_compute_eval", fail)
    assert cli_main(["eval-compute", "--checkpoint", str(DEMO), "--heldout-count", "-1",
                     "--out", str(tmp_path / "x.json")]) == 2
    assert "--heldout-count must be >= 0, got -1" in capsys.readouterr().err


def test_an_unwritable_report_path_is_refused_before_any_evaluation(tmp_path, capsys, monkeypatch):
    import pimoe.cli.eval_compute as command

    def fail(*args, **kwargs):
        raise AssertionError("the evaluation ran before --out was checked")

    monkeypatch.setattr(command, "run_compute_eval", fail)
    (tmp_path / "blocker").write_text("a file where a folder would go")
    assert cli_main(["eval-compute", "--checkpoint", str(DEMO), "--out", str(tmp_path / "blocker" / "r.json")]) == 2
    assert "cannot create the report's folder" in capsys.readouterr().err
