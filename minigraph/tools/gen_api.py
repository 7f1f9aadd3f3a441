"""Generate Context's op methods and the API reference from the op registry.

    python -m minigraph.tools.gen_api           # rewrite minigraph/core/op_methods.py and docs/api.md
    python -m minigraph.tools.gen_api --check   # exit 1 (and name the files) if either is stale

Both files are derived from `minigraph.core.registry` (API: the builders, BUILDER_OP / OPS: the
node each records, KERNELS: which backends run it) and from each builder's signature and
docstring, so nothing is written per op: a new op appears after one rerun. tests/test_api_docs.py
regenerates both in memory and fails when the checked-in copies differ.

op_methods.py holds `class OpMethods`, which Context inherits: one real method per builder with the
builder's signature (the context parameter becomes `self`), its type hints and its docstring, whose
body is a single call of the registered builder, so `help(ctx.cumsum)`, `dir(ctx)` and IDE completion
see every op and a call costs one extra Python call.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

PACKAGE_DIR = Path(__file__).resolve().parents[1]
OP_METHODS_PATH = PACKAGE_DIR / "core" / "op_methods.py"
API_MD_PATH = PACKAGE_DIR.parent / "docs" / "api.md"
GENERATOR = "python -m minigraph.tools.gen_api"
TYPING_MODULES = ("typing", "collections.abc", "typing_extensions")
# a docstring entry: "name: text" or "a, b: text" at the start of a line
ENTRY = re.compile(r"^(\w+(?:\s*,\s*\w+)*)\s*:\s+(.*)$")


class GenError(Exception):
    """A builder the generator cannot turn into a method (the message says which and why)."""


def load_registry() -> Any:
    """Import the ops and the backends' kernel tables; returns minigraph.core.registry.

    The CUDA kernels register on import without a GPU (numba-cuda compiles lazily); without
    numba-cuda the API reference cannot be generated, op_methods.py still can."""
    importlib.import_module("minigraph.ops")
    importlib.import_module("minigraph.backends.cpu")
    return importlib.import_module("minigraph.core.registry")


def load_kernel_tables() -> None:
    try:
        importlib.import_module("minigraph.backends.cuda")
    except ImportError as e:  # the reference lists CUDA kernels: refuse rather than write a partial one
        raise GenError(f"docs/api.md lists the CUDA kernels, but minigraph.backends.cuda does not import: {e}") from e


# -- signatures ------------------------------------------------------------------------------------

@dataclass
class Imports:
    """Names the generated annotations use: imported at run time (core, typing, third party) or
    under TYPE_CHECKING (minigraph layers above core, which core must not import)."""

    runtime: set[str] = field(default_factory=set)
    typing_only: set[str] = field(default_factory=set)

    def need(self, name: str, scope: dict, where: str) -> None:
        if hasattr(builtins, name):
            return
        obj = scope.get(name)
        if obj is None:
            import typing

            if not hasattr(typing, name):
                raise GenError(f"{where}: annotation name {name!r} is not defined in the builder's module")
            obj = getattr(typing, name)
        if inspect.ismodule(obj):
            line = f"import {obj.__name__}" + ("" if obj.__name__ == name else f" as {name}")
            module = obj.__name__
        else:
            module = getattr(obj, "__module__", None)
            real = getattr(obj, "__name__", name)
            if module is None:
                raise GenError(f"{where}: cannot tell where annotation name {name!r} comes from")
            if module in TYPING_MODULES:
                module, real = "typing", name
            line = f"from {module} import {real}" + ("" if real == name else f" as {name}")
        above_core = module.startswith("minigraph.") and not module.startswith("minigraph.core")
        (self.typing_only if above_core else self.runtime).add(line)


def _annotation(ann: Any, scope: dict, imports: Imports, where: str) -> str:
    if isinstance(ann, str):
        text = ann
    elif inspect.isclass(ann):
        text = ann.__name__
        scope = {**scope, text: ann}
    else:
        text = inspect.formatannotation(ann).replace("typing.", "")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise GenError(f"{where}: annotation {text!r} is not an expression") from e
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            imports.need(node.id, scope, where)
    return text


def _literal(value: Any, where: str) -> str:
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value and type(ast.literal_eval(text)) is type(value)
    except (ValueError, SyntaxError):
        same = False
    if not same:
        raise GenError(f"{where}: default {text} is not a Python literal; use a literal (ggml's enum value)")
    return text


def method_signature(name: str, fn: Callable[..., Any], imports: Imports) -> tuple[str, str]:
    """(the parameter list of the method, the argument list of its call to the builder)."""
    P = inspect.Parameter
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].kind not in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
        raise GenError(f"builder {name}: the first parameter must be the context")
    scope = getattr(fn, "__globals__", {})
    decl, call = ["self"], ["self"]
    last_posonly = 0 if params[0].kind is P.POSITIONAL_ONLY else -1
    star_done = False
    for i, p in enumerate(params[1:], 1):
        where = f"builder {name}, parameter {p.name}"
        if p.name == "self":
            raise GenError(f"{where}: a builder parameter cannot be called self")
        if p.kind is P.KEYWORD_ONLY and not star_done:
            decl.append("*")
            star_done = True
        text = p.name
        if p.annotation is not P.empty:
            text += ": " + _annotation(p.annotation, scope, imports, where)
        if p.default is not P.empty:
            text += (" = " if p.annotation is not P.empty else "=") + _literal(p.default, where)
        if p.kind is P.VAR_POSITIONAL:
            text, star_done = "*" + text, True
            call.append("*" + p.name)
        elif p.kind is P.VAR_KEYWORD:
            text = "**" + text
            call.append("**" + p.name)
        elif p.kind is P.KEYWORD_ONLY:
            call.append(f"{p.name}={p.name}")
        else:
            call.append(p.name)
        if p.kind is P.POSITIONAL_ONLY:
            last_posonly = i
        decl.append(text)
    if last_posonly > 0:
        decl.insert(last_posonly + 1, "/")
    ret = inspect.signature(fn).return_annotation
    ret_text = "" if ret is P.empty else " -> " + _annotation(ret, scope, imports, f"builder {name}, return")
    return "(" + ", ".join(decl) + ")" + ret_text, ", ".join(call)


# -- docstrings ------------------------------------------------------------------------------------

def builder_doc(fn: Callable[..., Any]) -> str:
    return inspect.cleandoc(fn.__doc__) if fn.__doc__ else ""


def builder_path(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def node_op(name: str, registry: Any) -> Optional[str]:
    """The OpDef the builder records: BUILDER_OP when given, else the longest registry op name
    that the builder's upper-case name starts with, up to a `_` (view_2d -> VIEW, sqrt -> SQRT)."""
    if name in registry.BUILDER_OP:
        return registry.BUILDER_OP[name]
    upper = name.upper()
    hits = [op for op in registry.OPS if upper == op or upper.startswith(op + "_")]
    return max(hits, key=len) if hits else None


