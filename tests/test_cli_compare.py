"""`tilesim compare`: the table, its JSON, the plots and one-line errors, on the fake evaluator
(tests/fake_evaluator.py, a roofline with the tilesim.simulate signature); the real simulator
runs the routing test (a tiny chip) and the GDDR6/HBM3 pair (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tilesim import config
from tilesim.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAKE = ["--evaluator", "tests.fake_evaluator:simulate"]
PAIR = ["blackhole-like-gddr6", "blackhole-like-hbm3"]
KEYS = ("cycles", "seconds", "tokens_per_s", "macs", "model_macs", "dram_read_bytes",
        "dram_write_bytes", "dram_gbps", "peak_dram_gbps", "dram_pct_of_peak",
        "energy_pj_per_token", "energy_pj_by_component")


def run(capsys, *argv):
    code = main(["compare", *argv, *FAKE])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_one_object_per_chip_and_workload(capsys):
    code, out, err = run(capsys, *PAIR, "--model", "llama-3-8b", "--batch", "1,8",
                         "--context", "1024", "--json")
    assert code == 0 and not err
    d = json.loads(out)
    assert [(r["config"], r["phase"], r["batch"]) for r in d] == [
        (c, ph, b) for ph in ("prefill", "decode") for b in (1, 8) for c in PAIR]
    for r in d:
        for k in KEYS:
            assert k in r, k
        assert r["context"] == 1024 and r["model"] == "llama-3-8b" and r["error"] is None
        assert ("ttft_s" if r["phase"] == "prefill" else "tpot_s") in r
        assert r["memory_capacity_bytes"] == 32 * 2**30
    by = {(r["config"], r["phase"], r["batch"]): r for r in d}
    gd, hb = PAIR
    assert by[hb, "decode", 1]["memory_cost_usd"] > 1.8 * by[gd, "decode", 1]["memory_cost_usd"]
    # the directions the real test will assert: decode follows bandwidth, prefill does not
    bw = by[hb, "decode", 1]["peak_dram_gbps"] / by[gd, "decode", 1]["peak_dram_gbps"]
    dec = by[hb, "decode", 1]["tokens_per_s"] / by[gd, "decode", 1]["tokens_per_s"]
    pre = by[hb, "prefill", 1]["tokens_per_s"] / by[gd, "prefill", 1]["tokens_per_s"]
    assert 0.7 * bw < dec <= bw * 1.01 and abs(pre - 1) < 0.1


def test_weight_and_kv_types_reach_the_model(capsys):
    """--weight-dtype and --kv-dtype set the model the chips run: the fake's decode reads the
    model's weight and KV bytes, so fp8 weights read the fp8 model's and an fp8 cache halves
    the cache's share; a type the model cannot have is one line."""
    from tilesim.programs import models
    got = {}
    for w, kv in (("bf16", "bf16"), ("fp8e4m3", "bf16"), ("bf16", "fp8e4m3")):
        code, out, _ = run(capsys, PAIR[0], "--model", "llama-3-8b", "--phases", "decode",
                           "--context", "1024",
                           "--weight-dtype", w, "--kv-dtype", kv, "--json")
        assert code == 0
        spec = models.preset("llama-3-8b", weight_dtype=w, kv_dtype=kv)
        got[w, kv] = json.loads(out)[0]["dram_read_bytes"]
        assert got[w, kv] == spec.weight_bytes() + spec.kv_cache_bytes(1, 1024)
    assert got["fp8e4m3", "bf16"] < got["bf16", "fp8e4m3"] < got["bf16", "bf16"]
    code, _, err = run(capsys, PAIR[0], "--model", "gpt2", "--kv-dtype", "fp9")
    assert code == 2 and "kv_dtype" in err and "'fp9'" in err and err.count("\n") == 1


