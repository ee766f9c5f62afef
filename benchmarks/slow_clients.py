"""Bounded loopback test of ``cxrkit serve`` against slow clients: /healthz latency while N slow connections are open.

    python benchmarks/slow_clients.py [--run RUN] [--slow 2000] [--probes 50] [--header-timeout 10] [--max-seconds 120]

Starts ``cxrkit serve`` on 127.0.0.1 in a child process, opens ``--slow`` connections that each send half a
request's headers and then nothing (a slowloris client), and while they are open sends ``--probes``
``GET /healthz`` requests one after another on fresh connections, timing each. Then it waits for the
server's header timeout and counts the slow connections the server has closed. Targets
(``/work/shared/BENCHMARKS.md``): every probe under 100 ms; every slow connection closed by the server.
Only the loopback address is used and the run is capped by ``--max-seconds``. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, tiny_run  # noqa: E402


async def probe(port: int) -> tuple[float, int]:
    """One GET /healthz on a new connection: (seconds, status)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    await reader.read()
    writer.close()
    return time.perf_counter() - t0, status


async def scenario(port: int, n_slow: int, n_probes: int, header_timeout: float) -> dict:
    """Open the slow connections, probe /healthz, then see which slow connections the server closed."""
    slow = []
    t_open = time.perf_counter()
    for i in range(n_slow):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n")
        slow.append((reader, writer))
        if i % 200 == 199:
            await asyncio.sleep(0)
    opened = time.perf_counter() - t_open
    await asyncio.sleep(0.5)
    probes = [await probe(port) for _ in range(n_probes)]
    # Wait past the header timeout of the last connection opened, then count the closed ones.
    await asyncio.sleep(max(0.0, header_timeout + 3 - (time.perf_counter() - t_open - opened)))

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), 0.05) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    closed_count = sum(await asyncio.gather(*(closed(r) for r, _ in slow)))
    for _, w in slow:
        w.close()
    times = sorted(t for t, _ in probes)
    return {
        "slow_connections": n_slow, "seconds_to_open_them": round(opened, 2),
        "healthz_probes": n_probes, "healthz_statuses": sorted({s for _, s in probes}),
        "healthz_ms": {"median": round(1000 * statistics.median(times), 1), "p95": round(1000 * times[int(0.95 * (len(times) - 1))], 1),
                       "max": round(1000 * times[-1], 1)},
        "slow_closed_by_server": closed_count, "checked_after_s": round(time.perf_counter() - t_open, 1),
    }


def main() -> int:
    """Run the scenario and print a JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="run folder to serve (default: train a tiny one)")
    ap.add_argument("--slow", type=int, default=2000, help="slow connections to hold open (default %(default)s)")
    ap.add_argument("--probes", type=int, default=50, help="/healthz requests to time (default %(default)s)")
    ap.add_argument("--header-timeout", type=float, default=10, help="the server's --header-timeout (default %(default)s)")
    ap.add_argument("--max-seconds", type=float, default=120, help="give up after this long (default %(default)s)")
    ap.add_argument("--plain-serve", action="store_true", help="start `cxrkit serve` without --header-timeout (versions before it existed)")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.slow + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.slow + 100), hard))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(a.run) if a.run else tiny_run(Path(tmp))
        port = free_port()
        options = [] if a.plain_serve else ["--header-timeout", str(a.header_timeout)]
        server = subprocess.Popen([sys.executable, "-m", "cxrkit", "serve", str(run), "--port", str(port), *options],
                                  env={**os.environ, "CXRKIT_API_KEY": ""}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if asyncio.run(probe(port))[1] == 200:
                        break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read() if server.poll() is not None else 'timeout'}")
                time.sleep(0.3)
            summary = asyncio.run(asyncio.wait_for(scenario(port, a.slow, a.probes, a.header_timeout), a.max_seconds))
            summary["header_timeout_s"] = a.header_timeout
            print(json.dumps(summary, indent=1))
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
