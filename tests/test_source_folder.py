"""The source-folder trap: Python started in the folder that holds a checkout named minigraph.

Without the guard (the repository root's __init__.py) the checkout imports as an empty namespace
package and `mg.Context` is an AttributeError; with it the import stops with a one-line hint.
"""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = "import minigraph as mg; mg.Context"


def _checkout(tmp_path, guard: bool) -> str:
    """A folder holding a 'checkout' named minigraph: the root guard (or not) and a package dir."""
    clone = tmp_path / "minigraph"
    (clone / "minigraph").mkdir(parents=True)  # stands for the package folder of the clone
    if guard:
        shutil.copy(os.path.join(ROOT, "__init__.py"), clone / "__init__.py")
    return str(tmp_path)


def _run(cwd: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", PROBE], cwd=cwd, capture_output=True, text=True)


def test_without_the_guard_the_checkout_shadows_as_a_namespace_package(tmp_path):
    """The trap itself, so the guard below is known to be what changes the outcome."""
    res = _run(_checkout(tmp_path, guard=False))
    assert res.returncode != 0
    assert "has no attribute 'Context'" in res.stderr.strip().splitlines()[-1]


def test_installed_but_shadowed_says_which_folder_hides_the_install(tmp_path):
    res = _run(_checkout(tmp_path, guard=True))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0
    assert last.startswith("ImportError: the source folder ") and "hides the installed minigraph" in last
    assert str(tmp_path / "minigraph") in last


def test_not_installed_says_pip_install_in_the_checkout(tmp_path):
    # -S: no site-packages, so no installed minigraph is visible (the guard needs only the stdlib)
    res = _run(_checkout(tmp_path, guard=True), "-S")
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0
    assert last.startswith("ImportError: minigraph is not installed: run `pip install -e .` in ")
    assert str(tmp_path / "minigraph") in last


def test_the_guard_is_not_in_the_way_inside_the_checkout():
    """From the repository root (where tests and tools run) the real package imports."""
    res = subprocess.run([sys.executable, "-c", "import minigraph as mg; print(mg.Context.__name__)"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "Context"
