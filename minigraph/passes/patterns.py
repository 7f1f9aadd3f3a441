"""The pattern language of minigraph's rewrites (tinygrad's UPat, Inductor's CallFunction).

A pattern `P(op, src, name=..., params=..., check=...)` matches a tensor whose op is `op` (a name,
a tuple of names, or None for anything), whose op_params hold `params`, and whose sources match
`src`: a tuple fixes the order, a list matches in either order (commutative operands). `name`
captures the tensor; a name captured twice must be the same data. `P.var(name)` matches anything.

Sources are normalised before they are matched: reshape / cont / view / permute chains that only
relabel memory (the same elements in the same logical order, see `is_relabel`) are looked through,
so `cont(reshape(x))` and `x` match the same pattern. A var captures the source as the consumer
sees it (before normalisation); compare captures with `same_data`.

`match` returns the captures, or a `Miss`: the first node that did not match and why (the near
miss a debug log prints). Failure reasons are built only when a match fails.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from minigraph.core.errors import describe
from minigraph.core.tensor import Tensor, is_contiguous, nelements

RELABEL_OPS = ("RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE", "CONT", "DUP")
AX0213 = {"axis0": 0, "axis1": 2, "axis2": 1, "axis3": 3}  # ggml_permute(t, 0, 2, 1, 3)


def _offs(t: Tensor) -> int:
    return t.view_offs if t.view_src is not None else 0


def is_relabel(t: Optional[Tensor]) -> bool:
    """True when t holds its src[0]'s elements in the same logical order (only ne may differ):
    RESHAPE, CONT and DUP always; VIEW / PERMUTE / TRANSPOSE when both are contiguous over the
    same bytes (a full view, or a permute that only moves size-1 dims)."""
    if t is None or t.op not in RELABEL_OPS or not t.src or t.src[0] is None:
        return False
    s = t.src[0]
    if nelements(t) != nelements(s) or t.type != s.type:
        return False
    if t.op in ("RESHAPE", "CONT", "DUP"):
        return True
    return is_contiguous(t) and is_contiguous(s) and t.root is s.root and _offs(t) == _offs(s)


def normalise(t: Optional[Tensor]) -> Optional[Tensor]:
    """The tensor behind a chain of relabel-only nodes (t itself if it is not one)."""
    while is_relabel(t):
        t = t.src[0]
    return t


def relabel_chain(t: Tensor) -> list[Tensor]:
    """[t, ..., normalise(t)]: every tensor that holds the same data in the same order."""
    out = [t]
    while is_relabel(out[-1]):
        out.append(out[-1].src[0])
    return out


def same_data(a: Optional[Tensor], b: Optional[Tensor]) -> bool:
    return a is b or (a is not None and b is not None and normalise(a) is normalise(b))


def same_param(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


@dataclass
class Miss:
    """Why a match failed: the first mismatching node (None if a source was absent) and a reason."""

    node: Optional[Tensor]
    reason: str

    def __str__(self) -> str:
        where = f"{self.node.op or 'leaf'} {describe(self.node)}" if self.node is not None else "<none>"
        return f"{self.reason} (at {where})"


OpSpec = Union[None, str, Sequence[str]]


class P:
    """One node of a pattern; see the module docstring."""

    def __init__(self, op: OpSpec = None, src: Union[None, tuple, list] = None, *, name: str = "",
                 params: Optional[dict] = None, check: Optional[Callable[[Tensor, dict], bool]] = None,
                 why: str = "") -> None:
        self.ops = (op,) if isinstance(op, str) else (tuple(op) if op is not None else None)
        self.src = src
        self.name = name
        self.params = params or {}
        self.check = check
        self.why = why or "extra check failed"

    @classmethod
    def var(cls, name: str) -> "P":
        return cls(None, name=name)

    def __repr__(self) -> str:
        op = "/".join(self.ops) if self.ops else "*"
        return f"P({op}{' as ' + self.name if self.name else ''})"

    def match(self, t: Optional[Tensor], caps: Optional[dict] = None) -> Union[dict, Miss]:
        """The captures (a dict) if t matches, else the Miss."""
        caps = {} if caps is None else caps
        miss = _match(self, t, caps)
        return caps if miss is None else miss


def _look_through(p: P, s: Optional[Tensor]) -> Optional[Tensor]:
    """The tensor of s's relabel chain that pattern p is matched against: s itself for a var, else
    the first one whose op p names (a relabel op the pattern asks for is not looked through),
    else the normalised producer."""
    if p.ops is None or s is None:
        return s
    chain = relabel_chain(s)
    return next((x for x in chain if x.op in p.ops), chain[-1])


def _match(p: P, t: Optional[Tensor], caps: dict) -> Optional[Miss]:
    if t is None:
        return Miss(None, f"expected {p}, found no tensor")
    if p.ops is not None and t.op not in p.ops:
        return Miss(t, f"expected {'/'.join(p.ops)}, found {t.op or 'a leaf'}")
    for k, want in p.params.items():
        have = t.op_params.get(k)
        if not (want(have) if callable(want) else same_param(have, want)):
            return Miss(t, f"{t.op}: {k}={have!r}, expected {want!r}")
    if p.src is not None:
        n = len(p.src)
        if len(t.src) < n:
            return Miss(t, f"{t.op} has {len(t.src)} sources, the pattern {n}")
        orders = permutations(range(n)) if isinstance(p.src, list) else [tuple(range(n))]
        first: Optional[Miss] = None
        for order in orders:
            trial = dict(caps)
            miss = None
            for sp, i in zip(p.src, order):
                miss = _match(sp, _look_through(sp, t.src[i]), trial)
                if miss is not None:
                    break
            if miss is None:
                caps.clear()
                caps.update(trial)
                break
            first = first or miss
        else:
            return first
    if p.name:
        if p.name in caps and not same_data(caps[p.name], t):
            return Miss(t, f"'{p.name}' must be the same tensor as {describe(caps[p.name])}")
        caps[p.name] = t
    if p.check is not None and not p.check(t, caps):
        return Miss(t, p.why)
    return None


def ancestors(t: Tensor, depth: int) -> Iterable[Tensor]:
    """t and its sources up to `depth` edges back, breadth first, each once."""
    seen = {id(t)}
    level = [t]
    for _ in range(depth + 1):
        nxt = []
        for x in level:
            yield x
            for s in x.src:
                if s is not None and id(s) not in seen:
                    seen.add(id(s))
                    nxt.append(s)
        level = nxt


def find(p: P, start: Tensor, depth: int = 16) -> Optional[dict]:
    """The captures of the first ancestor of `start` (breadth first) that matches `p`."""
    for x in ancestors(start, depth):
        caps = p.match(x)
        if isinstance(caps, dict):
            return caps
    return None


class PatternMatcher:
    """An ordered list of (pattern, fn) rules; matchers compose with `+` (tinygrad's PatternMatcher).

    `rewrite(t, **kw)` tries each rule whose pattern matches t: fn(t, caps, **kw) returns a result
    (the rewrite) or a Miss / None to let the next rule try. Returns (result, misses)."""

    def __init__(self, rules: Sequence[tuple[P, Callable[..., Any]]]) -> None:
        self.rules = list(rules)

    def __add__(self, other: "PatternMatcher") -> "PatternMatcher":
        return PatternMatcher(self.rules + other.rules)

    def rewrite(self, t: Tensor, **kw: Any) -> tuple[Any, list[Miss]]:
        misses: list[Miss] = []
        for p, fn in self.rules:
            caps = p.match(t)
            if isinstance(caps, Miss):
                continue
            out = fn(t, caps, **kw)
            if isinstance(out, Miss):
                misses.append(out)
            elif out is not None:
                return out, misses
        return None, misses
