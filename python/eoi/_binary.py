"""Where the `eoi` binary is: the one the wheel installed beside this package.

A wheel built with maturin's `bindings = "bin"` puts the binary in the scripts directory of
the environment it is installed into (`bin/` of a venv, `Scripts\\` on Windows), not inside
the package. `find_binary` looks where pip puts it for each way of installing, as ruff's
`python -m ruff` does for its own binary; `binary` lets `EOI_BINARY` point the package at
another build (a `cargo build` of a checkout) instead.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

__all__ = ["binary", "find_binary"]

#: The environment variable that points the package at another `eoi` binary.
OVERRIDE = "EOI_BINARY"


def _candidates() -> list[Path]:
    """Where pip puts a wheel's scripts, in the order tried."""
    exe = "eoi" + (sysconfig.get_config_var("EXE") or "")
    places = [Path(sysconfig.get_path("scripts"))]
    # `pip install --user`: the user scheme's scripts directory.
    try:
        user_scheme = sysconfig.get_preferred_scheme("user")
    except (AttributeError, KeyError):
        user_scheme = "nt_user" if os.name == "nt" else "posix_user"
    try:
        places.append(Path(sysconfig.get_path("scripts", scheme=user_scheme)))
    except KeyError:
        pass
    package = Path(__file__).resolve().parent
    # `pip install --target DIR`: the package in DIR/eoi, the scripts in DIR/bin.
    places.append(package.parent / "bin")
    # `pip install --prefix P`: the package in P/lib/pythonX.Y/site-packages/eoi, the
    # scripts in P/bin (P/Scripts on Windows, with the package in P/Lib/site-packages/eoi).
    if package.parent.name == "site-packages":
        places.append(package.parents[3] / "bin" if os.name != "nt" else package.parents[2] / "Scripts")
    seen: list[Path] = []
    for place in places:
        if place not in seen:
            seen.append(place)
    return [place / exe for place in seen]


def find_binary() -> Path:
    """The `eoi` binary installed with this package.

    Raises FileNotFoundError naming every place looked at when there is none (the package
    was imported from a source tree, or the binary was deleted).

    >>> find_binary().name in ("eoi", "eoi.exe")
    True
    """
    candidates = _candidates()
    for path in candidates:
        if path.is_file():
            return path
    looked = "\n".join(f"  {path}" for path in candidates)
    raise FileNotFoundError(
        f"the eoi binary is not installed beside the eoi package ({Path(__file__).parent}); looked for:\n"
        f"{looked}\n"
        f"install the package with pip (pip install eoi, or pip install . from a clone), "
        f"or set {OVERRIDE} to the path of an eoi binary (e.g. target/release/eoi)"
    )


def binary() -> Path:
    """The `eoi` binary the package runs: `$EOI_BINARY` if set, else `find_binary()`.

    >>> import subprocess
    >>> subprocess.run([binary(), "--version"], capture_output=True, text=True).stdout.startswith("eoi ")
    True
    """
    override = os.environ.get(OVERRIDE)
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"{OVERRIDE}={override}: no such file (unset it to use the installed eoi)")
        return path
    return find_binary()
