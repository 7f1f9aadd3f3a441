"""The one error type every refusal raises, and helpers that name the op and tensors."""
from __future__ import annotations

from typing import Any, Iterable


TYPE_NAMES: dict[int, str] = {}  # filled by minigraph.core.dtypes (which imports this module)


class MinigraphError(ValueError):
    """Raised for every refused input: names the op, the tensors and what was expected."""


def describe(t: Any) -> str:
    """One-line description of a tensor as ggml users read it: name, type, ne, nb."""
    name = getattr(t, "name", "") or "<unnamed>"
    try:
        return f"'{name}' {TYPE_NAMES.get(t.type, f'type{t.type}')} ne={list(t.ne)} nb={list(t.nb)}"
    except AttributeError:
        return f"{type(t).__name__} {t!r}"


def fail(op: str, msg: str, tensors: Iterable[Any] = ()) -> MinigraphError:
    """Build (not raise) a MinigraphError for `op` with every tensor described."""
    lines = [f"{op}: {msg}"]
    for i, t in enumerate(tensors):
        lines.append(f"  src[{i}]: {describe(t)}")
    return MinigraphError("\n".join(lines))


def expect(cond: bool, op: str, msg: str, *tensors: Any) -> None:
    """Raise MinigraphError(op: msg + tensor descriptions) unless `cond` holds."""
    if not cond:
        raise fail(op, msg, tensors)
