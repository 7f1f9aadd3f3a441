"""`python -m minigraph ...` is the `minigraph` command (minigraph.cli)."""
import sys

from minigraph.tools.cli import main

sys.exit(main())
