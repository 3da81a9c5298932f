"""The preset profile drops the profiler's ranges (their time is their kernels' again) and keeps every kernel."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.preset_profile import _annotation

KERNELS = [
    "act_kernel",
    "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<c10::BFloat16, at::native::func_wrapper_t<c10::BFloat16,"
    " at::native::sum_functor<c10::BFloat16, float, c10::BFloat16>::operator()(at::TensorIterator&)::{lambda(float, float)"
    "#1}> > >(at::native::ReduceOp<c10::BFloat16> )",
    "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()"
    "#3}::operator()() const::{lambda()#7}::operator()() const::{lambda(float)#1}>(int)",
]
RANGES = ["Optimizer.step#AdamW.step", "ProfilerStep#2", "Optimizer.zero_grad#AdamW.zero_grad"]


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_with_lambdas_in_their_names_are_kept(name):
    assert not _annotation(SimpleNamespace(key=name, is_user_annotation=False))


@pytest.mark.parametrize("name", RANGES)
def test_profiler_ranges_are_dropped(name):
    assert _annotation(SimpleNamespace(key=name, is_user_annotation=False))


def test_user_annotations_are_dropped_whatever_their_name():
    assert _annotation(SimpleNamespace(key="my range", is_user_annotation=True))
