"""The package's import layers (docs/design.md) and the absence of import cycles.

import-linter (through grimp) reads a package from its folder tree, and ours is spread over three
folders that install as one package (ops/ -> minigraph.ops, backends/ -> minigraph.backends). So
the tests first lay the sources out as they install, in a temporary folder, then run the real
`lint-imports` with pyproject's contract on that copy, and look for cycles in grimp's import graph
(imports inside functions included, `if TYPE_CHECKING:` blocks excluded).
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("importlinter", reason="import-linter is part of the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def installed_tree(tmp_path_factory):
    """The package as it installs: minigraph/, with ops/ and backends/ inside it."""
    dst = tmp_path_factory.mktemp("layout")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "minigraph"), dst / "minigraph", ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "ops"), dst / "minigraph" / "ops", ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "backends"), dst / "minigraph" / "backends", ignore=ignore)
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), dst / "pyproject.toml")
    return dst


def _run(tree, *args):
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def test_layers_contract_holds(installed_tree):
    r = _run(installed_tree, "-c", "import sys; from importlinter.cli import lint_imports_command; "
             "sys.exit(lint_imports_command(['pyproject.toml']))")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_no_import_cycles(installed_tree):
    script = textwrap.dedent("""
        import grimp, networkx as nx
        g = grimp.build_graph("minigraph", exclude_type_checking_imports=True)
        G = nx.DiGraph()
        G.add_nodes_from(g.modules)
        for m in g.modules:
            for imp in g.find_modules_directly_imported_by(m):
                if imp != m:  # `from minigraph import ops` in minigraph/__init__ names itself
                    G.add_edge(m, imp)
        assert any(m.startswith("minigraph.backends.cpu") for m in G), "the tree has no CPU backend"
        cycles = [c for c in nx.simple_cycles(G, length_bound=8)]
        print(len(G), "modules;", len(cycles), "cycles")
        for c in cycles[:20]:
            print(" -> ".join(c + c[:1]))
    """)
    r = _run(installed_tree, "-c", script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 cycles" in r.stdout, r.stdout


def test_a_broken_layer_is_caught(installed_tree, tmp_path):
    """The contract can fail: a core module importing the scheduler breaks it."""
    bad = tmp_path / "bad"
    shutil.copytree(installed_tree, bad)
    with open(bad / "minigraph" / "core" / "graph.py", "a") as f:
        f.write("\n\ndef _late():\n    from minigraph.schedule import scheduler  # noqa: F401\n")
    r = _run(bad, "-c", "import sys; from importlinter.cli import lint_imports_command; "
             "sys.exit(lint_imports_command(['pyproject.toml']))")
    assert r.returncode != 0 and "minigraph.core.graph -> minigraph.schedule.scheduler" in r.stdout, r.stdout
