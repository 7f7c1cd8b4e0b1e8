"""A small closed-loop HTTP/1.1 load generator on loopback (asyncio, keep-alive).

Each of ``concurrency`` connections sends its next request as soon as the previous answer
arrived, for ``seconds`` seconds. Only for servers on this machine.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    """Latencies (s) of the answered requests, errors, and the measured wall time."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    answered: list[bytes] = field(default_factory=list)  # with keep_answered: the 200s
    # CPU seconds, when measured (`demo_shop.bench.cpu`): the servers' (web processes,
    # database, cache) and the load generator's own, over the same wall time.
    server_cpu: float | None = None
    client_cpu: float | None = None
    server_parts: dict[str, float] = field(default_factory=dict)  # server_cpu by server

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    @property
    def server_ms_per_request(self) -> float:
        """Server CPU milliseconds per answered request (nan when not measured)."""
        if self.server_cpu is None or not self.latencies:
            return float("nan")
        return self.server_cpu * 1000 / len(self.latencies)

    def part_ms_per_request(self, name: str) -> float:
        """One server's CPU milliseconds per answered request (nan when not measured)."""
        if name not in self.server_parts or not self.latencies:
            return float("nan")
        return self.server_parts[name] * 1000 / len(self.latencies)

    def capacity(self, cores: int) -> float:
        """Requests per second that ``cores`` cores given to the servers alone would answer at
        this CPU cost per request (no load generator, no other job, perfect scaling)."""
        cost = self.server_ms_per_request
        return cores * 1000 / cost if cost == cost and cost > 0 else float("nan")

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def _connection(host: str, port: int, make_request: Callable[[], bytes],
                      deadline: float, result: LoadResult, budget: list[int],
                      tolerate: bool, keep_answered: bool) -> None:
    while time.perf_counter() < deadline and budget[0] > 0:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                started = time.perf_counter()
                request = make_request()
                writer.write(request)
                await writer.drain()
                status = await _read_response(reader)
                if status == 200:
                    result.latencies.append(time.perf_counter() - started)
                    if keep_answered:
                        result.answered.append(request)
                else:
                    result.errors += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            if not tolerate:
                raise
            result.errors += 1  # the server process died mid-request: connect again
        finally:
            writer.close()


def run_load(host: str, port: int, make_request: Callable[[], bytes], concurrency: int,
             seconds: float, max_requests: int | None = None, *, tolerate: bool = False,
             keep_answered: bool = False,
             server_cpu: Callable[[], dict[str, float]] | None = None) -> LoadResult:
    """Drive the server with ``concurrency`` keep-alive connections for ``seconds``, or
    until ``max_requests`` were sent when that is given (``seconds`` 0: no time limit).
    With ``tolerate`` a dropped connection is an error and is opened again; with
    ``keep_answered`` the requests answered 200 are kept in the result; with ``server_cpu``
    (CPU seconds each server has used so far, by name: `demo_shop.bench.cpu.readings`) the
    result has the servers' CPU time, each one's, and this process's over the run."""
    result = LoadResult()
    server_before = server_cpu() if server_cpu else None
    client_before = time.process_time()
    budget = [max_requests if max_requests is not None else 2**62]

    async def main() -> None:
        started = time.perf_counter()
        deadline = started + seconds if seconds else float("inf")
        await asyncio.gather(*(_connection(host, port, make_request, deadline, result, budget,
                                           tolerate, keep_answered)
                               for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started

    asyncio.run(main())
    if server_cpu is not None and server_before is not None:
        after = server_cpu()
        result.server_parts = {name: after[name] - server_before[name] for name in after}
        result.server_cpu = sum(result.server_parts.values())
        result.client_cpu = time.process_time() - client_before
    return result


def get_requests(host: str, paths: list[str],
                 cookies: list[str] | None = None) -> Callable[[], bytes]:
    """A request factory cycling through GET ``paths``, with ``cookies[i]`` (a ``Cookie``
    header's value) on the i-th path when given."""
    cycle = itertools.cycle(zip(paths, cookies or [""] * len(paths), strict=True))

    def request() -> bytes:
        path, cookie = next(cycle)
        header = f"Cookie: {cookie}\r\n" if cookie else ""
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{header}\r\n".encode()

    return request


def multipart_post(host: str, path: str, field_name: str, filename: str,
                   data: bytes) -> Callable[[], bytes]:
    """A request factory posting one file as multipart/form-data."""
    return multipart_posts(host, path, field_name, [(filename, data, {})])


def multipart_posts(host: str, path: str, field_name: str,
                    uploads: list[tuple[str, bytes, dict[str, str]]]) -> Callable[[], bytes]:
    """A request factory cycling through ``uploads`` (file name, bytes, other form fields),
    each posted as multipart/form-data with the file as ``field_name``."""
    boundary = "visualrecoBENCHboundary"
    requests = []
    for filename, data, fields in uploads:
        body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n"
                        f"\r\n{value}\r\n".encode() for name, value in fields.items())
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
                 f"filename=\"{filename}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        body += data + f"\r\n--{boundary}--\r\n".encode()
        requests.append((f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                         f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    return itertools.cycle(requests).__next__
