"""Layer split over several devices (llama.cpp's `-sm layer`, the default, with --tensor-split).

`mg.backend_sched_new([dev0, dev1, cpu], tensor_split=[0.5, 0.5])`: one fraction per device (every
backend but the last, the CPU fallback). How the scheduler knows a tensor's layer, as a llama.cpp
user reads a model:
  * `blk.N.` in its name: llama.cpp names every per-layer weight blk.N.<name>.weight; a node
    named blk.N.<anything> is pinned to layer N too;
  * a node without such a name takes the layer of the weights it reads (leaf sources named blk.N.);
  * the output layer: tensors named output.* / output_norm.* (llama.cpp's output weights) or
    result_* (its result tensors) are layer n_layer, as llama.cpp counts the output layer;
  * any other node (activations: norms, the delta net itself, residual adds) has no layer of its
    own: the expand pass gives it the device of the nearest placed node before it in graph order
    (after it, for nodes before the first placed one), ggml's "expand" pass, so a layer's
    activations stay with its weights and are copied only where the next layer starts.
Layer il goes to device upper_bound(splits, il / n_slots), splits being the inclusive cumulative
fractions over their sum (float32), exactly llama.cpp's load_tensors with every layer offloaded;
n_slots = n_layer + 1 when the graph has an output layer (llama.cpp's count), else n_layer.
n_layer is the largest blk index + 1 unless backend_sched_new(..., n_layer=) says otherwise
(give it when a graph holds only some of a model's layers).

Weights allocated on a device (mg.backend_tensor_alloc) stay where they are and pin their
consumers first (pass 1); `sched.alloc_layer_weights(gf)` moves a graph's host weights into the
device of their layer (what llama.cpp's loader does), so they are not copied on every compute.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np

from minigraph.core.errors import MinigraphError
from minigraph.core.registry import OPS
from minigraph.core.tensor import Tensor

_BLK = re.compile(r"(?:^|[^\w.])blk\.(\d+)\.")
_OUTPUT = re.compile(r"^(?:output(?:_norm)?\.|result_)")
OUTPUT_LAYER = -1   # layer_of_name's answer for llama.cpp's output-layer tensors


def layer_of_name(name: str) -> Optional[int]:
    """N for a name with blk.N., OUTPUT_LAYER for output.* / output_norm.* / result_*, else None."""
    if not name:
        return None
    m = _BLK.search(name)
    if m:
        return int(m.group(1))
    return OUTPUT_LAYER if _OUTPUT.match(name) else None


@dataclass
class LayerMap:
    """Which device (an index into the scheduler's backends) each layer slot runs on."""

    fractions: list
    n_layer: int
    has_output: bool
    devices: list   # slot -> device index; slot n_layer is the output layer when has_output

    @property
    def n_slots(self) -> int:
        return len(self.devices)

    def slot(self, layer: int) -> Optional[int]:
        if layer == OUTPUT_LAYER:
            return self.n_layer if self.has_output else None
        return layer if 0 <= layer < self.n_layer else None

    def detail(self, slot: int, names: list) -> str:
        what = "output layer" if slot == self.n_layer else f"layer {slot}"
        return (f"{what} (slot {slot} of {self.n_slots}, tensor_split {self.fractions}) -> "
                f"{names[self.devices[slot]]}")


def layer_devices(fractions: list, n_slots: int) -> list:
    """llama.cpp's upper_bound over the inclusive cumulative splits, float32 like llama.cpp."""
    f = np.asarray(fractions, np.float32)
    splits = (np.cumsum(f, dtype=np.float32) / np.float32(f.sum(dtype=np.float32))).astype(np.float32)
    out = []
    for il in range(n_slots):
        frac = np.float32(il) / np.float32(n_slots)
        out.append(min(int(np.searchsorted(splits, frac, side="right")), len(f) - 1))
    return out


def build_layer_map(tensors: Iterable[Tensor], fractions: list, n_layer: Optional[int]) -> LayerMap:
    layers = [layer_of_name(t.name) for t in tensors]
    blk = [x for x in layers if x is not None and x != OUTPUT_LAYER]
    found = max(blk) + 1 if blk else 0
    if n_layer is None:
        n_layer = found
    elif found > n_layer:
        raise MinigraphError(f"scheduler: the graph names layer blk.{found - 1} but n_layer is {n_layer}")
    has_output = OUTPUT_LAYER in layers
    return LayerMap(list(fractions), n_layer, has_output, layer_devices(fractions, n_layer + has_output))


def node_layer(node: Tensor, lm: LayerMap) -> Optional[int]:
    """The layer slot of a node: its own name, else the weights (leaf sources) it reads."""
    own = layer_of_name(node.name)
    if own is not None:
        return lm.slot(own)
    slots = [lm.slot(layer_of_name(s.root.name)) for s in node.src
             if s is not None and s.root.op is None and layer_of_name(s.root.name) is not None]
    slots = [x for x in slots if x is not None]
    return max(slots) if slots else None


def _computes(node: Tensor) -> bool:
    """A node with compute and memory of its own (not a view, not an in-place write)."""
    op = OPS.get(node.op)
    return node.view_src is None and not (op is not None and op.is_view)


def pass1b_layers(st: Any, lm: LayerMap) -> None:
    """Nodes with a layer (by name or by the weights they read) go to that layer's device."""
    names = [b.name for b in st.backends]
    for node in st.nodes:
        if st.where(node) is not None or not _computes(node):
            continue
        slot = node_layer(node, lm)
        if slot is None:
            continue
        i = lm.devices[slot]
        if st.supports(i, node):
            st.assign(node, i, "layer split", lm.detail(slot, names))


def pass2b_expand(st: Any) -> None:
    """ggml's expand: an unplaced node takes the device of the placed node before it (then, for
    what is left, after it), never the CPU fallback; a device that refuses it leaves it to pass 3."""
    last = len(st.backends) - 1
    order = [n for n in st.nodes if _computes(n)]
    for seq, where in ((order, "before"), (order[::-1], "after")):
        cur = None
        for node in seq:
            i = st.where(node)
            if i is not None:
                cur = None if i == last else (i, st.alias.get(id(node), node))
            elif cur is not None and st.supports(cur[0], node):
                st.assign(node, cur[0], "expand", f"follows '{cur[1].name or cur[1].op}' ({where} it) "
                                                  f"on {st.backends[cur[0]].name}")


def multi_device(st: Any) -> bool:
    """Whether placement already spans two devices (or the user asked for a split): only then does
    the expand pass run, so a one-device scheduler places exactly as before."""
    last = len(st.backends) - 1
    if st.sched.tensor_split is not None or st.forced:
        return True
    return len({i for i in st.plan.assign.values() if i != last}) >= 2
