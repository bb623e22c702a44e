"""Chip configs: every preset loads; every kind of mistake is one line naming the key path."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tilesim import config
from tilesim.arch import dram
from tilesim.cli import main
from tilesim.errors import ConfigError

from .conftest import CONFIGS, ROOT

PRESETS = sorted(CONFIGS.glob("*.yaml"))
REQUIRED_PRESETS = {"teach-4x4", "tpu-v1", "tpu-v4i-like", "blackhole-like-gddr6",
                    "blackhole-like-hbm3", "groq-like-sram", "h100-like-hbm3"}


def base() -> dict:
    """A valid config as plain data, to mutate."""
    return yaml.safe_load((CONFIGS / "teach-4x4.yaml").read_text())


def dump(d: dict) -> str:
    return yaml.safe_dump(d, sort_keys=False)


def test_required_presets_exist():
    assert REQUIRED_PRESETS <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_cites_a_source(path):
    cfg = config.load(path)
    assert cfg.name == path.stem
    text = path.read_text()
    assert text.lstrip().startswith("#"), "a preset opens with a comment citing its numbers"


def test_preset_headline_numbers_match_their_sources():
    """The figures each preset's comment promises (energy_cost_chips.md, dram_standards.md)."""
    v1 = config.load("tpu-v1")
    assert v1.peak_tflops == pytest.approx(92, rel=0.01)           # 92 TOPS int8
    assert dram.peak_gbps(v1.memory) == pytest.approx(34, rel=0.01)  # DDR3 about 34 GB/s
    assert v1.sram_total_bytes == 28 * 2**20
    v4i = config.load("tpu-v4i-like")
    assert v4i.peak_tflops == pytest.approx(138, rel=0.01)
    assert dram.peak_gbps(v4i.memory) == pytest.approx(614, rel=0.01)
    h100 = config.load("h100-like-hbm3")
    assert h100.peak_tflops == pytest.approx(989, rel=0.005)
    assert dram.peak_gbps(h100.memory) == pytest.approx(3350, rel=0.005)
    assert dram.capacity_bytes(h100.memory) == 80 * 2**30
    gd, hb = config.load("blackhole-like-gddr6"), config.load("blackhole-like-hbm3")
    assert dram.peak_gbps(gd.memory) == pytest.approx(512)
    assert dram.capacity_bytes(gd.memory) == dram.capacity_bytes(hb.memory)
    groq = config.load("groq-like-sram")
    assert groq.memory is None and groq.sram_total_bytes == pytest.approx(230e6, rel=0.01)


def test_blackhole_twins_differ_only_in_memory():
    gd, hb = config.load("blackhole-like-gddr6"), config.load("blackhole-like-hbm3")
    a, b = config.to_dict(gd), config.to_dict(hb)
    for d in (a, b):
        d.pop("memory"), d.pop("name")
    assert a == b
    assert gd.memory.standard == "gddr6" and hb.memory.standard == "hbm3"


def test_sizes_parse_with_units():
    assert config.parse_size("32 MiB") == 32 * 2**20
    assert config.parse_size("1.5MiB") == 3 * 2**19
    assert config.parse_size("2 GB") == 2 * 10**9
    assert config.parse_size(4096) == 4096
    for bad in ("32 MB/s", "1.3 B", "lots", True):
        with pytest.raises(ValueError):
            config.parse_size(bad)


def test_round_trip_through_plain_data():
    for path in PRESETS:
        cfg = config.load(path)
        assert config.from_dict(config.to_dict(cfg), "x") == cfg


def test_energy_overrides_apply():
    d = base()
    d["energy"] = {"table": "horowitz-45nm", "overrides": {"mac_int8_pj": 0.5}}
    cfg = config.loads(dump(d))
    table = cfg.energy_table()
    assert table["mac_int8_pj"] == 0.5
    assert table["mac_fp32_pj"] == 4.6


def test_vector_op_override_keeps_other_defaults():
    d = base()
    d["cores"]["vector"]["ops"] = {"exp": {"elems_per_lane_per_cycle": 0.5, "latency_cycles": 3}}
    ops = config.loads(dump(d)).cores.vector.ops
    assert ops["exp"].elems_per_lane_per_cycle == 0.5
    assert ops["add"] == config.DEFAULT_VECTOR_OPS["add"]


# --------------------------------------------------------------------------------------------
# Every kind of error: one line, naming the key path (and file), the value and what is allowed.
# --------------------------------------------------------------------------------------------


