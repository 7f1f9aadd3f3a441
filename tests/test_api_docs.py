"""help() explains every op: generated Context methods, builder docstrings, docs/api.md, --version, py.typed.

The generated files are regenerated in memory and compared with the checked-in copies, so they
cannot drift from the registry; `python -m minigraph.tools.gen_api` rewrites them.
"""
from __future__ import annotations

import inspect
import pydoc
import tomllib
from importlib import metadata, resources

import numpy as np
import pytest

import minigraph as mg
from minigraph.core import registry, version
from minigraph.core.errors import MinigraphError
from minigraph.core.op_methods import OpMethods
from minigraph.core.tensor import Tensor
from minigraph.tools import cli, gen_api

REGEN = "stale: run `python -m minigraph.tools.gen_api` and commit the result"


def _cuda_kernels_import() -> bool:
    try:
        gen_api.load_kernel_tables()
    except gen_api.GenError:
        return False
    return True


# -- op_methods.py -----------------------------------------------------------------------------

def test_op_methods_file_matches_the_registry():
    text = gen_api.render_op_methods(gen_api.load_registry())
    assert gen_api.OP_METHODS_PATH.read_text() == text, f"{gen_api.OP_METHODS_PATH} is {REGEN}"


def test_every_builder_is_a_method_with_the_builders_signature():
    P = inspect.Parameter
    assert registry.API, "no builders registered"
    for name, fn in registry.API.items():
        assert name in vars(OpMethods), f"Context has no method {name}: op_methods.py is {REGEN}"
        assert getattr(mg.Context, name) is vars(OpMethods)[name], f"Context.{name} is shadowed by Context itself"
        method = list(inspect.signature(vars(OpMethods)[name]).parameters.values())
        built = list(inspect.signature(fn).parameters.values())
        assert method[0].name == "self"
        assert [(p.name, p.kind, p.default) for p in method[1:]] == [(p.name, p.kind, p.default) for p in built[1:]], name
        assert [str(p.annotation) for p in method[1:]] == [str(p.annotation) for p in built[1:]], name
        assert all(p.annotation is not P.empty for p in method[1:]), f"builder {name} has a parameter without a type hint"
        assert inspect.signature(fn).return_annotation is not P.empty, f"builder {name} has no return type hint"


def test_help_shows_the_real_signature_and_the_docstring():
    ctx = mg.Context()
    for target in (mg.Context.cumsum, ctx.cumsum):
        text = pydoc.render_doc(target, renderer=pydoc.plaintext)
        assert "lambda" not in text and "*args" not in text
        assert "dim: 'int' = 0" in text and "-> 'Tensor'" in text
        assert "ggml_cumsum" in text and "Extension" in text and "result:" in text
    assert list(inspect.signature(ctx.cumsum).parameters) == ["a", "dim"]
    assert list(inspect.signature(ctx.solve_tri).parameters) == ["a", "b", "left", "lower", "uni"]
    assert inspect.signature(ctx.solve_tri).parameters["left"].default is True


def test_dir_lists_every_op():
    names = set(dir(mg.Context()))
    assert set(registry.API) <= names


