"""Schedules pinned against hand calculations (reference §1.3, §4.6, §4.7)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visionfm.pretrain.schedules import CosineSchedule, cosine_schedule, teacher_temp_schedule


def test_cosine_with_warmup_hand_values():
    # 3 epochs x 2 iterations, 1 warm-up epoch from 0.5:
    #   warm-up linspace(0.5, 1.0, 2) = [0.5, 1.0]
    #   then N = 4: 0 + 0.5 * 1 * (1 + cos(pi * i / 4)), i = 0..3
    s = cosine_schedule(1.0, 0.0, epochs=3, niter_per_ep=2, warmup_epochs=1, start_warmup_value=0.5)
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + math.sqrt(0.5)), 0.5, 0.5 * (1 - math.sqrt(0.5))]
    assert len(s) == 6
    np.testing.assert_allclose(s, expected, rtol=1e-12)


def test_cosine_endpoints_and_length():
    s = cosine_schedule(0.996, 1.0, epochs=100, niter_per_ep=7)
    assert len(s) == 700
    assert s[0] == 0.996
    assert s[-1] != 1.0  # last value is final + 0.5 (base - final)(1 + cos(pi (N-1)/N)), not final
    assert s[-1] == pytest.approx(1.0 + 0.5 * (0.996 - 1.0) * (1 + math.cos(math.pi * 699 / 700)), rel=1e-15)
    assert np.all(np.diff(s) >= 0)


def test_lr_schedule_like_pretraining():
    lr = cosine_schedule(7.5e-5 * 512 / 256, 2e-6, epochs=100, niter_per_ep=10, warmup_epochs=50)
    assert lr[0] == 0.0 and lr[499] == pytest.approx(1.5e-4)  # warm-up reaches the peak exactly
    assert lr[500] == pytest.approx(1.5e-4) and lr[-1] > 2e-6


def test_warmup_longer_than_run_is_a_clear_error():
    with pytest.raises(ValueError, match=r"warmup_epochs \(50\) is larger than epochs \(10\)"):
        cosine_schedule(1.0, 0.0, epochs=10, niter_per_ep=3, warmup_epochs=50)


def test_warmup_equal_to_run():
    s = cosine_schedule(1.0, 0.0, epochs=2, niter_per_ep=2, warmup_epochs=2)
    np.testing.assert_allclose(s, np.linspace(0, 1, 4))


def test_cosine_schedule_class():
    sched = CosineSchedule(1.0, 0.0, epochs=3, niter_per_ep=2, warmup_epochs=1, start_warmup_value=0.5)
    assert len(sched) == 6
    assert type(sched[0]) is float and sched[0] == 0.5 and sched[2] == 1.0
    assert sched[100] == sched[5]  # past the end: last value
    with pytest.raises(IndexError):
        sched[-1]


def test_teacher_temperature_schedule():
    t = teacher_temp_schedule(0.07, 0.04, warmup_epochs=30, epochs=100)
    assert len(t) == 100 and t[0] == pytest.approx(0.07) and t[29] == pytest.approx(0.04)
    assert np.all(t[30:] == 0.04)
    held = teacher_temp_schedule(0.04, 0.07, warmup_epochs=30, epochs=100, hold_epochs=5)
    assert len(held) == 100 and np.all(held[:6] == 0.04) and held[34] == pytest.approx(0.07)
    short = teacher_temp_schedule(0.07, 0.04, warmup_epochs=30, epochs=4)  # original crashes here
    np.testing.assert_allclose(short, t[:4])
