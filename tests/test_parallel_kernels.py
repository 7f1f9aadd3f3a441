"""Parallel CPU kernels fork once per call. Under parallel=True Numba turns whole-array
operations (np.zeros, np.ones, np.full, np.arange, .sum(), .max(), array arithmetic ...) into
parallel loops of their own, so one outside the kernel's prange costs a second thread wake-up
and join per node (np.zeros(1) for a task counter cost 10-25% of a 4096 x 4096 quantized
mat-vec). This scans the source of every kernel compiled with a parallel build (`@kernel`,
`njit(parallel=True)`) and of every function holding a prange for such calls outside its prange
loops."""
import ast
from pathlib import Path

import minigraph.backends.cpu as cpu_pkg

FORKING_CALLS = {"zeros", "ones", "full", "arange", "linspace", "zeros_like", "ones_like", "full_like"}
FORKING_METHODS = {"sum", "max", "min", "mean", "prod", "fill", "copy"}


def _is_parallel_kernel(fn: ast.FunctionDef) -> bool:
    """A kernel with a parallel build, or any function holding a prange (an inline="always"
    helper's prange runs in the parallel kernel it is inlined into)."""
    if any(_is_prange_loop(n) for n in ast.walk(fn)):
        return True
    for d in fn.decorator_list:
        name = d.func if isinstance(d, ast.Call) else d
        name = name.attr if isinstance(name, ast.Attribute) else getattr(name, "id", "")
        if name == "kernel":
            return True
        if isinstance(d, ast.Call) and name == "njit":
            if any(k.arg == "parallel" and getattr(k.value, "value", False) is True for k in d.keywords):
                return True
    return False


def _is_prange_loop(node: ast.AST) -> bool:
    return (isinstance(node, ast.For) and isinstance(node.iter, ast.Call)
            and getattr(node.iter.func, "id", getattr(node.iter.func, "attr", "")) == "prange")


def _forking_calls_outside_prange(fn: ast.FunctionDef) -> list[str]:
    found = []

    def visit(node: ast.AST) -> None:
        if _is_prange_loop(node):
            return      # inside prange, Numba runs these sequentially within the lane
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = getattr(node.func.value, "id", "")
            if owner == "np" and node.func.attr in FORKING_CALLS:
                found.append(f"{fn.name}:{node.lineno} np.{node.func.attr}")
            elif owner != "np" and node.func.attr in FORKING_METHODS and not node.args:
                found.append(f"{fn.name}:{node.lineno} .{node.func.attr}()")
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in fn.body:
        visit(stmt)
    return found


def test_parallel_kernels_fork_once():
    folder = Path(cpu_pkg.__file__).parent
    kernels, found = 0, []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and _is_parallel_kernel(fn):
                kernels += 1
                found += [f"{path.name}:{f}" for f in _forking_calls_outside_prange(fn)]
    assert kernels >= 20, f"found only {kernels} parallel kernels: the scan lost them"
    assert found == [], "whole-array operations outside prange in parallel kernels: " + ", ".join(found)


def test_the_scan_finds_a_forking_call():
    src = ("@kernel\ndef k(dst, a):\n    q = np.zeros(1, np.int64)\n    for i in prange(3):\n"
           "        t = np.zeros(4)\n    dst[0] = a.sum()\n")
    fn = ast.parse(src).body[0]
    assert _is_parallel_kernel(fn)
    assert _forking_calls_outside_prange(fn) == ["k:3 np.zeros", "k:6 .sum()"]
    # an inlined helper holding the prange (how quant.py's task queue once forked twice)
    src = ("@numba.njit(inline='always')\ndef tasks(dst):\n    queue = np.zeros(1, np.int64)\n"
           "    for lane in prange(2):\n        pass\n")
    fn = ast.parse(src).body[0]
    assert _is_parallel_kernel(fn) and _forking_calls_outside_prange(fn) == ["tasks:3 np.zeros"]
