"""`python -m curax ...`: the same as the `curax` command."""

import sys

from ._cli import main


if __name__ == "__main__":
    sys.exit(main())
