"""MicroPython's ``uos``: the file calls the board script makes, and MaixPy's ``uname``."""

from os import getcwd, remove, rename, stat

__all__ = ["getcwd", "remove", "rename", "stat", "uname"]


def uname() -> tuple[str, str, str, str, str]:
    """``(sysname, nodename, release, version, machine)`` as MaixPy reports them."""
    return ("MaixPy", "MaixPy", "0.6.2-standin", "edged MaixPy stand-in on CPython",
            "Sipeed_M1 with kendryte-k210 (stand-in)")
