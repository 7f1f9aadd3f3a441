"""`minigraph dump FILE.gguf`: a GGUF file's tensors (name, type, ne, bytes) and metadata."""
from __future__ import annotations

import json
import re
from typing import Any, Optional

from minigraph.core import dtypes
from minigraph.core.gguf_io import gguf_info

MAX_ITEMS = 8      # an array value (a tokenizer's vocabulary) shows its first items and its length


def _short(v: Any) -> str:
    if isinstance(v, list):
        head = ", ".join(repr(x) for x in v[:MAX_ITEMS])
        return f"[{head}{', ...' if len(v) > MAX_ITEMS else ''}] ({len(v)} items)"
    return repr(v)


def _type_name(meta_types: dict, key: str) -> str:
    ts = meta_types.get(key, ())
    return "[" + ts[1].name + "]" if len(ts) > 1 else (ts[0].name if ts else "?")


def render_gguf(path: str, fmt: str = "text", pattern: Optional[str] = None) -> str:
    """The listing as text (a table, ggml type names, ne in ggml order) or JSON; `pattern`
    keeps the tensors and keys whose name matches."""
    tensors, meta = gguf_info(path)
    keep = (lambda s: re.search(pattern, s) is not None) if pattern else (lambda s: True)
    tensors = [t for t in tensors if keep(t.name)]
    keys = [k for k in meta if keep(k)]
    if fmt == "json":
        return json.dumps({"file": path,
                           "tensors": [{"name": t.name, "type": dtypes.type_name(t.type), "ne": list(t.ne),
                                        "bytes": t.nbytes, "offset": t.offset} for t in tensors],
                           "metadata": {k: {"type": _type_name(meta.types, k), "value": meta[k]} for k in keys}},
                          indent=1, default=str) + "\n"
    total = sum(t.nbytes for t in tensors)
    lines = [f"GGUF {path}: {len(tensors)} tensors, {total} bytes, {len(keys)} metadata keys", "",
             f"{'name':<40} {'type':<6} {'ne':<28} {'bytes':>12}"]
    for t in tensors:
        lines.append(f"{t.name:<40} {dtypes.type_name(t.type):<6} {str(list(t.ne)):<28} {t.nbytes:>12}")
    lines += ["", f"{'key':<40} {'type':<10} value"]
    for k in keys:
        lines.append(f"{k:<40} {_type_name(meta.types, k):<10} {_short(meta[k])}")
    return "\n".join(lines) + "\n"
