"""backends/cuda/driver.py: NVRTC writes its log and cubin into buffers of their own, never into
an object the interpreter shares (runs wherever libnvrtc loads; no GPU needed)."""
import pytest


def _nvrtc() -> bool:
    try:
        from cuda.bindings import nvrtc

        nvrtc.nvrtcVersion()     # loads libnvrtc
        return True
    except Exception:  # noqa: BLE001 - no cuda-bindings, no libnvrtc: nothing to compile with
        return False


@pytest.mark.skipif(not _nvrtc(), reason="NVRTC (libnvrtc) not found")
def test_a_clean_compile_leaves_the_shared_one_byte_bytes_alone():
    from minigraph.backends.cuda.driver import nvrtc_cubin_text

    cubin, log = nvrtc_cubin_text(b'extern "C" __global__ void k(float* x) { x[0] = 1.f; }', "k.cu", "sm_80",
                                  (), (), "test")
    assert log == "" and len(cubin) > 100    # an empty log: NVRTC's log size is 1, only the NUL
    # b" " * 1 is CPython's one shared b" "; NVRTC's NUL once landed there, and torch then failed to
    # import ("annotate(strtag)"): every b" " of the process had become b"\x00"
    assert b" "[0] == 32 and bytes([32])[0] == 32


def test_module_keeps_its_image_and_looks_each_function_up_once(monkeypatch):
    """driver.Module (attention_mma, quant_mmvq and the GDN decode load their cubins through it),
    against a stand-in driver: the image stays with the module, a function is looked up once, and a
    failed load names the op."""
    drv = pytest.importorskip("cuda.bindings.driver")
    from numba import cuda

    from minigraph.backends.cuda import driver
    from minigraph.core.errors import MinigraphError

    ok = drv.CUresult.CUDA_SUCCESS
    lookups = []
    monkeypatch.setattr(cuda, "current_context", lambda: None)
    monkeypatch.setattr(drv, "cuModuleLoadData", lambda addr: (ok, "module"))
    monkeypatch.setattr(drv, "cuModuleGetFunction", lambda mod, name: lookups.append((mod, name)) or (ok, name))
    m = driver.Module(b"cubin bytes", "TEST")
    assert m.function("k") == b"k" and m.function("k") == b"k" and lookups == [("module", b"k")]
    assert m.image.raw.startswith(b"cubin bytes")
    monkeypatch.setattr(drv, "cuModuleLoadData", lambda addr: (drv.CUresult.CUDA_ERROR_INVALID_IMAGE, None))
    with pytest.raises(MinigraphError, match="TEST: module load failed"):
        driver.Module(b"x", "TEST")
