"""`launch_within_shared_memory`: a launch shape too deep for the GPU's shared memory runs in fewer stages.

The kernel here is a stand-in with Triton's own launch check (`OutOfResources` raised on the host before any launch,
as Triton's launcher does when a compiled program needs more shared memory than the GPU has); the GPU test in
test_fast_path.py runs the real kernels past an H100's limit.
"""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("triton")
from triton.runtime.errors import OutOfResources  # noqa: E402

from pimoe.cuda.ops import launch_options  # noqa: E402
from pimoe.cuda.ops.launch_options import launch_within_shared_memory  # noqa: E402


class KernelWithSharedMemoryLimit:
    """kernel[grid](*args, **options): each stage takes `stage_bytes`, the GPU has `limit` bytes a block."""

    def __init__(self, stage_bytes: int, limit: int, other_error: Exception | None = None) -> None:
        self.stage_bytes, self.limit, self.other_error = stage_bytes, limit, other_error
        self.tried: list[int] = []
        self.launched: list[tuple] = []

    def __getitem__(self, grid):
        def launch(*args, **options):
            self.tried.append(options["num_stages"])
            if self.other_error is not None:
                raise self.other_error
            need = options["num_stages"] * self.stage_bytes
            if need > self.limit:
                raise OutOfResources(need, self.limit, "shared memory")
            self.launched.append((grid, args, options["num_stages"], options.get("BM")))
        return launch


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.setattr(launch_options, "_fitted_stages", {})


def test_a_shape_that_fits_launches_once_as_asked() -> None:
    kernel = KernelWithSharedMemoryLimit(stage_bytes=48_000, limit=232_448)
    launch_within_shared_memory(kernel, (7,), "x", BM=128, num_stages=4)
    assert kernel.tried == [4] and kernel.launched == [((7,), ("x",), 4, 128)]


def test_a_deep_shape_runs_in_the_most_stages_that_fit_and_warns_once(caplog) -> None:
    kernel = KernelWithSharedMemoryLimit(stage_bytes=49_152, limit=101_376)  # 2 stages fit a consumer Blackwell
    with caplog.at_level(logging.WARNING, logger=launch_options.__name__):
        launch_within_shared_memory(kernel, (3,), "x", BM=128, num_stages=4)
        launch_within_shared_memory(kernel, (5,), "y", BM=128, num_stages=4)
    assert [stages for _, _, stages, _ in kernel.launched] == [2, 2]
    assert [args for _, args, _, _ in kernel.launched] == [("x",), ("y",)]
    assert kernel.tried == [4, 3, 2, 4, 2], "the second call goes straight to the stage count that fitted"
    assert caplog.text.count("pipeline stages need more shared memory") == 1


def test_each_shape_is_fitted_on_its_own() -> None:
    kernel = KernelWithSharedMemoryLimit(stage_bytes=40_000, limit=100_000)
    launch_within_shared_memory(kernel, (1,), "x", BM=128, num_stages=4)
    launch_within_shared_memory(kernel, (1,), "x", BM=64, num_stages=4)
    assert kernel.tried == [4, 3, 2, 4, 3, 2]


def test_a_program_that_fits_in_no_stage_count_and_other_errors_are_raised() -> None:
    with pytest.raises(OutOfResources, match="shared memory"):
        launch_within_shared_memory(KernelWithSharedMemoryLimit(stage_bytes=300_000, limit=232_448), (1,),
                                    num_stages=3)
    threads = KernelWithSharedMemoryLimit(1, 1, other_error=OutOfResources(2048, 1024, "threads"))
    with pytest.raises(OutOfResources, match="threads"):
        launch_within_shared_memory(threads, (1,), num_stages=3)
    assert threads.tried == [3], "only a shortage of shared memory is retried"
    with pytest.raises(ValueError):
        launch_within_shared_memory(KernelWithSharedMemoryLimit(1, 1, other_error=ValueError("bad")), (1,),
                                    num_stages=3)
