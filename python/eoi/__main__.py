"""`python -m eoi ARGS...`: runs the `eoi` binary installed with this package.

The same binary as the `eoi` command of the environment (found by `eoi.find_binary`, as
`python -m ruff` finds ruff's), with the same arguments, standard streams and exit code:
on POSIX the Python process is replaced by it; on Windows it is run and waited for.
"""

from __future__ import annotations

import os
import subprocess
import sys

from eoi._binary import find_binary


def main() -> None:
    """Runs the installed `eoi` with this process's arguments; never returns."""
    try:
        eoi = os.fsdecode(find_binary())
    except FileNotFoundError as e:
        print(f"python -m eoi: {e}", file=sys.stderr)
        sys.exit(127)  # as a shell reports a command it cannot find
    if sys.platform == "win32":
        sys.exit(subprocess.run([eoi, *sys.argv[1:]]).returncode)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(eoi, [eoi, *sys.argv[1:]])


if __name__ == "__main__":
    main()
