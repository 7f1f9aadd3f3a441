"""Not the package (that is minigraph/ inside this folder): a guard for the repository root.

Python started in the folder that holds this checkout (named minigraph, as `git clone` names
it) finds the checkout before any installed copy. Without this file it imports the checkout as
an empty namespace package, and `mg.Context` fails with "module 'minigraph' has no attribute
'Context'". With it, `import minigraph` stops with one line that says what to do.
"""
import importlib.machinery as _machinery
import os as _os
import sys as _sys

_ROOT = _os.path.dirname(_os.path.abspath(__file__))


def _installed_origin():
    """Where an installed minigraph would be imported from, looking past this folder."""
    parent = _os.path.dirname(_ROOT)
    paths = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != parent]
    for finder in _sys.meta_path:
        try:
            if finder is _machinery.PathFinder:
                spec = finder.find_spec(__name__, paths)
            elif hasattr(finder, "find_spec"):
                spec = finder.find_spec(__name__, None)
            else:
                continue
        except Exception:  # a third-party finder that fails is no answer either way
            continue
        origin = getattr(spec, "origin", None)
        if origin and _os.path.abspath(origin) != _os.path.abspath(__file__):
            return origin
    return None


def _hint():
    origin = _installed_origin()
    if origin is None:
        return (f"minigraph is not installed: run `pip install -e .` in {_ROOT} (Python found that source "
                "folder because it lies in the current folder; the package is its minigraph/ subfolder)")
    where = _os.path.dirname(origin)
    if _os.path.abspath(where).startswith(_ROOT + _os.sep):  # installed from this very checkout
        return f"the source folder {_ROOT} hides the installed minigraph: start Python in it (`cd {_ROOT}`) or elsewhere"
    return f"the source folder {_ROOT} hides the installed minigraph ({where}): start Python from another folder"


# only as `import minigraph` from the folder above; other importers (pytest's package
# collection of the repository root imports this file as `__init__`) pass through
if __name__ == "minigraph":
    raise ImportError(_hint())