def _set(d: dict, path: str, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    if value is _DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


_DELETE = object()

ERROR_CASES = [
    # (mutation path, value, text the message must contain)
    ("cores.sram.bank", 4, ["cores.sram.bank", "unknown key", "did you mean 'banks'"]),
    ("cores.sram.banks", "four", ["cores.sram.banks", "'four'", "integer"]),
    ("cores.sram.banks", 0, ["cores.sram.banks", "0 is not allowed", "integer from 1 to 65536"]),
    ("cores.systolic.rows", _DELETE, ["cores.systolic.rows", "required key is missing"]),
    ("cores.systolic.dataflow", "wss", ["cores.systolic.dataflow", "'wss'", "ws, os, is",
                                        "did you mean 'ws'"]),
    ("cores.systolic.rows", 4.0, ["cores.systolic.rows", "4.0", "integer"]),
    ("cores.systolic.weight_double_buffer", "yes", ["weight_double_buffer", "true or false"]),
    ("cores.sram.size_bytes", "64 KiBs", ["cores.sram.size_bytes", "'64 KiBs'", "MiB"]),
    ("cores.sram.size_bytes", "1000 B", ["cores.sram.size_bytes", "multiple of banks"]),
    ("cores.systolic.acc_dtype", "fp32", ["cores.systolic.acc_dtype", "'fp32'", "int32"]),
    ("cores.systolic.weight_dtype", "bf16", ["cores.systolic.weight_dtype", "integer"]),
    ("cores.placement", [5], ["cores.placement[0]", "5", "below 2"]),
    ("cores.count", 3, ["cores.count", "3", "at most 2"]),
    ("noc.memory_nodes", [], ["noc.memory_nodes", "required key is missing"]),
    ("noc.memory_nodes", [7], ["noc.memory_nodes[0]", "7", "below 2"]),
    ("noc.dims", [2], ["noc.dims", "[2]", "list of 2 integers"]),
    ("noc.topology", "hypercube", ["noc.topology", "'hypercube'", "mesh, torus"]),
    ("noc.nodes", 4, ["noc.nodes", "only for ring"]),
    ("memory.standard", "hbm4", ["memory.standard", "'hbm4'", "hbm3", "did you mean"]),
    ("memory.devices", 0, ["memory.devices", "0 is not allowed"]),
    ("memory.data_rate_gbps", 9.9, ["memory.data_rate_gbps", "9.9", "ddr3"]),
    ("memory.timing_overrides", {"nRCDD": 3}, ["memory.timing_overrides.nRCDD", "unknown key",
                                               "did you mean 'nRCD'"]),
    ("memory.controller.page_policy", "close", ["memory.controller.page_policy",
                                                "did you mean 'closed'"]),
    ("clock_ghz", -1, ["clock_ghz", "-1", "number from 0.01"]),
    ("clock_ghz", float("nan"), ["clock_ghz", "finite"]),
    ("version", 2, ["version", "2 is not allowed", "one of 1"]),
    ("energy.overrides", {"mac_int9_pj": 1.0}, ["energy.overrides.mac_int9_pj", "unknown key",
                                                "did you mean 'mac_int8_pj'"]),
    ("energy.table", "7nm", ["energy.table", "'7nm'", "tpuv4i-7nm"]),
    ("cores.vector.ops", {"exp": {"elems_per_lane_per_cycle": 0}},
     ["cores.vector.ops.exp.elems_per_lane_per_cycle", "0 is not allowed"]),
    ("cores.vector.ops", {"exp": {"elems_per_lane_per_cycle": 1.0}},
     ["cores.vector.ops.exp.latency_cycles", "required key is missing"]),
    ("noc", "mesh", ["noc", "'mesh'", "mapping"]),
    ("memory", None, ["memory", "'none'"]),
]


def _error_for(d) -> str:
    with pytest.raises(ConfigError) as exc:
        config.loads(dump(d), "chip.yaml")
    return str(exc.value)


@pytest.mark.parametrize("path,value,needles", ERROR_CASES,
                         ids=[f"{c[0]}={c[1]!r}"[:40] for c in ERROR_CASES])
def test_each_config_error_is_one_line_naming_the_key(path, value, needles):
    d = base()
    _set(d, path, value)
    msg = _error_for(d)
    assert "\n" not in msg
    assert msg.startswith("chip.yaml: ")
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_edges_topology_must_be_connected():
    d = base()
    d["noc"] = {"topology": "edges", "edges": [[0, 1], [2, 3]], "memory_nodes": [1]}
    msg = _error_for(d)
    assert "noc.edges" in msg and "connected" in msg
    d["noc"]["edges"] = [[0, 1], [1, 2], [2, 3]]
    assert config.loads(dump(d)).noc_nodes == 4


def test_duplicate_key_is_refused_with_its_line():
    text = (CONFIGS / "teach-4x4.yaml").read_text().replace("  count: 1\n", "  count: 1\n  count: 2\n", 1)
    with pytest.raises(ConfigError) as exc:
        config.loads(text, "dup.yaml")
    msg = str(exc.value)
    assert msg.startswith("dup.yaml: line ") and "'count' appears twice" in msg


@pytest.mark.parametrize("text,needle", [
    ("cores: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("", "not empty"),
    ("a: !!python/object:os.system {}\n", "not valid YAML"),
    ("? [1, 2]\n: 3\n", "plain value"),
])
def test_malformed_yaml_is_one_line(text, needle):
    with pytest.raises(ConfigError) as exc:
        config.loads(text, "bad.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("bad.yaml") and needle in msg


def test_unknown_preset_name_lists_presets():
    with pytest.raises(ConfigError) as exc:
        config.load("tpu-v2")
    assert "presets:" in str(exc.value) and "did you mean 'tpu-v1'" in str(exc.value)


# --------------------------------------------------------------------------------------------
# The CLI: exit 2, one line on stderr, no traceback
# --------------------------------------------------------------------------------------------


def test_check_accepts_every_preset(capsys):
    assert main(["check", *map(str, PRESETS)]) == 0
    out = capsys.readouterr().out
    assert out.count("\nok ") + out.startswith("ok ") == len(PRESETS)


def test_check_json_lists_every_preset(capsys):
    import json
    assert main(["check", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in data} == {p.stem for p in PRESETS}


@pytest.mark.parametrize("path,value,needles", ERROR_CASES[:8],
                         ids=[c[0] for c in ERROR_CASES[:8]])
def test_check_error_exit_2_one_line(tmp_path, capsys, path, value, needles):
    d = base()
    _set(d, path, value)
    f = tmp_path / "chip.yaml"
    f.write_text(dump(d))
    assert main(["check", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(f) in err and needles[0] in err


def test_check_subprocess_exit_code_and_no_traceback(tmp_path):
    d = base()
    d["cores"]["sram"]["banks"] = 0
    f = tmp_path / "chip.yaml"
    f.write_text(dump(d))
    r = subprocess.run([sys.executable, "-m", "tilesim", "check", str(f)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "cores.sram.banks: 0 is not allowed (integer from 1 to 65536)" in r.stderr


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bogus" in err


# --------------------------------------------------------------------------------------------
# Property: whatever the YAML, the loader returns a config or raises ConfigError
# --------------------------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                     st.sampled_from(["32 MiB", "auto", "ws", "none", "hbm3", "mesh", "1e3"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


@st.composite
def mutated_configs(draw):
    d = copy.deepcopy(base())
    paths = sorted(_paths(d))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths))
        node = d
        try:
            for k in path[:-1]:
                node = node[k]
            if not isinstance(node, dict):
                continue
            action = draw(st.sampled_from(["delete", "replace", "add"]))
            if action == "delete":
                node.pop(path[-1], None)
            elif action == "replace":
                node[path[-1]] = draw(_values)
            else:
                node[draw(st.text(max_size=8))] = draw(_values)
        except (KeyError, TypeError):
            continue
    return d


def _assert_loader_contract(text: str):
    try:
        cfg = config.loads(text, "h.yaml")
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("h.yaml")
    else:
        assert isinstance(cfg, config.ChipConfig)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_mutated_configs_give_a_config_or_a_config_error(d):
    try:
        text = yaml.safe_dump(d)
    except yaml.YAMLError:
        return
    _assert_loader_contract(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_gives_a_config_or_a_config_error(text):
    _assert_loader_contract(text)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_text_gives_a_config_or_a_config_error(data):
    text = (CONFIGS / "teach-4x4.yaml").read_text()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 20)))
        text = text[:i] + data.draw(st.text(max_size=10)) + text[j:]
    _assert_loader_contract(text)
