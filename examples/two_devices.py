"""Two devices in one scheduler: a two-layer delta-net model split by layers (llama.cpp's -sm layer)
and by rows (-sm row), each checked against the one-device run.

On a machine with two GPUs it uses CUDA0 and CUDA1; anywhere else two fake devices (CPU backends
with memory of their own, minigraph.testing.fake_devices) stand in for them, so the placement,
splits and copies are the same and really happen. MINIGRAPH_SCHED_DEBUG=1 prints every placement.

Run: python examples/two_devices.py            (--fake: fake devices even when two GPUs exist)
"""
import sys

import numpy as np

import minigraph as mg
from minigraph.testing.fake_devices import fake_devices
from minigraph.testing.toy_models import delta_net_stack


def two_devices(force_fake: bool):
    """(dev0, dev1, what): two CUDA backends when two real GPUs exist, else two fake devices."""
    if not force_fake:
        try:
            from numba import cuda

            from minigraph.core import flags

            if not flags.cuda_simulator() and cuda.is_available() and len(cuda.gpus) >= 2:
                return mg.backend_cuda_init(0), mg.backend_cuda_init(1), "two GPUs"
        except Exception:  # noqa: BLE001 - no CUDA here: fake devices
            pass
    d0, d1 = fake_devices(2)
    return d0, d1, "two fake devices (fewer than two GPUs here)"


def results(m):
    return [m.logits.numpy().copy()] + [s.numpy().copy() for s in m.states]


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def summary(sched, title):
    rep = sched.report()
    print(f"\n{title}: {rep['n_splits']} splits {[s['backend'] for s in rep['splits']]}, "
          f"{rep['n_copies']} copies per run; between devices {rep['bytes_between_devices']} bytes "
          f"{ {k: v for k, v in rep['copies_by_pair'].items() if 'CPU' not in k} }")
    if rep["layers"]:
        print("  layers:", ", ".join(f"{k} -> {v}" for k, v in rep["layers"].items()))
    for r in rep["row_splits"][:3]:
        print(f"  row split {r['node'] or 'mul_mat'}: " +
              ", ".join(f"{p['backend']} rows {p['rows'][0]}..{p['rows'][1]}" for p in r["parts"]) +
              f", gathered on {r['gather']}")
    if len(rep["row_splits"]) > 3:
        print(f"  ... {len(rep['row_splits'])} row-split MUL_MATs in all")
    causes = {}
    for p in rep["placements"]:
        causes[(p["backend"], p["cause"])] = causes.get((p["backend"], p["cause"]), 0) + 1
    print("  placements (backend, cause): count:", dict(sorted(causes.items())))
    stats = sched.get_copy_stats()
    print("  copies made:", {k: v["paths"] for k, v in stats["by_pair"].items()})


def main() -> int:
    d0, d1, what = two_devices("--fake" in sys.argv)
    cpu = mg.backend_cpu_init()
    print(f"devices: {d0.name}, {d1.name} ({what})")

    # 1. one device: the reference
    m = delta_net_stack(n_layer=2)
    mg.backend_sched_new([d0, cpu]).graph_compute(m.graph)
    one = results(m)
    ref = mg.reference_compute(m.graph)
    print(f"one device vs float64 reference: max |diff| {float(np.abs(one[0] - ref[m.logits]).max()):.2e}")

    # 2. -sm layer: layer 0 on dev0, layer 1 and the output layer on dev1 (tensor_split 1:3,
    #    llama.cpp's assignment); the weights move to their layer's device first (llama.cpp's loader)
    m = delta_net_stack(n_layer=2)
    sched = mg.backend_sched_new([d0, d1, cpu], tensor_split=[1, 3])
    moved = sched.alloc_layer_weights(m.graph)
    sched.graph_compute(m.graph)
    print(f"\nlayer split: weights moved {moved}; max |diff| vs one device {max_diff(results(m), one):.2e}")
    summary(sched, "layer split (tensor_split [1, 3])")

    # 3. -sm row: every MUL_MAT weight split by rows over both devices, the rest on dev0
    m = delta_net_stack(n_layer=2)
    buft = mg.split_buffer_type([d0, d1], [0.5, 0.5])
    mats = {id(n.src[0]) for n in m.graph.nodes if n.op == "MUL_MAT"}
    for name, w in m.weights.items():
        if name == "inp_embd":
            continue  # the input stays on the host, as llama.cpp keeps the input layer
        mg.backend_tensor_alloc(buft if id(w) in mats else d0, w)
    sched = mg.backend_sched_new([d0, d1, cpu])
    sched.graph_compute(m.graph)
    print(f"\nrow split: max |diff| vs one device {max_diff(results(m), one):.2e}")
    summary(sched, "row split (tensor_split [0.5, 0.5])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
