"""No backend kernel indexes with a loop-invariant // or % inside its innermost loop.

Numba's integer floor division and modulo carry zero and sign checks that LLVM does not hoist
out of a loop, so a broadcast index written per element (`b[r // n1, i]`, `a[i3 % a3, i1, i]`)
costs a few divisions an element: it was 30-45 us of a 4096-long src1 copy in the quantized
mat-vec and made OUT_PROD 55x slower (BENCHMARKS.md, "Index arithmetic in the CPU kernels' inner
loops"). The check reads the sources: every innermost `for` loop, every // or % inside a
subscript there whose names the loop neither iterates over nor assigns."""
import ast
from pathlib import Path

BACKENDS = Path(__file__).resolve().parents[1] / "backends"


def invariant_index_divisions(source: str, name: str = "<src>") -> list[str]:
    """'name:line: expr' for each loop-invariant // or % in a subscript of an innermost loop."""
    found = []
    for loop in ast.walk(ast.parse(source)):
        if not isinstance(loop, ast.For):
            continue
        if any(isinstance(n, (ast.For, ast.While)) for stmt in loop.body for n in ast.walk(stmt)):
            continue
        varying = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
        for n in (n for stmt in loop.body for n in ast.walk(stmt)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AugAssign) else []
            for t in targets:
                varying |= {e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)}
        for sub in (n for stmt in loop.body for n in ast.walk(stmt) if isinstance(n, ast.Subscript)):
            for op in ast.walk(sub.slice):
                if isinstance(op, ast.BinOp) and isinstance(op.op, (ast.FloorDiv, ast.Mod)):
                    names = {x.id for x in ast.walk(op) if isinstance(x, ast.Name)}
                    if names and not names & varying:
                        found.append(f"{name}:{op.lineno}: {ast.unparse(op)}")
    return found


def test_the_check_finds_the_patterns_it_is_for():
    bad = ("def f(x, b, n1, n2):\n"
           "    for r in range(x.shape[0]):\n"
           "        for i in range(x.shape[1]):\n"
           "            x[r, i] = b[r // (n2 * n1), (r // n1) % n2, r % n1, i]\n")
    assert len(invariant_index_divisions(bad)) == 4
    good = ("def f(x, b, n1, n2):\n"
            "    for r in range(x.shape[0]):\n"
            "        i3, i2 = r // n1, r % n1\n"
            "        for i in range(x.shape[1]):\n"
            "            x[r, i] = b[i3, i2, i // 4, i % 4]\n")
    assert invariant_index_divisions(good) == []


def test_no_backend_kernel_divides_loop_invariant_indices_per_element():
    files = sorted(BACKENDS.glob("*/*.py"))
    assert len(files) > 20, "backends/ not found next to tests/"
    found = [hit for f in files for hit in invariant_index_divisions(f.read_text(), str(f.relative_to(BACKENDS)))]
    assert found == [], "take these indices once, outside the loop:\n" + "\n".join(found)
