"""Anonymous shared files that two processes map: a ring's slots, a block of pinned memory.

A process that maps a file another process can shrink dies of SIGBUS when it touches a page
past the new end. So both ends make their files with their size sealed (``F_SEAL_SHRINK``,
``F_SEAL_GROW``, and ``F_SEAL_SEAL`` so the seals stay), and a worker maps a file a client
passes only after :func:`check` has found it sealed that way: a regular file, a pipe or a
socket the client sends is refused before it is mapped.
"""

from __future__ import annotations

import fcntl
import os
import stat

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def create(name: str, size: int) -> int:
    """A new file of ``size`` bytes (gone once every descriptor and mapping of it is)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check(fd: int) -> int:
    """The size of a file made by :func:`create`; ValueError naming what else ``fd`` is."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("the descriptor is not a file (a pipe, socket or device)")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0  # a file system without seals: an ordinary file anyone may truncate
    if seals & _SEALS != _SEALS:
        raise ValueError("the file is not a memfd sealed against resizing")
    return info.st_size
