"""Token classes, class × expert shares and co-activation, on hand-built routing records."""

import torch

from pimoe.hf.specialization import class_expert_share, classify_token, coactivation, vocabulary_expert_share
from pimoe.layer.routing import RoutingInfo


def _routing(indices):
    indices = torch.tensor(indices)
    tokens, _ = indices.shape
    zeros = torch.zeros(())
    return RoutingInfo(torch.zeros(tokens, 4), torch.full((tokens, 4), 0.25), indices, torch.full(indices.shape, 0.5),
                       torch.zeros(indices.shape, dtype=torch.bool), torch.arange(tokens), (1, tokens),
                       torch.zeros(4), torch.zeros(4), torch.zeros(tokens), torch.zeros(tokens), zeros, zeros, zeros,
                       zeros, None, 1.0, ["e0", "e1", "e2", "e3"])


def test_token_classes_from_text():
    assert [classify_token(t) for t in ["12", "Ġ7", "+", "=", "Ana", " apples", "12+", ".", ""]] == [
        "number", "number", "operator", "operator", "word", "word", "other", "other", "other"]


def test_class_share_rows_sum_to_k_and_absent_classes_are_nan():
    routing = _routing([[0, 1], [0, 2], [3, 1]])
    share = class_expert_share(routing, ["number", "number", "word"])
    torch.testing.assert_close(share[0], torch.tensor([1.0, 0.5, 0.5, 0.0]))
    torch.testing.assert_close(share[2], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert torch.isnan(share[1]).all() and torch.isnan(share[3]).all()


def test_coactivation_counts_pairs_per_token():
    matrix = coactivation(_routing([[0, 1], [0, 1], [2, 3]]))
    assert matrix[0, 1] == matrix[1, 0] == 2 / 3
    assert matrix[0, 0] == 2 / 3 and matrix[0, 2] == 0
    torch.testing.assert_close(matrix, matrix.t())


def test_vocabulary_share_per_repeated_token_most_frequent_first():
    routing = _routing([[0, 1], [0, 2], [3, 1], [0, 1], [2, 3]])
    ids, counts, share = vocabulary_expert_share(routing, torch.tensor([7, 7, 9, 7, 5]))
    assert ids.tolist() == [7] and counts.tolist() == [3]  # 9 and 5 occur once
    torch.testing.assert_close(share[0], torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))
