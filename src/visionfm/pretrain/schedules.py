"""Per-iteration and per-epoch schedules for iBOT pretraining (reference §1.3, §4.6, §4.7).

Two kinds of schedule are used by the original:

* :func:`cosine_schedule` — the per-iteration learning-rate, weight-decay and EMA-momentum
  schedules (``utils.cosine_scheduler``): an optional linear warm-up followed by a half cosine.
* :func:`teacher_temp_schedule` — the per-epoch teacher temperatures of the iBOT loss: linear
  warm-up, then constant, optionally preceded by a hold (``mim_start_epoch``).

Both return numpy arrays with exactly the original's length and values. :class:`CosineSchedule` wraps
the cosine array so the training loop indexes it by global iteration and gets Python floats.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_schedule", "CosineSchedule", "teacher_temp_schedule"]


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Per-iteration cosine schedule with an optional linear warm-up (reference §1.3).

    The first ``warmup_epochs * niter_per_ep`` values are ``linspace(start_warmup_value, base, n)``
    (both ends included). The remaining ``N`` values are ``final + 0.5 (base - final)(1 + cos(pi i / N))``
    for ``i = 0 .. N-1``, so the last value approaches but does not equal ``final`` — kept as in the
    original so learning-rate curves and resumed runs match.

    Args:
        base: value at the end of the warm-up (peak learning rate, initial weight decay, ...).
        final: value the cosine decays towards.
        epochs: total number of epochs.
        niter_per_ep: iterations per epoch (``len(loader)``).
        warmup_epochs: linear warm-up length in epochs.
        start_warmup_value: first value of the warm-up.

    Returns:
        float64 array of length ``epochs * niter_per_ep``.

    Raises:
        ValueError: for negative sizes or ``warmup_epochs > epochs``. (Difference from the original,
            which fails with an obscure numpy/assert error in that case.)
    """
    if epochs < 0 or niter_per_ep < 0 or warmup_epochs < 0:
        raise ValueError(
            f"epochs ({epochs}), niter_per_ep ({niter_per_ep}) and warmup_epochs ({warmup_epochs}) "
            "must be non-negative"
        )
    if warmup_epochs > epochs:
        raise ValueError(
            f"warmup_epochs ({warmup_epochs}) is larger than epochs ({epochs}); the warm-up must fit "
            "in the run (lower --warmup_epochs or raise --epochs)"
        )
    total = int(epochs * niter_per_ep)
    warmup_iters = int(warmup_epochs * niter_per_ep)
    warmup = np.linspace(start_warmup_value, base, warmup_iters) if warmup_iters > 0 else np.zeros(0)
    n = total - warmup_iters
    i = np.arange(n, dtype=np.float64)
    # n == 0 gives an empty array here (no division happens on an empty arange).
    decay = final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * i / max(n, 1)))
    out = np.concatenate((warmup, decay)).astype(np.float64)
    assert len(out) == total  # cannot fail after the checks above; documents the contract
    return out


class CosineSchedule:
    """:func:`cosine_schedule` indexed by global iteration, returning Python floats.

    Python floats (not numpy scalars) keep optimizer state dicts and logs plain, so checkpoints load
    with ``weights_only=True``.

    Indexing past the end returns the last value (instead of raising ``IndexError``), so a run resumed
    with a different loader length does not crash on its final iterations. Negative indices are an
    error rather than counting from the end.
    """

    def __init__(
        self,
        base: float,
        final: float,
        epochs: int,
        niter_per_ep: int,
        warmup_epochs: int = 0,
        start_warmup_value: float = 0.0,
    ) -> None:
        self.values = cosine_schedule(base, final, epochs, niter_per_ep, warmup_epochs, start_warmup_value)
        self.base = float(base)
        self.final = float(final)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, it: int) -> float:
        if it < 0:
            raise IndexError(f"iteration must be >= 0, got {it}")
        if len(self.values) == 0:
            return self.final
        return float(self.values[min(int(it), len(self.values) - 1)])

    def __repr__(self) -> str:
        return f"CosineSchedule(base={self.base}, final={self.final}, iterations={len(self)})"


def teacher_temp_schedule(
    warmup_temp: float,
    final_temp: float,
    warmup_epochs: int,
    epochs: int,
    hold_epochs: int = 0,
) -> np.ndarray:
    """Per-epoch teacher temperature (reference §4.6).

    ``hold_epochs`` values of ``warmup_temp`` (the patch schedule's ``mim_start_epoch`` hold), then
    ``linspace(warmup_temp, final_temp, warmup_epochs)``, then ``final_temp`` until ``epochs``.

    Difference from the original: when ``hold_epochs + warmup_epochs > epochs`` the original crashes
    (numpy "negative dimensions"). Here the schedule is built as if the run were long enough and then
    cut to ``epochs`` values, so a short (debug) run keeps the same per-epoch temperatures as the
    beginning of a long run and simply never reaches ``final_temp``.

    Returns:
        float64 array of length ``epochs``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if warmup_epochs < 0 or hold_epochs < 0:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) and hold_epochs ({hold_epochs}) must be >= 0")
    rest = max(epochs - warmup_epochs - hold_epochs, 0)
    parts = (
        np.full(hold_epochs, warmup_temp, dtype=np.float64),
        np.linspace(warmup_temp, final_temp, warmup_epochs),
        np.full(rest, final_temp, dtype=np.float64),
    )
    out = np.concatenate(parts)[:epochs]
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise ValueError(f"temperatures must be positive, got warmup={warmup_temp}, final={final_temp}")
    return out
