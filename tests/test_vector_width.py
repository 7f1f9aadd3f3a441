"""backends/cpu/vector_width.py: 512-bit loop vectorisation on AVX-512 CPUs that LLVM tunes for
256 bits, set before anything compiles, and only where the user has not chosen."""
import llvmlite.binding as llvm
import numba
import numpy as np
import pytest

from minigraph.backends.cpu import vector_width

AVX512 = bool(llvm.get_host_cpu_features().get("avx512f", False))


def _clean(monkeypatch):
    for name in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", "MINIGRAPH_VECTOR_BITS"):
        monkeypatch.delenv(name, raising=False)


def test_features_lift_the_256_bit_preference_on_avx512(monkeypatch):
    _clean(monkeypatch)
    feats = vector_width.wide_features()
    if not AVX512:
        assert feats is None                 # nothing to widen: the host's own features stay
        return
    assert feats.endswith("," + vector_width.FLAG)
    assert "+avx512f" in feats.split(",")    # the host's features, all of them, come first
    assert feats.startswith(llvm.get_host_cpu_features().flatten())


@pytest.mark.parametrize("name, value", [("NUMBA_CPU_FEATURES", "+avx2"), ("NUMBA_CPU_NAME", "generic"),
                                         ("MINIGRAPH_VECTOR_BITS", "256")])
def test_a_users_choice_wins(name, value, monkeypatch):
    _clean(monkeypatch)
    monkeypatch.setenv(name, value)
    assert vector_width.wide_features() is None


@pytest.mark.skipif(not AVX512, reason="the host has no AVX-512")
def test_numba_compiles_with_the_flag(monkeypatch):
    """After `import minigraph` Numba's target machine carries the flag (unless the environment of
    this test run chose otherwise), and a loop Numba vectorises uses zmm registers."""
    if not vector_width.wide():
        # NUMBA_CPU_FEATURES / NUMBA_CPU_NAME / MINIGRAPH_VECTOR_BITS=256 set for the whole run:
        # the flag is rightly absent, which test_a_users_choice_wins covers
        pytest.skip("this run's environment chose the CPU features itself")
    from numba.core.registry import cpu_target
    assert vector_width.FLAG in cpu_target.target_context.codegen()._tm_features

    @numba.njit(fastmath=True)
    def dot(a, b):
        s = np.float32(0.0)
        for i in range(a.shape[0]):
            s += a[i] * b[i]
        return s
    x = np.ones(256, np.float32)
    assert dot(x, x) == 256.0
    asm = next(iter(dot.inspect_asm().values()))
    assert "zmm" in asm
