"""Suite-wide hooks: one torch thread, and `gpu`-marked tests skipped on machines without CUDA."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # NOTE: the suite runs beside a Streamlit server and a browser on 2 cores. OpenMP worker threads that spin while
    # those processes hold the cores made single steps 5-30x slower in our runs; one thread keeps the suite steady.
    torch.set_num_threads(1)
    # A flaky scenario's failed attempt says why in the summary (pytest-rerunfailures otherwise keeps only the last
    # attempt's outcome); set here rather than in addopts, which would be an unknown option where the plugin is absent.
    if config.pluginmanager.hasplugin("rerunfailures"):
        config.option.rerun_show_tracebacks = True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip_gpu)
