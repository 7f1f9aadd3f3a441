"""minigraph's version string: the installed distribution's, else pyproject.toml's (a source tree
that was never installed), else "0+unknown"."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def package_version() -> str:
    """The version `pip` installed (importlib.metadata), with the fallbacks above."""
    try:
        return metadata.version("minigraph")
    except metadata.PackageNotFoundError:
        pass
    try:
        found = re.search(r'(?m)^version\s*=\s*"([^"]+)"', PYPROJECT.read_text())
    except OSError:
        found = None
    return found.group(1) if found else "0+unknown"


__version__ = package_version()
