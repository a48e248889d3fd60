"""OpenAI-compatible HTTP mock server: the quickstart's default backend and every test's endpoint.

Standard library only (asyncio, HTTP/1.1 keep-alive). Answers are deterministic; faults are
scripted by server options or by `[[...]]` markers in the prompt; outages by `pause`/`resume`.
What it answers lives in `mockchat`; this module carries it over sockets.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import signal
import threading

from .chat import WindowLimiter, _Responder
from .content import last_user_text, prompt_tokens, valid_image_url
from .replies import (DEFAULT_MODEL, Markers, MockOptions, Reply, error_reply, json_reply,
                      retry_headers)
from .wire import LIVE_SERVERS, SocketRegistry, encode, keeps_alive, parse_head, read_body

__all__ = ["DEFAULT_MODEL", "DEFAULT_PORT", "Markers", "MockOptions", "MockServer", "Reply",
           "WindowLimiter", "error_reply", "json_reply", "last_user_text", "prompt_tokens",
           "retry_headers", "run_forever", "valid_image_url"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8765
_BACKLOG = 4096                 # a 64-process pool opens hundreds of connections at once
_CALL_TIMEOUT_S = 10.0          # how long start/stop/pause/resume wait for the server's loop


# ----------------------------------------------------------------------------- server

class MockServer:
    """OpenAI-compatible HTTP server running its own asyncio loop in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_ms: float = 0.0,
                 error_rate: float = 0.0, rate_limit_rps: float | None = None,
                 fixed_status: int | None = None, reasoning: bool = False, models=(),
                 strict_models: bool = False, api_keys=None, seed: int = 0,
                 record_prompts: bool = False, batch_seconds: float = 0.0, batch_script=(),
                 batch_max_requests: int = 50_000) -> None:
        self.options = MockOptions(
            latency_ms=float(latency_ms), error_rate=float(error_rate),
            rate_limit_rps=rate_limit_rps, fixed_status=fixed_status, reasoning=reasoning,
            models=tuple(models), strict_models=strict_models, seed=seed,
            api_keys=None if api_keys is None else frozenset(api_keys), record_prompts=record_prompts,
            batch_seconds=float(batch_seconds), batch_script=tuple(batch_script),
            batch_max_requests=int(batch_max_requests))
        self._host, self._port = host, port
        self._responder = _Responder(self.options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._accepting = False
        self._connections: dict[asyncio.Task, tuple[asyncio.StreamWriter, int]] = {}
        self._sockets = SocketRegistry()
        LIVE_SERVERS.add(self)

    @property
    def port(self) -> int:
        """The port listened on (the real one once started with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """The base url for OpenAI clients: `http://127.0.0.1:PORT/v1`."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}/v1"

    def start(self) -> MockServer:
        """Listen in a daemon thread; return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("mock server already started")
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name=f"mpdistill-mockserver-{id(self):x}")
        self._thread.start()
        try:
            ready.result(timeout=_CALL_TIMEOUT_S)
        except BaseException:
            self._thread.join(_CALL_TIMEOUT_S)
            self._thread = None
            raise
        logger.info("mock server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Close every connection, stop the loop and join its thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            self._call(self._close_all())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_CALL_TIMEOUT_S)
        self._thread = None
        logger.info("mock server on port %d stopped", self._port)

    def pause(self) -> None:
        """Simulate an outage: stop listening and drop every open connection."""
        self._call(self._close_all())
        logger.info("mock server on port %d paused", self._port)

    def resume(self) -> None:
        """End the outage: listen again on the same port."""
        self._call(self._listen())
        logger.info("mock server on port %d resumed", self._port)

    def stats(self) -> dict:
        """Thread-safe snapshot: requests, by_status, max_concurrent, in_flight, prompts, chat_requests,
        batches_created, batch_rows (custom_id -> batches created with it), batch_outcomes."""
        return self._responder.stats()

    def revoke_key(self, key: str, reads: bool = True) -> None:
        """Reject `key` from now on; with `reads` it may still poll and download its batches."""
        self._responder.revoke(key, reads)

    def reset_stats(self) -> None:
        """Zero the counters between test phases."""
        self._responder.reset_stats()

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _call(self, coro) -> None:
        """Run `coro` on the server's loop and wait for it."""
        if self._loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("mock server is not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("call MockServer methods from another thread than its loop")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=_CALL_TIMEOUT_S)

    def _run(self, ready: concurrent.futures.Future) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except Exception as err:  # handed to start(), which raises it in the caller's thread
            ready.set_exception(err)
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            _cancel_all(loop)
            loop.close()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._accepting = True
        try:
            self._server = await asyncio.start_server(
                self._serve_connection, self._host, self._port, backlog=_BACKLOG, reuse_address=True)
        except OSError:
            self._accepting = False
            raise
        self._port = self._server.sockets[0].getsockname()[1]
        for sock in self._server.sockets:
            self._sockets.add(sock.fileno())

    async def _close_all(self) -> None:
        """Close the listening socket and abort every connection, mid-request or idle."""
        self._accepting = False
        server, self._server = self._server, None
        if server is not None:
            for sock in server.sockets:
                self._sockets.discard(sock.fileno())
            server.close()
        tasks = list(self._connections)
        for task, (writer, fd) in list(self._connections.items()):
            self._sockets.discard(fd)  # before the fd is closed and its number reused
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        if not self._accepting:  # accepted just before a pause: refuse like the closed port
            writer.transport.abort()
            return
        task = asyncio.current_task()
        fd = writer.get_extra_info("socket").fileno()
        self._sockets.add(fd)
        self._connections[task] = (writer, fd)
        try:
            while await self._serve_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.debug("client went away mid-request")
        except asyncio.CancelledError:
            # pause()/stop() drop connections on purpose; returning normally keeps asyncio's
            # stream callback (which calls task.exception()) from logging a spurious error
            logger.debug("connection dropped by pause/stop")
        finally:
            self._connections.pop(task, None)
            self._sockets.discard(fd)
            writer.close()

    async def _serve_request(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True when the connection stays open for the next one."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed its keep-alive connection
        except asyncio.LimitOverrunError:
            return _refuse(writer, 431, "request head too large")
        parsed = parse_head(head)
        if parsed is None:
            return _refuse(writer, 400, "malformed request head")
        method, target, version, headers = parsed
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await read_body(reader, headers)
        except ValueError:
            return _refuse(writer, 400, "bad Content-Length or chunk size")
        keep_alive = keeps_alive(version, headers)
        reply = await self._answer(method, target, headers, body)
        data = encode(reply, keep_alive)
        if reply.cut_at is not None:  # a scripted reset: part of the body, then the connection drops
            writer.write(data[:len(data) - len(reply.body) + reply.cut_at])
            await writer.drain()
            writer.transport.abort()
            return False
        writer.write(data)
        await writer.drain()
        return keep_alive

    async def _answer(self, method: str, target: str, headers: dict, body: bytes) -> Reply:
        try:
            return await self._responder.handle(method, target, headers, body)
        except Exception:  # a bug here must show up as a 500 in the test, not a dropped socket
            logger.exception("mock server failed to answer %s %s", method, target)
            return error_reply(500, "mock server internal error")


def _refuse(writer: asyncio.StreamWriter, status: int, message: str) -> bool:
    writer.write(encode(error_reply(status, message), keep_alive=False))
    return False


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Finish whatever tasks are left (half-accepted connections) before the loop closes."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


# ----------------------------------------------------------------------------- command

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mpdistill mock-server", allow_abbrev=False,
                                     description="OpenAI-compatible mock endpoint for demos and tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit-rps", type=float, default=None)
    parser.add_argument("--fixed-status", type=int, default=None)
    parser.add_argument("--reasoning", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", action="append", default=[],
                        help="served model names, comma-separated or repeated")
    parser.add_argument("--strict-models", action="store_true",
                        help="answer 404 model_not_found for models not in --models")
    parser.add_argument("--api-key", action="append", default=None,
                        help="accepted key (repeatable); without it every key is accepted")
    parser.add_argument("--batch-seconds", type=float, default=0.0,
                        help="Batches API: seconds from create to completed")
    parser.add_argument("--batch-script", default="",
                        help="Batches API: outcomes of the batches created in turn, e.g. failed,expired,ok")
    parser.add_argument("--url-file", default=None, help="also write the base url to this file")
    return parser.parse_args(argv)


def _server_from_args(args: argparse.Namespace) -> MockServer:
    models = [name.strip() for item in args.models for name in item.split(",") if name.strip()]
    return MockServer(args.host, args.port, latency_ms=args.latency_ms, error_rate=args.error_rate,
                      rate_limit_rps=args.rate_limit_rps, fixed_status=args.fixed_status,
                      reasoning=args.reasoning, models=models, strict_models=args.strict_models,
                      api_keys=args.api_key, seed=args.seed, batch_seconds=args.batch_seconds,
                      batch_script=[o.strip() for o in args.batch_script.split(",") if o.strip()])


def _write_atomically(path: str, text: str) -> None:
    """Readers polling for the file never see it half written."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _raise_fd_limit() -> None:
    """Benchmarks open hundreds of connections; the common soft limit of 1024 is too low."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError) as err:
        logger.debug("file descriptor limit unchanged: %s", err)


def run_forever(argv: list[str] | None = None) -> int:
    """The `mpdistill mock-server` command: serve until SIGINT or SIGTERM, then return 0."""
    args = _parse_args(argv)
    _raise_fd_limit()
    server = _server_from_args(args).start()
    stopping = threading.Event()
    previous = _install_stop_handlers(stopping)
    try:
        if args.url_file:  # before the line, so whoever waits for the line finds the file
            _write_atomically(args.url_file, server.url)
        print(f"mock server listening on {server.url}", flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _install_stop_handlers(stopping: threading.Event) -> dict:
    """SIGINT/SIGTERM set `stopping`; returns the handlers to restore (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stopping.set())
    return previous


if __name__ == "__main__":
    raise SystemExit(run_forever())
