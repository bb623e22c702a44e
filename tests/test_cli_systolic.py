"""`tilesim systolic`: the teach-4x4 preset, JSON for machines, the animation, one-line errors."""
from __future__ import annotations

import json

import pytest

from tilesim.arch.systolic import gemm_cycles
from tilesim.cli import main


def run(capsys, *argv):
    code = main(["systolic", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_teach_preset_prints_cycles_utilisation_and_a_table_of_every_pe(capsys):
    code, out, _ = run(capsys, "--config", "teach-4x4", "--m", "4", "--k", "4", "--n", "4",
                       "--dataflow", "ws")
    assert code == 0
    assert "on a 4x4 ws array (int8 x int8 -> int32" in out
    assert "cycles       14   (closed form: F (2R + C + M - 2) = 1*(2*4 + 4 + 4 - 2) = 14" in out
    assert "utilisation 28.6%" in out                     # 64 MACs / (16 PEs x 14 cycles)
    assert out.count("\ncycle ") == 14
    assert out.count("\nr3 ") == 14                       # every PE row in every cycle
    assert "(equals numpy's matmul)" in out


def test_flags_override_the_preset(capsys):
    code, out, _ = run(capsys, "--config", "teach-4x4", "--rows", "2", "--cols", "3",
                       "--dataflow", "os", "--double-buffer", "--m", "5", "--k", "3", "--n", "4")
    assert code == 0
    assert "on a 2x3 os array" in out and "double-buffered" in out
    assert f"cycles       {gemm_cycles(5, 3, 4, 2, 3, 'os', True)} " in out


def test_json_carries_counts_folds_values_and_trace(capsys):
    code, out, _ = run(capsys, "--json", "--a", "1 2; 3 4; 5 6", "--w", "1 0 2; 0 1 3",
                       "--rows", "2", "--cols", "2", "--dataflow", "is")
    assert code == 0
    d = json.loads(out)
    assert (d["M"], d["K"], d["N"]) == (3, 2, 3)
    assert d["out"] == [[1, 2, 8], [3, 4, 18], [5, 6, 28]]
    assert d["equals_numpy"] is True
    assert d["cycles"] == d["closed_form_cycles"] == gemm_cycles(3, 2, 3, 2, 2, "is")
    assert d["folds"][0]["mm_end"] <= d["cycles"]
    assert len(d["trace"]["planes"]["psum"]) == d["cycles"]


def test_animation_is_an_image_sequence_with_one_frame_per_cycle(capsys, tmp_path):
    from PIL import Image

    gif = tmp_path / "run.gif"
    code, out, _ = run(capsys, "--config", "teach-4x4", "--m", "2", "--k", "3", "--n", "4",
                       "--animate", str(gif), "--no-table")
    assert code == 0
    with Image.open(gif) as im:
        assert im.n_frames == gemm_cycles(2, 3, 4, 4, 4) == 12
    assert "12 frames" in out


def test_float_types_run_and_say_no_exact_comparison(capsys):
    code, out, _ = run(capsys, "--input-dtype", "bf16", "--rows", "3", "--cols", "3",
                       "--no-table")
    assert code == 0 and "bf16 x bf16 -> fp32" in out


@pytest.mark.parametrize("argv,msg", [
    (["--m", "0"], "error: --m: 0 is not allowed (an integer >= 1)"),
    (["--rows", "-3"], "error: --rows: -3 is not allowed (an integer >= 1)"),
    (["--a", "1 2.5"], "error: a[0, 1] = 2.5 is not an int8 value (integers -128 .. 127)"),
    (["--a", "1 2", "--w", "1 2"], "error: --w: has 1 rows but --a has K = 2 columns"),
    (["--a", "1 x"], "error: --a: 'x' is not a number"),
    (["--a", "1 2; 3"], "error: --a: rows have [1, 2] entries"),
    (["--animate", "run.png"], "error: --animate: 'run.png' is not allowed (a .gif or .mp4"),
    (["--config", "no-such-chip"], "error: no-such-chip: no such file or preset"),
    (["--dataflow", "xs"], "invalid choice: 'xs'"),
    (["--m", "2.5"], "invalid int value: '2.5'"),
])
def test_bad_arguments_are_one_line_errors_with_exit_2(capsys, argv, msg):
    try:
        code = main(["systolic", *argv])
    except SystemExit as e:       # argparse's own usage errors (choices, types)
        code = e.code
    _, err = capsys.readouterr()
    assert code == 2
    assert msg in err
    assert err.count("\n") == 1
