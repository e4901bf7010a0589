"""The `curax` command's entry point.

It lives outside the `curax` package so that it runs before `curax` and JAX are imported
(1-3 s): a SIGINT or SIGTERM during those imports ends the process with one line and status
130 / 143 (nothing has been written yet), instead of a KeyboardInterrupt traceback. Once the
command starts, `curax._cli` installs its own handler, which also removes temporary output.
`python -m curax` imports the package first, so this covers only the `curax` command.
"""

import os
import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    del frame
    os.write(2, b"curax: interrupted\n")
    os._exit(128 + signum)


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupted)
    from curax._cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