def doc_entries(doc: str) -> dict[str, str]:
    """The "name: text" entries of a docstring (continuation lines joined); "a, b: text" gives both."""
    entries: dict[str, str] = {}
    keys: list[str] = []
    for line in doc.splitlines():
        m = ENTRY.match(line)
        if m and not line[0].isspace():
            keys = [k.strip() for k in m.group(1).split(",")]
            for k in keys:
                entries[k] = m.group(2).strip()
        elif keys and line.strip() and line[0].isspace():
            for k in keys:
                entries[k] += " " + line.strip()
        else:
            keys = []
    return entries


def _docstring_literal(doc: str, where: str, indent: str) -> str:
    if '"""' in doc or doc.endswith("\\"):
        raise GenError(f"{where}: the docstring cannot contain triple quotes or end with a backslash")
    body = "\n".join((indent + line) if line else "" for line in doc.splitlines())
    prefix = "r" if "\\" in doc else ""
    return f'{prefix}"""{body.lstrip()}\n{indent}"""' if "\n" in doc else f'{prefix}"""{doc}"""'


def method_doc(name: str, fn: Callable[..., Any], registry: Any) -> str:
    doc = builder_doc(fn) or "No docstring yet."
    op = node_op(name, registry)
    return doc + f"\n\nBuilder: {builder_path(fn)}" + (f"; node op: {op}." if op else ".")


# -- op_methods.py ---------------------------------------------------------------------------------

OP_METHODS_HEADER = '''"""Every registered op as a method of Context: ggml_X(ctx, ...) is ctx.X(...).

GENERATED by `{gen}` from minigraph.core.registry.API; do not edit.
Each method calls the builder registered for its name, so an op stays defined once, in its
minigraph.ops family module; rerun the generator after adding or changing a builder
(tests/test_api_docs.py fails while this file is stale).
"""
from __future__ import annotations
'''


