"""Memory cost and area proxies (tilesim/costs.py) and the plain progress bar."""
from __future__ import annotations

import io

import pytest

from tilesim import config, costs
from tilesim.report.progress import ProgressBar


def test_memory_cost_from_cited_prices():
    gd, hb = config.load("blackhole-like-gddr6"), config.load("blackhole-like-hbm3")
    assert costs.memory_capacity_bytes(gd) == costs.memory_capacity_bytes(hb) == 32 * 2**30
    assert costs.memory_cost_usd(gd) == pytest.approx(32 * 3.4)
    assert costs.memory_cost_usd(hb) == pytest.approx(32 * 7.0)
    # the ratio the reference notes quote: HBM about 2x GDDR6 per GB
    assert 1.8 < costs.memory_cost_usd(hb) / costs.memory_cost_usd(gd) < 2.3
    assert costs.memory_cost_usd(hb, "high") > costs.memory_cost_usd(hb)
    for std in ("hbm2", "hbm2e", "hbm3", "gddr6"):
        assert "energy_cost_chips.md" in costs.memory_price(std).source


def test_sram_only_and_uncited_memory():
    assert costs.memory_cost_usd(config.load("groq-like-sram")) == 0.0
    assert config.load("tpu-v1").memory.standard == "ddr3"
    assert costs.memory_cost_usd(config.load("tpu-v1")) is None      # no cited DDR3 price
    with pytest.raises(KeyError):
        costs.memory_price("lpddr5")


def test_area_proxy_counts_macs_and_sram():
    c = config.load("tpu-v1")
    assert costs.area_proxy(c) == 256 * 256 + c.sram_total_bytes


def test_progress_bar_draws_only_when_asked():
    out = io.StringIO()
    with ProgressBar(4, "sweep", stream=out) as bar:        # StringIO is not a terminal
        bar.update(ok=1)
    assert out.getvalue() == ""
    out = io.StringIO()
    bar = ProgressBar(4, "sweep", stream=out, enabled=True, min_interval=0)
    bar.update(ok=1)
    bar.update(ok=1, failed=1)
    bar.close()
    text = out.getvalue()
    assert text.endswith("\n") and "\r" in text
    last = text.rstrip("\n").split("\r")[-1]
    assert "[###############---------------] 2/4  50%" in last
    assert "ok 1" in last and "failed 1" in last
