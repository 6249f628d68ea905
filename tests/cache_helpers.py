"""A counting ``compute`` and inputs whose content is a number, shared by the EmbeddingCache
tests (test_cache*.py): the tests can say exactly what was computed."""

from __future__ import annotations

import torch

ADAPTERS = {None: 0.0, "a": 100.0, "b": 200.0, "c": 300.0}
WIDTH = 3  # float32 entries of WIDTH numbers: 12 bytes each


class Counting:
    """``compute(inputs, names)``: row ``i`` is ``inputs[i, 0] + offset(names[i])`` repeated
    ``width`` times; records the size and contents of every call."""

    def __init__(self, width: int = WIDTH) -> None:
        self.width = width
        self.calls: list[tuple[list[float], list[str | None]]] = []

    def __call__(self, inputs: torch.Tensor, names: list[str | None]) -> torch.Tensor:
        self.calls.append((inputs[:, 0].tolist(), list(names)))
        offsets = torch.tensor([ADAPTERS[n] for n in names])
        return (inputs[:, :1].float() + offsets[:, None]).repeat(1, self.width)

    @property
    def rows(self) -> int:
        return sum(len(c[0]) for c in self.calls)


def expected_rows(values: list[float], names: list[str | None], width: int = WIDTH) -> torch.Tensor:
    return torch.tensor([[v + ADAPTERS[n]] * width for v, n in zip(values, names, strict=True)])


def value_inputs(values: list[float]) -> torch.Tensor:
    """(B, 2) rows whose content is the value: equal values give equal rows."""
    return torch.tensor([[v, -v] for v in values], dtype=torch.float32)