def render_op_methods(registry: Any) -> str:
    imports = Imports(runtime={"from minigraph.core.registry import API as _API"})
    methods = []
    for name in sorted(registry.API):
        fn = registry.API[name]
        decl, call = method_signature(name, fn, imports)
        doc = _docstring_literal(method_doc(name, fn, registry), f"builder {name}", " " * 8)
        methods.append(f"    def {name}{decl}:\n        {doc}\n        return _API[{name!r}]({call})\n")
    out = [OP_METHODS_HEADER.format(gen=GENERATOR)]
    if imports.typing_only:
        imports.runtime.add("from typing import TYPE_CHECKING")
    out += _import_block(imports.runtime)
    if imports.typing_only:
        out += ["", "if TYPE_CHECKING:"] + ["    " + line for line in _import_block(imports.typing_only)]
    out += ["", "", "class OpMethods:",
            '    """ggml\'s graph-building functions as methods (Context inherits them)."""', "",
            "    __slots__ = ()", ""]
    return "\n".join(out) + "\n" + "\n".join(methods)


def _import_block(lines: set[str]) -> list[str]:
    """`from m import a` lines merged per module, `import m` first, sorted."""
    plain = sorted(line for line in lines if line.startswith("import "))
    froms: dict[str, set[str]] = {}
    for line in lines:
        if line.startswith("from "):
            module, names = line[5:].split(" import ")
            froms.setdefault(module, set()).add(names)
    order = sorted(froms, key=lambda m: (m.startswith("minigraph"), m))  # stdlib and third party first
    return plain + [f"from {m} import {', '.join(sorted(froms[m]))}" for m in order]


# -- docs/api.md -----------------------------------------------------------------------------------

API_MD_HEADER = """# minigraph API reference

GENERATED by `{gen}` from the op registry (minigraph.core.registry); do not edit.
`help(ctx.X)` shows the same text. The transcription rule: `ggml_X(ctx, ...)` is `ctx.X(...)`,
`ggml_Y(t)` without a context is `mg.Y(t)`, `GGML_Z` is `mg.Z`. Shapes are ggml's ne order
`[ne0, ne1, ne2, ne3]` (ne0 fastest; numpy shape `(ne3, ne2, ne1, ne0)`); f32/f16/bf16 means any
of the float types. Kernels: the backends with a registered kernel (KERNELS); whether a node
runs there is that kernel's `supports` rule (`backend.supports_op(t)`, and docs/ops.md).
"""


def _first_line(doc: str) -> str:
    return doc.split("\n\n")[0].replace("\n", " ").strip() if doc else "(no docstring)"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _kernels(op: Optional[str], registry: Any) -> str:
    if op is None or op not in registry.OPS:
        return "?"
    if registry.OPS[op].is_view:
        return "none needed (a view: no compute)"
    have = [b for b in sorted(registry.KERNELS) if op in registry.KERNELS[b]]
    return ", ".join(have) if have else "none (reference only)"


def _builder_section(name: str, registry: Any) -> list[str]:
    fn = registry.API[name]
    doc = builder_doc(fn)
    decl, _ = method_signature(name, fn, Imports())
    decl = decl.replace("(self, ", "(", 1).replace("(self)", "()", 1)
    twin = f"`ggml_{name}`" if f"ggml_{name}" in doc else "no ggml twin"
    out = [f"### `ctx.{name}{decl}`", "", f"ggml: {twin}; builder: `{builder_path(fn)}`", "", _first_line(doc), ""]
    entries = doc_entries(doc)
    params = list(inspect.signature(fn).parameters.values())[1:]
    tensors = [p.name for p in params if "Tensor" in str(p.annotation)]
    layout = [f"- `{k}`: {entries[k]}" for k in tensors + ["result"] if k in entries]
    return out + (layout + [""] if layout else [])


