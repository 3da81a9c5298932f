"""The dispatch strategy a module runs, chosen when it is set or the module moves, never looked up per call."""

from __future__ import annotations

import torch

from pimoe.layer.strategies import AUTO, DispatchStrategy, check_strategy_name, resolve_strategy

__all__ = ["DispatchChoice"]


class DispatchChoice:
    """Mixin for an `nn.Module` that dispatches tokens to experts (PiMoESystem, the Hugging Face block).

    `dispatch` names a strategy in `pimoe.layer.strategies.STRATEGIES` or "auto" (the fast path of the device the
    module lives on); `strategy` is the resolved object its forward runs. `use_strategy` runs one that is not
    registered (benchmark-only backends, bench/backends.py). Subclasses say where their weights live.
    """

    _dispatch_name: str = AUTO
    _unregistered_strategy: DispatchStrategy | None = None

    def _strategy_device(self) -> torch.device:
        raise NotImplementedError

    @property
    def dispatch(self) -> str:
        """The strategy's name as set ("auto" included); `strategy` is what runs."""
        return self._dispatch_name

    @dispatch.setter
    def dispatch(self, name: str) -> None:
        self._dispatch_name = check_strategy_name(name)
        self._unregistered_strategy = None
        self._resolve_strategy()

    def use_strategy(self, strategy: DispatchStrategy) -> None:
        """Run `strategy`, which need not be registered. It stays through `.to()`; setting `dispatch` replaces it."""
        if not isinstance(strategy, DispatchStrategy):
            raise TypeError(f"use_strategy takes a DispatchStrategy, got {type(strategy).__name__}")
        self._dispatch_name = strategy.name
        self._unregistered_strategy = strategy
        self._resolve_strategy()

    def _resolve_strategy(self) -> None:
        if self._unregistered_strategy is not None:
            self.strategy: DispatchStrategy = self._unregistered_strategy
        else:
            self.strategy = resolve_strategy(self._dispatch_name, self._strategy_device())

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half() pass through here: "auto" is re-resolved for the new device.
        result = super()._apply(fn, *args, **kwargs)
        self._resolve_strategy()
        return result

    def choose_dispatch(self, x: torch.Tensor) -> str:
        """The name of the strategy that runs for x (the resolved one, or "auto"'s pick for x's device)."""
        if x.device == self._strategy_device() or self._unregistered_strategy is not None:
            return self.strategy.name
        return resolve_strategy(self._dispatch_name, x.device).name