def test_side_by_side_table(capsys):
    code, out, err = run(capsys, *PAIR, "--model", "llama-3-8b", "--context", "512")
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0] == ("llama-3-8b (weights bf16, activations bf16, KV cache bf16), "
                        "context 512; ratio = "
                        "blackhole-like-hbm3 / blackhole-like-gddr6")
    assert lines[1].split() == [*PAIR, "ratio"]
    for label in ("memory capacity (GiB)", "memory cost (est., $)", "peak DRAM GB/s",
                  "prefill, batch 1", "TTFT", "decode, batch 1", "time per output token",
                  "tokens/s", "DRAM GB/s (% of peak)", "energy per token", "dram", "static"):
        assert any(ln.strip().startswith(label) for ln in lines), label
    cost = next(ln for ln in lines if ln.startswith("memory cost"))
    assert "$109" in cost and "$224" in cost and cost.endswith("2.06x")
    peak = next(ln for ln in lines if ln.startswith("peak DRAM"))
    assert peak.split()[-3:] == ["512.0", "1638.4", "3.2x"]


def test_plots_and_json_file(capsys, tmp_path):
    out_dir = tmp_path / "cmp"
    code, out, err = run(capsys, *PAIR, "teach-4x4", "--model", "gpt2", "--batch", "1,4,16",
                         "--context", "128", "--out", str(out_dir))
    assert code == 0 and not err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(["ttft_s.png", "tpot_s.png", "tokens_per_s.png", "dram_gbps.png",
                            "dram_pct_of_peak.png", "energy_pj_per_token.png",
                            "memory_cost_usd.png", "decode_tokens_per_s_vs_batch.png",
                            "compare.json"])                      # no temporary leftovers
    for p in out_dir.glob("*.png"):
        assert p.read_bytes()[:4] == b"\x89PNG"
        assert f"plot: {p}" in out
    d = json.loads((out_dir / "compare.json").read_text())
    assert len(d) == 3 * 2 * 3
    assert {r["memory_cost_usd"] for r in d if r["config"] == "teach-4x4"} == {None}  # DDR3
    assert "n/a" in next(ln for ln in out.splitlines() if ln.startswith("memory cost"))


def test_a_refused_run_leaves_its_cells_empty(capsys, tmp_path):
    """A chip the simulator refuses (here the fake's 48-row failure) prints '-', its reason
    on stderr, and exit status 2; the other chip's numbers are still there."""
    text = (ROOT / "configs/blackhole-like-gddr6.yaml").read_text()
    bad = tmp_path / "bh48.yaml"
    bad.write_text(text.replace("rows: 32", "rows: 48").replace(
        "name: blackhole-like-gddr6", "name: bh-48-rows"))
    code, out, err = run(capsys, PAIR[0], str(bad), "--model", "gpt2", "--phases", "decode",
                         "--context", "64")
    assert code == 2
    ttft = next(ln for ln in out.splitlines() if "time per output token" in ln)
    assert ttft.split()[-2:] != ["-", "-"] and ttft.split()[-1] == "-"
    assert err.splitlines() == ["error: bh-48-rows, decode batch 1: fake: no tiling for a "
                                "48-row array (the failing point)"]
    code, out, err = run(capsys, PAIR[0], str(bad), "--model", "gpt2", "--phases", "decode",
                         "--context", "64", "--json")
    assert code == 2 and json.loads(out)[1]["error"].startswith("fake: no tiling")


def test_same_named_chips_get_their_file_names(capsys, tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text((ROOT / "configs/teach-4x4.yaml").read_text())
    code, out, err = run(capsys, "teach-4x4", str(a), "--model", "gpt2", "--phases",
                         "prefill", "--context", "16", "--json")
    assert code == 0 and [r["config"] for r in json.loads(out)] == ["teach-4x4", "a"]


@pytest.mark.parametrize("argv,needle", [
    ([*PAIR, "--model", "llama-3-9b"], "no such model preset or file"),
    ([*PAIR, "--model", "gpt2", "--phases", "prefil"], "--phases: 'prefil' is not allowed"),
    ([*PAIR, "--model", "gpt2", "--batch", "1,0"], "--batch: '0' is not allowed"),
    ([*PAIR, "--model", "gpt2", "--batch", "x"], "--batch: 'x' is not allowed"),
    ([*PAIR, "--model", "gpt2", "--context", "0"], "--context: 0 is not allowed"),
    ([*PAIR, "--model", "gpt2", "--context", "5000"], "longer than gpt2 allows"),
    (["no-such-chip", "--model", "gpt2", "--context", "64"],
     "no-such-chip: no such file or preset"),
])
def test_bad_input_is_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out
    assert needle in err and err.count("\n") == 1, err


def test_bad_evaluator_and_missing_model_are_one_line(capsys):
    assert main(["compare", *PAIR, "--model", "gpt2", "--context", "64", "--evaluator",
                 "nope:simulate"]) == 2
    err = capsys.readouterr().err
    assert "--evaluator: 'nope:simulate' cannot be imported" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["compare", *PAIR])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "the following arguments are required: --model" in err


