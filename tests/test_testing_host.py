"""minigraph.testing.host.cpu_line: the benchmarks' machine line names the vector code the CPU
kernels take, and works before any parallel region has started Numba's threads."""
import subprocess
import sys

from minigraph.backends.cpu import quant_ir, tile_ir
from minigraph.testing.host import cpu_line


def test_cpu_line_names_the_kernels_code():
    line = cpu_line(2)
    assert ("16-lane float tiles" if tile_ir.WIDE else "8-lane float tiles") in line
    assert ("VNNI dots" if quant_ir.VNNI else "AVX2 dots" if quant_ir.AVX2 else "portable dots") in line
    assert "2 threads" in line


def test_cpu_line_before_numbas_threads_start():
    code = "from minigraph.testing.host import cpu_line; print(cpu_line(1))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "not started" in out.stdout and "1 threads" in out.stdout
