"""`tilesim dram`: the report, its JSON, the plot, and one-line errors for bad input."""
from __future__ import annotations

import json

import pytest

from tilesim.cli import main


def run(capsys, *argv):
    code = main(["dram", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_has_the_promised_keys(capsys):
    code, out, err = run(capsys, "--standard", "hbm3", "--pattern", "stream", "--bytes",
                         "4 MiB", "--read-fraction", "1", "--json")
    assert code == 0 and not err
    d = json.loads(out)
    for key in ("bandwidth_gbps", "peak_gbps", "row_hit_rate", "read_latency_ns_mean",
                "read_latency_ns_p50", "read_latency_ns_p99", "read_latency_cycles_mean",
                "energy_pj_per_bit", "requests"):
        assert key in d, key
    assert d["requests"] == 4 * 2**20 // 64
    assert d["peak_gbps"] == pytest.approx(819.2)
    assert 0 < d["bandwidth_gbps"] <= d["peak_gbps"]
    assert d["energy_table"]["io_pj_per_bit"]["source"].startswith("calibrated")


def test_text_report_and_plot(capsys, tmp_path):
    png = tmp_path / "bw.png"
    code, out, err = run(capsys, "--standard", "gddr6", "--devices", "2", "--pattern",
                         "random", "--bytes", "1MiB", "--read-fraction", "0.5",
                         "--plot", str(png))
    assert code == 0 and not err
    for word in ("bandwidth", "% of peak", "read latency", "p99", "row-buffer hit", "pJ/bit"):
        assert word in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [png]            # written atomically, no leftovers


def test_memory_from_a_chip_config(capsys):
    code, out, _ = run(capsys, "--config", "tpu-v1", "--bytes", "256KiB", "--json")
    d = json.loads(out)
    assert code == 0 and d["standard"] == "ddr3" and d["devices"] == 2
    assert d["peak_gbps"] == pytest.approx(34.1, rel=0.01)


def test_strided_and_open_loop(capsys):
    code, out, _ = run(capsys, "--standard", "hbm2", "--pattern", "strided", "--bytes",
                       "256KiB", "--interval", "50", "--json")
    d = json.loads(out)
    assert code == 0 and d["interval_cycles"] == 50 and d["row_hit_rate"] < 0.6


@pytest.mark.parametrize("argv,needles", [
    (["--standard", "hbm4"], ["--standard", "'hbm4'", "did you mean 'hbm3'"]),
    (["--standard", "gddr7"], ["--standard", "'gddr7'", "gddr6"]),
    (["--bytes", "-5"], ["--bytes", "-5", "at least 1 byte"]),
    (["--bytes", "lots"], ["--bytes", "'lots'"]),
    (["--read-fraction", "1.5"], ["--read-fraction", "1.5", "from 0 to 1"]),
    (["--read-fraction", "-0.1"], ["--read-fraction", "-0.1"]),
    (["--devices", "0"], ["--devices", "0 is not allowed"]),
    (["--pattern", "strid"], ["--pattern", "did you mean 'strided'"]),
    (["--request-bytes", "4096"], ["--request-bytes", "4096", "512"]),
    (["--standard", "hbm3", "--rate", "9.9"], ["data_rate_gbps", "9.9", "3.2 to 6.4"]),
    (["--config", "tpu-v1", "--standard", "hbm3"], ["--standard", "--config"]),
    (["--config", "groq-like-sram"], ["--config", "no off-chip memory"]),
    (["--interval", "-3"], ["--interval", "-3"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needles):
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith("error: ")
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
