"""Vector (SIMD) unit: timing of one VOP instruction.

Model
-----
A VOP over E input elements runs at ``lanes x elems_per_lane_per_cycle`` elements per cycle
(per-op throughput from the config) and adds the op's pipeline latency once:

    cycles = ceil(E / (lanes * elems_per_lane_per_cycle)) + latency_cycles

E is rows x cols of the input tile (reductions read every element and write one per row).
The engine runs one VOP at a time: the next VOP begins when this one has written its result,
so back-to-back dependent ops need no semaphores. Its SRAM traffic (reads of one or two
operands, the write of the result) is spread over the throughput cycles and shares the SRAM
banks with the other engines (sram.py); a VOP that the SRAM cannot feed at that rate takes
longer.

Not modelled: chaining of independent VOPs (overlapping one op's latency with the next op's
throughput), per-lane predication.
"""
from __future__ import annotations

import numpy as np

from tilesim.config import VectorConfig


def vop_cycles(op: str, elements, cfg: VectorConfig):
    """(throughput cycles, latency cycles) of a VOP ``op`` over ``elements`` input elements
    (an int, or an array of them: then the throughput cycles are an int64 array)."""
    spec = cfg.ops[op]
    rate = cfg.lanes * spec.elems_per_lane_per_cycle
    cycles = np.maximum(1, np.ceil(np.asarray(elements) / rate - 1e-9)).astype(np.int64)
    return (int(cycles) if cycles.ndim == 0 else cycles), spec.latency_cycles
