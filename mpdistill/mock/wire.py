"""The mock server's wire: HTTP/1.1 request heads, bodies (plain and chunked), replies, and the
fork safety that keeps a forked worker from holding the server's sockets open.
"""
from __future__ import annotations

import asyncio
import functools
import http
import os
import weakref

from .replies import Reply

# ----------------------------------------------------------------------------- HTTP/1.1

def parse_head(head: bytes) -> tuple[str, str, str, dict] | None:
    """Request line and headers (names lower-cased), or None when they cannot be read."""
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                return None
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


def keeps_alive(version: str, headers: dict) -> bool:
    connection = headers.get("connection", "").lower()
    return "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection


async def read_body(reader: asyncio.StreamReader, headers: dict) -> bytes:
    """The request body; ValueError for a bad Content-Length or chunk size."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    length = int(headers.get("content-length") or 0)
    if length < 0:
        raise ValueError("negative Content-Length")
    return await reader.readexactly(length) if length else b""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readline()).strip():
                pass  # trailers carry nothing the mock needs
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def encode(reply: Reply, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} {_phrase(reply.status)}",
             "Content-Type: application/json", f"Content-Length: {len(reply.body)}"]
    lines.extend(f"{name}: {value}" for name, value in reply.headers)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


@functools.lru_cache(maxsize=None)
def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


# ----------------------------------------------------------------------------- fork safety

class SocketRegistry:
    """Sockets a forked child must not keep open.

    A worker forked while the server runs inherits its sockets; its copy of the listening
    socket would keep the port accepting (and block rebinding) while the server is paused.
    """

    def __init__(self) -> None:
        self._inodes: dict[int, int] = {}

    def add(self, fd: int) -> None:
        self._inodes[fd] = os.fstat(fd).st_ino

    def discard(self, fd: int) -> None:
        self._inodes.pop(fd, None)

    def release_in_child(self) -> None:
        """Point the child's copies at /dev/null (only fds that still are the same socket)."""
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for fd, inode in list(self._inodes.items()):
                if _inode(fd) == inode:
                    os.dup2(devnull, fd, inheritable=False)
        finally:
            os.close(devnull)
        self._inodes.clear()


def _inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


LIVE_SERVERS: weakref.WeakSet = weakref.WeakSet()


def _release_sockets_in_child() -> None:
    for server in list(LIVE_SERVERS):
        server._sockets.release_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_sockets_in_child)
