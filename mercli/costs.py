"""What reasoning costs: list prices per model, the price of a call, and a budget that
concurrent calls share (``mer reason --max-cost``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from mercli.settings import DEFAULT_PRICES
from mercli.contracts import Reasoner, Usage
from mercli.errors import ConfigError


@dataclass(frozen=True)
class Price:
    """US dollars per million input and output tokens."""

    input: float
    output: float

    def of(self, usage: Usage) -> float:
        return (usage.input_tokens * self.input + usage.output_tokens * self.output) / 1e6


FREE = Price(0.0, 0.0)


#: The Batch API's discount: half the online price (Gemini Batch API docs, "50% of the standard
#: cost"), unless ``[reason.prices]`` gives a model ``batch_input`` and ``batch_output``.
BATCH_DISCOUNT = 0.5
_PRICE_KEYS, _BATCH_KEYS = {"input", "output"}, {"batch_input", "batch_output"}


def price_for(reasoner: Reasoner, prices: dict[str, Any], batch: bool = False) -> Price:
    """The price of the reasoner's model, online or (``batch``) in a batch job: ``[reason.prices]``
    in mer.toml over the built-in list; free for an offline reasoner; an error for a remote model
    without a price, since neither the cost report nor ``--max-cost`` could work."""
    entry = {**DEFAULT_PRICES, **prices}.get(reasoner.model)
    if entry is None:
        if not reasoner.needs_network:
            return FREE
        raise ConfigError(f"no price for model '{reasoner.model}' in [reason.prices]; add "
                          f"'\"{reasoner.model}\" = {{ input = USD_PER_MTOK, output = USD_PER_MTOK }}' to mer.toml")
    if (not isinstance(entry, dict) or not _PRICE_KEYS <= set(entry) <= _PRICE_KEYS | _BATCH_KEYS
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in entry.values())):
        raise ConfigError(f"[reason.prices] '{reasoner.model}' must be {{ input = NUMBER, output = NUMBER }}, "
                          "optionally with batch_input and batch_output (US dollars per million tokens)")
    if not batch:
        return Price(float(entry["input"]), float(entry["output"]))
    return Price(float(entry.get("batch_input", entry["input"] * BATCH_DISCOUNT)),
                 float(entry.get("batch_output", entry["output"] * BATCH_DISCOUNT)))


class Budget:
    """Spending so far, and the calls in flight whose estimated cost is reserved, so that
    concurrent calls cannot together pass ``--max-cost``."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.spent = 0.0
        self._reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, estimate: float) -> bool:
        with self._lock:
            if self.limit is not None and self.spent + self._reserved + estimate > self.limit:
                return False
            self._reserved += estimate
            return True

    def settle(self, estimate: float, actual: float) -> None:
        with self._lock:
            self._reserved -= estimate
            self.spent += actual
