"""Guards on every option that can make a measurement meaningless or a job impossible (issue 22,
items 3 and 6): constant channels under readout.standardize=channel, settings with no effect,
sizes a patch model or the memory cannot take, float16 on a CPU, ``~`` on the command line."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import CONF
from posinfo import schema
from posinfo.errors import PosinfoError
from posinfo.readout import Standardize


def _old_statistics(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardize.fit's statistics as they were computed before constant channels were dropped."""
    n, s1, s2 = 0, 0.0, 0.0
    for x in batches:
        x = x.double()
        n += x.shape[0] * x.shape[2] * x.shape[3]
        s1 = s1 + x.sum(dim=(0, 2, 3))
        s2 = s2 + (x * x).sum(dim=(0, 2, 3))
    mean = s1 / n
    return mean.float(), (s2 / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6).float()


def test_a_channel_constant_over_the_training_set_is_dropped_with_a_warning_counting_it(caplog):
    g = torch.Generator().manual_seed(0)
    train = [torch.rand(4, 3, 5, 5, generator=g) for _ in range(3)]
    for b in train:
        b[:, 1] = 0.25  # e.g. a red channel that is 0 in every training image
    with caplog.at_level(logging.WARNING, logger="posinfo.readout"):
        st = Standardize(3).fit(iter(train))
    assert [r.getMessage() for r in caplog.records] == [
        "readout.standardize=channel: 1 of 3 feature channels are constant over the training set; dropped from the "
        "readout (they carry no position information)"]
    test = torch.rand(2, 3, 5, 5, generator=g)
    out = st(test)
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))  # not (x - .25) / 1e-6, which saturated every prediction
    mean, std = _old_statistics(train)
    assert torch.equal(out[:, [0, 2]], ((test - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))[:, [0, 2]])


def test_statistics_without_constant_channels_are_unchanged_bit_for_bit(caplog):
    train = [torch.randn(4, 6, 7, 7, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="posinfo.readout"):
        st = Standardize(6).fit(iter(train))
    mean, std = _old_statistics(train)
    assert torch.equal(st.mean.flatten(), mean) and torch.equal(st.std.flatten(), std) and not caplog.records