def test_methods_build_the_same_nodes_as_the_builders():
    ctx = mg.Context()
    a = ctx.from_numpy(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    via_method = ctx.cumsum(a, dim=1)
    via_builder = registry.API["cumsum"](ctx, a, 1)
    assert (via_method.op, via_method.ne, via_method.op_params) == (via_builder.op, via_builder.ne, via_builder.op_params)
    assert ctx.add(a, a).op == "ADD" and ctx.exp_inplace(a).view_src is a
    st = ctx.gated_delta_net_attn  # a builder with op= (a VIEW of a GATED_DELTA_NET node)
    assert inspect.ismethod(st)
    with pytest.raises(MinigraphError, match="cumsum"):
        ctx.cumsum(a, dim=4)


def test_unknown_and_ungenerated_names_get_clear_errors(monkeypatch):
    ctx = mg.Context()
    with pytest.raises(AttributeError, match="no op ggml_cumsun"):
        ctx.cumsun
    assert not hasattr(ctx, "cumsun")
    monkeypatch.setitem(registry.API, "brand_new_op", lambda ctx, a: a)
    with pytest.raises(AttributeError, match="gen_api"):
        ctx.brand_new_op


def test_generator_handles_a_new_builder_shape(monkeypatch):
    """A builder added later (keyword-only flag, Optional tensor, *args) becomes a working method."""
    from typing import Optional

    def new_op(ctx, a: Tensor, mask: Optional[Tensor] = None, *rest: int, flag: bool = False) -> Tensor:
        """New op (ggml_new_op).

        a: [ne0, ne1, ne2, ne3] f32.
        result: same shape.
        """
        return (a, mask, rest, flag)

    monkeypatch.setitem(registry.API, "new_op", new_op)
    src = gen_api.render_op_methods(registry)
    assert ("    def new_op(self, a: Tensor, mask: Optional[Tensor] = None, *rest: int, flag: bool = False) -> Tensor:"
            in src)
    namespace: dict = {}
    exec(compile(src, "op_methods_generated", "exec"), namespace)  # the generated module itself
    obj = namespace["OpMethods"]()
    assert obj.new_op(1, 2, 3, 4, flag=True) == (1, 2, (3, 4), True)
    assert obj.new_op(1) == (1, None, (), False)


def test_generator_refuses_what_it_cannot_write(monkeypatch):
    def bad_default(ctx, a: Tensor, fn: object = np.float32) -> Tensor:
        return a

    monkeypatch.setitem(registry.API, "bad_default", bad_default)
    with pytest.raises(gen_api.GenError, match="bad_default.*not a Python literal"):
        gen_api.render_op_methods(registry)
    monkeypatch.delitem(registry.API, "bad_default")

    def bad_hint(ctx, a: Nowhere) -> Tensor:  # noqa: F821  (a string under postponed annotations)
        return a

    monkeypatch.setitem(registry.API, "bad_hint", bad_hint)
    with pytest.raises(gen_api.GenError, match="bad_hint.*'Nowhere'"):
        gen_api.render_op_methods(registry)


# -- builder docstrings ------------------------------------------------------------------------

def test_every_builder_docstring_names_ggml_and_every_parameter():
    problems = []
    for name, fn in sorted(registry.API.items()):
        doc = gen_api.builder_doc(fn)
        if not doc:
            problems.append(f"{name}: no docstring ({gen_api.builder_path(fn)})")
            continue
        if f"ggml_{name}" not in doc.split("\n\n")[0] and "no ggml twin" not in doc.split("\n\n")[0]:
            problems.append(f"{name}: the first paragraph names neither ggml_{name} nor 'no ggml twin'")
        entries = gen_api.doc_entries(doc)
        params = list(inspect.signature(fn).parameters)[1:]
        missing = [p for p in params + ["result"] if p not in entries]
        if missing:
            problems.append(f"{name}: no 'name: ...' line for {missing}")
        tensors = [p.name for p in list(inspect.signature(fn).parameters.values())[1:] if "Tensor" in str(p.annotation)]
        for t in tensors + ["result"]:
            if t in entries and "[" not in entries[t] and "view of" not in entries[t] and "same" not in entries[t]:
                problems.append(f"{name}: '{t}:' does not state an ne layout ([ne0, ...])")
    assert not problems, "builder docstrings (see tests/test_api_docs.py for the format):\n" + "\n".join(problems)


def test_extensions_state_the_default_that_keeps_ggml():
    cumsum = gen_api.doc_entries(gen_api.builder_doc(registry.API["cumsum"]))
    assert "Extension" in cumsum["dim"] and "default 0" in cumsum["dim"]
    solve = gen_api.builder_doc(registry.API["solve_tri"])
    assert "Extension" in solve and "left=True, lower=True, uni=False" in solve


def test_every_builder_maps_to_a_registry_op():
    for name in registry.API:
        assert gen_api.node_op(name, registry) in registry.OPS, name
    assert gen_api.node_op("sqrt", registry) == "SQRT" and gen_api.node_op("sqr", registry) == "SQR"
    assert gen_api.node_op("soft_max_ext", registry) == "SOFT_MAX"
    assert gen_api.node_op("mul_mat", registry) == "MUL_MAT"
    assert gen_api.node_op("gated_delta_net_state", registry) == "VIEW"


def test_doc_entries_parser():
    doc = "Title (ggml_x).\n\na, b: first\n      more\nc:    third\n\nresult: out\n"
    assert gen_api.doc_entries(doc) == {"a": "first more", "b": "first more", "c": "third", "result": "out"}


# -- docs/api.md -------------------------------------------------------------------------------

@pytest.mark.skipif(not _cuda_kernels_import(), reason="docs/api.md lists CUDA kernels; numba-cuda is not installed")
def test_api_md_matches_the_registry():
    text = gen_api.render_api_md(gen_api.load_registry())
    assert gen_api.API_MD_PATH.read_text() == text, f"{gen_api.API_MD_PATH} is {REGEN}"
    assert gen_api.main(["--check"]) == 0


def test_api_md_covers_every_op_builder_and_public_name():
    text = gen_api.API_MD_PATH.read_text()
    for op in registry.OPS:
        assert f"\n## {op}\n" in text, op
    for name in registry.API:
        assert f"### `ctx.{name}(" in text, name
    for name in mg.__all__:
        if not inspect.ismodule(getattr(mg, name)):
            assert f"`mg.{name}`" in text, name
    for name in ("new_tensor_4d", "from_numpy", "new_graph"):
        assert f"| `ctx.{name}` |" in text, name
    assert "| CUMSUM | reduce | `cumsum` | cpu, cuda |" in text
    assert "ggml: `ggml_cumsum`" in text


def test_public_doc_list_reads_the_root_package():
    names = {n for n, _, _ in gen_api._public_names()}
    assert names == {n for n in mg.__all__ if not inspect.ismodule(getattr(mg, n))}
    missing = gen_api.public_functions_without_doc()
    assert all(" (minigraph." in m for m in missing)
    assert not any(m.startswith(("type_name ", "load_graph ", "init ")) for m in missing)


def test_every_public_function_and_method_has_a_docstring():
    """help() on any `mg.` name, and on the methods of the classes a user holds (the context, its
    tensors and graphs, schedulers, backends, buffers), says what it does."""
    assert gen_api.public_functions_without_doc() == []
    classes = [mg.Context, mg.Tensor, mg.Graph, mg.BackendSched, mg.Backend, mg.Buffer, mg.HostBuffer,
               type(mg.backend_cpu_init(1))]
    missing = [f"{cls.__name__}.{name}" for cls in classes for name in dir(cls)
               if not name.startswith("_") and callable(getattr(cls, name)) and not inspect.getdoc(getattr(cls, name))]
    assert missing == []


# -- version and typing ------------------------------------------------------------------------

def test_version_flag(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"minigraph {metadata.version('minigraph')}"


def test_version_falls_back_to_pyproject(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version.metadata, "version", not_installed)
    with open(version.PYPROJECT, "rb") as f:
        assert version.package_version() == tomllib.load(f)["project"]["version"]
    monkeypatch.setattr(version, "PYPROJECT", version.PYPROJECT.with_name("no-such-file.toml"))
    assert version.package_version() == "0+unknown"


def test_root_package_exports_version():
    assert mg.__version__ == version.__version__


def test_py_typed_ships_with_the_package():
    assert resources.files("minigraph").joinpath("py.typed").is_file()
    with open(version.PYPROJECT, "rb") as f:
        assert "py.typed" in tomllib.load(f)["tool"]["setuptools"]["package-data"]["minigraph"]
