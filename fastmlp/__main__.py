"""python -m fastmlp: the command-line tool (fastmlp.cli)."""
import sys

from .cli import main

sys.exit(main())
