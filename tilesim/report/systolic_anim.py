"""Draw a traced systolic-array run as an animation: one frame per cycle.

Each PE is a square showing the registers it holds at the end of the cycle (ws/is: activation
``a``, weight ``w``, partial sum ``p``; os: ``a``, ``w`` and the accumulator). A PE that did a
MAC in that cycle is shaded. Values entering at the left and top edges are written beside the
grid, results leaving (ws/is: at the bottom; os: on the column buses) below it. Frames are
written with matplotlib's PillowWriter (.gif) or FFMpegWriter (.mp4, when ffmpeg is installed).
"""
from __future__ import annotations

from pathlib import Path

from tilesim.errors import InputError

MAX_PES = 256
MAX_FRAMES = 2000


def animate(res, path: str | Path, fps: float = 2.0, dpi: int = 72) -> Path:
    """Write ``res`` (a :class:`~tilesim.arch.systolic.SystolicResult` with a trace) to
    ``path`` (.gif, or .mp4 where an ffmpeg writer exists); returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation
    from matplotlib.patches import Rectangle

    from tilesim.arch.systolic import _fmt, _phase

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise InputError(f"--animate: {str(path)!r} is not allowed (a .gif or .mp4 file name)")
    if suffix == ".mp4" and not animation.writers.is_available("ffmpeg"):
        raise InputError(f"--animate: {str(path)!r} needs ffmpeg, which is not installed; "
                         "write a .gif instead")
    if res.trace is None:
        raise InputError("--animate needs a traced run (trace=True)")
    R, C, T = res.rows, res.cols, res.cycles
    if R * C > MAX_PES or T > MAX_FRAMES:
        raise InputError(f"--animate: {R}x{C} PEs over {T} cycles is too big to draw "
                         f"(at most {MAX_PES} PEs and {MAX_FRAMES} cycles)")
    tr = res.trace
    os_ = res.dataflow == "os"
    fig, ax = plt.subplots(figsize=(1.1 * C + 1.6, 1.1 * R + 1.4), dpi=dpi)
    ax.set_xlim(-1.3, C + 0.1)
    ax.set_ylim(-(R + 1.1), 1.2)
    ax.set_axis_off()
    title = ax.set_title("", fontsize=9)
    boxes, texts = {}, {}
    for r in range(R):
        for c in range(C):
            boxes[r, c] = ax.add_patch(Rectangle((c, -r - 1), 0.92, 0.92, ec="0.3", fc="white"))
            texts[r, c] = ax.text(c + 0.46, -r - 0.54, "", ha="center", va="center",
                                  fontsize=8, family="monospace")
    left = [ax.text(-0.15, -r - 0.54, "", ha="right", va="center", fontsize=8, color="tab:blue")
            for r in range(R)]
    top = [ax.text(c + 0.46, 0.5, "", ha="center", va="center", fontsize=8, color="tab:green")
           for c in range(C)]
    bottom = [ax.text(c + 0.46, -R - 0.55, "", ha="center", va="center", fontsize=8,
                      color="tab:red") for c in range(C)]
    names = ("a", "w", "acc") if os_ else ("a", "w", "psum")
    tag_a = "a_fold" if os_ else "a_tile"

    def draw(t):
        title.set_text(f"{res.dataflow} {R}x{C}  cycle {t + 1}/{T}{_phase(res, t)}")
        for r in range(R):
            for c in range(C):
                live = tr.planes[tag_a][t, r, c] >= 0
                vals = [_fmt(tr.planes[n][t, r, c], 4).strip() for n in names]
                if not live:
                    vals[0] = "."
                    if not os_:
                        vals[2] = "."
                texts[r, c].set_text(f"a {vals[0]}\nw {vals[1]}\n{'s' if os_ else 'p'} {vals[2]}")
                boxes[r, c].set_facecolor("#ffe08a" if live else "white")
            lt = tr.edges["left_fold" if os_ else "left_tile"][t, r]
            left[r].set_text(_fmt(tr.edges["left"][t, r], 4).strip() + " >" if lt >= 0 else "")
        for c in range(C):
            if os_:
                top[c].set_text(_fmt(tr.edges["top"][t, c], 4).strip())
                on = tr.edges["bus_fold"][t, c] >= 0
                bottom[c].set_text(_fmt(tr.edges["bus"][t, c], 4).strip() if on else "")
            else:
                on_top = tr.edges["top_tile"][t, c] >= 0
                top[c].set_text(_fmt(tr.edges["top"][t, c], 4).strip() + " v" if on_top else "")
                on = tr.edges["bottom_tile"][t, c] >= 0
                bottom[c].set_text("v " + _fmt(tr.edges["bottom"][t, c], 4).strip() if on else "")
        return []

    anim = animation.FuncAnimation(fig, draw, frames=T, blit=False)
    writer = (animation.PillowWriter(fps=fps) if suffix == ".gif"
              else animation.FFMpegWriter(fps=fps))
    try:
        anim.save(str(path), writer=writer, dpi=dpi)
    except OSError as e:
        raise InputError(f"--animate: {str(path)!r}: cannot write ({e})") from None
    finally:
        plt.close(fig)
    return path
