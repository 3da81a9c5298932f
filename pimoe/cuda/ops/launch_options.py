"""Host-side launch options shared by the ops: bucket counts, dot precision, block depths, PDL and TMA support.

Legend: E experts, EP a power of two >= E + 1.

Nothing here imports Triton at module level or reads a value back from the device, so a call can be captured in a
CUDA graph.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from pimoe.cuda.layout import next_pow2
from pimoe.cuda.packing import PackedExperts
from pimoe.cuda.tuning import active_tuning

__all__ = ["dot_precision", "expert_buckets", "fit_block_k", "launch_within_shared_memory", "one_activation",
           "pdl_options", "tma_available"]

logger = logging.getLogger(__name__)


def expert_buckets(num_experts: int) -> int:
    """EP: the experts plus the dropped bucket, rounded up to a power of two (at least 16 for tl.dot)."""
    return max(16, next_pow2(num_experts + 1))


def dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs: honour torch's own switch, as torch.matmul does (tf32 only when the user allowed it).
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def fit_block_k(hidden: int, wanted: int) -> int:
    block = wanted
    while block > 16 and hidden % block:
        block //= 2
    return block


def one_activation(packed: PackedExperts) -> int:
    """The activation code every expert shares, or -1 (then each program reads its expert's code)."""
    return packed.act_host[0] if len(set(packed.act_host)) == 1 else -1


def pdl_options(device: torch.device) -> dict:
    """Launch options for programmatic dependent launch (`jit.release_dependents`): each kernel's launch and
    prologue overlap the previous kernel's tail. Empty (plain launches) unless the active tuning's `pdl` is on and
    the GPU (Hopper and newer) and Triton have it."""
    if not active_tuning().pdl or device.type != "cuda":
        return {}
    index = torch.cuda.current_device() if device.index is None else device.index
    return {"PDL": True, "launch_pdl": True} if _pdl_on_cuda_device(index) else {}


@functools.cache
def _pdl_on_cuda_device(index: int) -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.get_device_capability(index) < (9, 0):
        return False
    try:
        from triton.language.extra.cuda import gdc_wait  # noqa: F401
    except ImportError:
        return False
    return True


def tma_available(device: torch.device) -> bool:
    """Whether Triton can build tensor-memory-accelerator descriptors for this device (Hopper and newer)."""
    if device.type != "cuda":
        return False
    return _tma_on_cuda_device(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _tma_on_cuda_device(index: int) -> bool:
    # cached: asked on every large-batch call
    if torch.cuda.get_device_capability(index) < (9, 0):
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


# (kernel, constexprs and launch options, argument dtypes) -> the stage count that fitted, for shapes that did not
_fitted_stages: dict[tuple, int] = {}


def launch_within_shared_memory(kernel, grid: tuple, *args, **options) -> None:
    """`kernel[grid](*args, **options)`, with `num_stages` lowered until the program fits the GPU's shared memory.

    Why: the launch shapes are tuned on Hopper (227 KB a block; the small down GEMM's four stages take 196 KB), and
    a GPU with TMA but less shared memory (consumer Blackwell, ~100 KB) would refuse them. Such a GPU runs the same
    tiles in fewer stages, with one warning per shape, instead of failing. Triton checks the size on the host before
    anything is launched, so a refused try leaves nothing on the stream (a capture stays valid). On a GPU where the
    shape fits this is one launch inside a try block: no lookup on the hot path."""
    wanted = options["num_stages"]
    try:
        kernel[grid](*args, **options)
        return
    except Exception as error:  # Triton's OutOfResources; Triton is imported only once it is needed
        if not _is_shared_memory_shortage(error) or wanted <= 1:
            raise
    key = (kernel, tuple(sorted(options.items())),
           tuple(str(getattr(getattr(arg, "base", arg), "dtype", "")) for arg in args))
    stages = _fitted_stages.get(key, wanted - 1)
    while True:
        try:
            kernel[grid](*args, **{**options, "num_stages": stages})
            break
        except Exception as error:
            if not _is_shared_memory_shortage(error) or stages <= 1:
                raise
            stages -= 1
    if key not in _fitted_stages:
        logger.warning("%s: %d pipeline stages need more shared memory than this GPU has; running %d",
                       getattr(getattr(kernel, "fn", kernel), "__name__", kernel), wanted, stages)
        _fitted_stages[key] = stages


def _is_shared_memory_shortage(error: Exception) -> bool:
    from triton.runtime.errors import OutOfResources

    return isinstance(error, OutOfResources) and "shared memory" in str(error)
