"""train.mixed_precision: auto measures bf16 against float32 instead of trusting the config."""

from __future__ import annotations

import logging

import pytest

from specialize.train import precision


@pytest.mark.parametrize(("speedup", "used"), [(0.02, "no"), (1.0, "no"), (1.4, "bf16")])
def test_auto_uses_bf16_only_where_it_is_faster(speedup, used, monkeypatch):
    monkeypatch.setattr(precision, "bf16_speedup", lambda: speedup)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    got = precision.resolve("auto")
    assert got.used == used and f"{speedup:.2f}x" in got.why


def test_explicit_bf16_is_kept_but_warned_about_when_slow(monkeypatch, caplog):
    monkeypatch.setattr(precision, "bf16_speedup", lambda: 0.01)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="specialize"):
        got = precision.resolve("bf16")
    assert got.used == "bf16" and "slow here" in caplog.text


def test_no_never_measures(monkeypatch):
    monkeypatch.setattr(precision, "bf16_speedup", lambda: pytest.fail("measured"))
    assert precision.resolve("no").used == "no"


def test_the_probe_measures_a_ratio():
    assert precision.bf16_speedup(n=16, k=32, m=32, repeats=1) > 0