def _public_names() -> list[tuple[str, str, Any]]:
    """(name, module, object) of every public name minigraph/__init__.py imports, read from its
    source so this module never imports the root package itself."""
    spec = importlib.util.find_spec("minigraph")
    tree = ast.parse(Path(spec.origin).read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = importlib.import_module(node.module)
            for alias in node.names:
                public = alias.asname or alias.name
                if not public.startswith("_") or public == "__version__":
                    names.append((public, node.module, getattr(module, alias.name)))
    return sorted(names, key=lambda t: t[0].lower())


def public_functions_without_doc() -> list[str]:
    """`mg.` names (functions and classes) that have no docstring of their own."""
    return [f"{name} ({module})" for name, module, obj in _public_names() if callable(obj) and not _own_doc(obj)]


def _own_doc(obj: Any) -> str:
    """The object's own docstring (a class does not inherit its base's here)."""
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if doc else ""


def _public_section() -> list[str]:
    out = ["## Public `mg` names", "", "Everything `import minigraph as mg` exports (minigraph/__init__.py).", "",
           "| name | defined in | signature or value | summary |", "|---|---|---|---|"]
    for name, module, obj in _public_names():
        if inspect.isclass(obj) or callable(obj):
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            kind = "class " if inspect.isclass(obj) else ""
            summary = _first_line(_own_doc(obj))
            out.append(f"| `mg.{name}` | {module} | `{kind}{_md(sig)}` | {_md(summary)} |")
        else:
            out.append(f"| `mg.{name}` | {module} | `{obj!r}` | constant |")
    return out + [""]


def _context_section(registry: Any) -> list[str]:
    """Context's own methods (tensors, graphs): everything on ctx that is not an op builder."""
    context = importlib.import_module("minigraph.core.context").Context
    out = ["## Context methods that are not ops", "", "| method | signature | summary |", "|---|---|---|"]
    for name, fn in sorted(vars(context).items()):
        if name.startswith("_") or name in registry.API or not callable(fn):
            continue
        sig = str(inspect.signature(fn)).replace("(self, ", "(", 1).replace("(self)", "()", 1)
        out.append(f"| `ctx.{name}` | `{_md(sig)}` | {_md(_first_line(_own_doc(fn)))} |")
    return out + [""]


def context_methods_without_doc(registry: Any) -> list[str]:
    context = importlib.import_module("minigraph.core.context").Context
    return [f"Context.{n}" for n, fn in sorted(vars(context).items())
            if not n.startswith("_") and callable(fn) and n not in registry.API and not _own_doc(fn)]


def render_api_md(registry: Any) -> str:
    load_kernel_tables()
    by_op: dict[str, list[str]] = {}
    other: list[str] = []
    for name in sorted(registry.API):
        op = node_op(name, registry)
        (by_op.setdefault(op, []) if op in registry.OPS else other).append(name)
    out = [API_MD_HEADER.format(gen=GENERATOR), "## Ops", "",
           "| op | family | ctx methods | kernels |", "|---|---|---|---|"]
    for op in sorted(registry.OPS):
        methods = ", ".join(f"`{m}`" for m in by_op.get(op, [])) or "(made by passes only)"
        out.append(f"| {op} | {registry.OPS[op].family} | {methods} | {_kernels(op, registry)} |")
    out.append("")
    for op in sorted(registry.OPS):
        d = registry.OPS[op]
        out += [f"## {op}", "", f"Family `{d.family}`; kernels: {_kernels(op, registry)}."
                + (f" {d.doc[0].upper()}{d.doc[1:]}." if d.doc else ""), ""]
        if not by_op.get(op):
            out += ["No builder: only graph passes make this node.", ""]
        for name in by_op.get(op, []):
            out += _builder_section(name, registry)
    if other:
        out += ["## Other builders", ""]
        for name in other:
            out += _builder_section(name, registry)
    out += _context_section(registry) + _public_section()
    return "\n".join(out).rstrip("\n") + "\n"


# -- command line ----------------------------------------------------------------------------------

def outputs(registry: Any) -> dict[Path, str]:
    return {OP_METHODS_PATH: render_op_methods(registry), API_MD_PATH: render_api_md(registry)}


def main(argv: Optional[list[str]] = None, out: TextIO = sys.stdout) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigraph.tools.gen_api", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    args = ap.parse_args(argv)
    try:
        files = outputs(load_registry())
    except GenError as e:
        print(f"gen_api: {e}", file=sys.stderr)
        return 2
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"gen_api: {p} is stale; run `{GENERATOR}`", file=out)
        return 1 if stale else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(files[p])
        print(f"gen_api: wrote {p}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