def test_routing_reaches_the_simulator(capsys, tmp_path):
    """--routing goes to the real simulator: a tiny Mixtral-style model (6 experts, 2 per
    token) decoding 2 sequences on a tiny chip reads 3 experts' weights with random routing
    and 4 balanced, so balanced reads more; a routing that does not exist is one line."""
    import yaml

    from tests.programs.test_codegen import tiny_chip
    chip = tmp_path / "chip.yaml"
    chip.write_text(yaml.safe_dump(config.to_dict(tiny_chip("bf16"))))
    model = tmp_path / "config.json"
    model.write_text(json.dumps({
        "model_type": "mixtral", "vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
        "max_position_embeddings": 64, "num_local_experts": 6, "num_experts_per_tok": 2}))
    read = {}
    for routing in ("random", "balanced"):
        assert main(["compare", str(chip), "--model", str(model), "--phases", "decode",
                     "--batch", "2", "--context", "8", "--routing", routing, "--json"]) == 0
        row = json.loads(capsys.readouterr().out)[0]
        assert row["error"] is None and row["moe_routing"] == routing
        read[routing] = row["dram_read_bytes"]
    assert read["balanced"] > read["random"]
    code, out, err = run(capsys, *PAIR, "--model", "gpt2", "--routing", "skewed")
    assert code == 2 and "--routing: 'skewed' is not allowed" in err and err.count("\n") == 1


def test_energy_split_is_scaled_to_one_token():
    """simulate's energy_pj_by_component is the whole step's; the table's rows under 'energy
    per token' are per token: a prefill of 4 tokens with 60 + 40 pJ shows 15 and 10 pJ."""
    from tilesim.cli.compare import component_per_token
    r = {"energy_pj_per_token": 25.0, "energy_pj_by_component": {"mac": 60.0, "dram": 40.0}}
    assert component_per_token(r, "mac") == 15.0
    assert component_per_token(r, "dram") == 10.0
    assert component_per_token(r, "noc") is None


@pytest.mark.slow
def test_real_pair_decode_follows_bandwidth_and_prefill_differs_less(capsys):
    """The worked example on the real simulator, the issue's own command with its defaults:
    llama-3-8b prefill and decode (batch 1, context 512) on the blackhole-like twins. Decode
    streams every weight once per token, so the HBM3 twin must be faster by roughly the
    bandwidth ratio (3.2x): more than 0.6 of it, never more than the ratio. A prefill of 512
    tokens does 256 MACs per weight byte, so more of its time is compute, which HBM3 does not
    speed up: its speed-up must be below decode's and below 0.75 of the ratio."""
    code = main(["compare", *PAIR, "--model", "llama-3-8b", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    rows = json.loads(out)
    by = {(r["config"], r["phase"]): r for r in rows}
    gd, hb = by[PAIR[0], "decode"], by[PAIR[1], "decode"]
    gp, hp = by[PAIR[0], "prefill"], by[PAIR[1], "prefill"]
    assert all(r["error"] is None for r in rows) and len(rows) == 4
    bw = hb["peak_dram_gbps"] / gd["peak_dram_gbps"]
    speedup = gd["tpot_s"] / hb["tpot_s"]
    prefill_speedup = gp["ttft_s"] / hp["ttft_s"]
    assert 0.6 * bw < speedup <= bw
    assert 1.0 < prefill_speedup < min(speedup, 0.75 * bw)
    from tilesim.programs.models import resolve_model
    spec = resolve_model("llama-3-8b")
    table = spec.vocab_size * spec.d_model * 2          # bf16 embedding table, gathered by row
    for r in (gd, hb):
        assert r["macs"] == r["model_macs"]
        # batch-1 decode reads every weight byte at least once (the embedding: one row)
        assert r["dram_read_bytes"] >= spec.weight_bytes() - table
