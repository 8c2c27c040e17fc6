"""A TCP port someone else already listens on: whether it is taken, by whom, in one line.

`make run` checks its two ports before starting anything, and `gateway serve`
reports a port it cannot bind the same way (README "Two commands"), instead
of a traceback. The holder is found through Linux's /proc (the listening
socket's inode, then the process with that socket open); it is left out
where /proc does not say (another user's process, another system).
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # the TCP state column of /proc/net/tcp: 0A is LISTEN
COMMAND_CHARS = 80  # a holder's command line is cut to this many characters


def address_in_use(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails because it is taken (SO_REUSEADDR, as the gateway
    binds: a port left in TIME_WAIT is free). Other failures are for the real bind to
    report."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if address_in_use(exc):
                    return True
    return False


def holder(port: int, proc: Path = PROC) -> str | None:
    """`pid N (COMMAND)` of a process listening on TCP `port`, when /proc shows it."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    for entry in sorted(proc.iterdir(), key=lambda p: p.name):
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:  # another user's process, or gone meanwhile
            continue
        if links & {f"socket:[{inode}]" for inode in inodes}:
            return f"pid {entry.name} ({_command(entry)})"
    return None


def _listening_inodes(port: int, proc: Path) -> set[str]:
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            _, _, hex_port = fields[1].rpartition(":")
            if int(hex_port, 16) == port and fields[9] != "0":
                found.add(fields[9])
    return found


def _command(entry: Path) -> str:
    try:
        raw = (entry / "cmdline").read_bytes()
    except OSError:
        return "?"
    command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    if len(command) > COMMAND_CHARS:
        command = command[: COMMAND_CHARS - 1] + "…"
    return command or "?"


def busy_line(host: str, port: int, what: str, another: str) -> str:
    """One line: which port, whose, and how to pick another (`another`)."""
    owner = holder(port)
    by = f" by {owner}" if owner else ""
    shown = f"[{host}]" if ":" in host else host
    return (
        f"port {port} ({shown}:{port}, {what}) is already in use{by}; "
        f"stop {'that process' if owner else 'what holds it'}, or pick another port: {another}"
    )
