"""``python -m cbnotes``: the command line (see ``cbnotes.cli``)."""

import sys

from cbnotes.cli import main

if __name__ == "__main__":
    sys.exit(main())
