"""Bounded loopback load test of ``cxrkit serve``: latency percentiles, throughput and errors.

    python benchmarks/serve_load.py [--run RUN] [--requests 1000] [--concurrency 16] [--engine auto]

Starts ``cxrkit serve`` on 127.0.0.1 (a free port) in a child process, so the client and the server
do not share one interpreter lock, waits for ``/healthz``, then sends exactly ``--requests`` POSTs to
``/v1/predict`` (one 512 x 512 synthetic radiograph PNG each, decoded and resized by the server) with at
most ``--concurrency`` in flight, and stops the server. Without ``--run`` a tiny run is trained first on
synthetic images. Traffic goes to the loopback address only, and the whole test is capped by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def tiny_run(folder: Path) -> Path:
    """Train a small cnn on synthetic images (64 px, 3 epochs) and return its run folder."""
    from cxrkit.config import TrainConfig
    from cxrkit.data.augment import AugmentConfig
    from cxrkit.data.synthetic import make_synthetic_dataset
    from cxrkit.training import train

    data = make_synthetic_dataset(folder / "data", n_per_class=80, size=96, seed=0, splits={"train": 0.8, "test": 0.2})
    cfg = TrainConfig(data=str(data), out=str(folder / "run"), model="cnn", image_size=64, epochs=3, batch_size=32,
                      cache_dir=str(folder / "cache"), augment=AugmentConfig())
    return train(cfg)


def sample_png(size: int = 512) -> bytes:
    """One synthetic radiograph as PNG bytes."""
    from PIL import Image

    from cxrkit.data.synthetic import synthetic_cxr

    buf = io.BytesIO()
    Image.fromarray(synthetic_cxr(np.random.default_rng(1), size, pattern=1)).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, body: bytes, requests: int, concurrency: int, max_seconds: float) -> tuple[list[float], list[str], float]:
    """Send ``requests`` uploads with at most ``concurrency`` in flight; returns latencies (s), errors, wall time."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    deadline = time.perf_counter() + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/predict", files={"files": ("x.png", body, "image/png")})
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:120]}")
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, errors, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="run folder to serve (default: train a tiny synthetic one)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx", "onnx-int8"])
    p.add_argument("--max-seconds", type=float, default=600, help="stop sending after this long, whatever is left")
    a = p.parse_args()

    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(a.run) if a.run else tiny_run(Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CXRKIT_API_KEY": ""}
        server = subprocess.Popen([sys.executable, "-m", "cxrkit", "serve", str(run), "--host", "127.0.0.1", "--port", str(port),
                                   "--engine", a.engine], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    health = httpx.get(url + "/healthz", timeout=2).json()
                    break
                except httpx.HTTPError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"server did not start:\n{server.stdout.read() if server.stdout else ''}") from None
                    time.sleep(0.2)
            body = sample_png()
            lat, errors, wall = asyncio.run(load(url, body, a.requests, a.concurrency, a.max_seconds))
        finally:
            server.terminate()
            server.wait(10)
    q = statistics.quantiles([1000 * x for x in lat], n=100) if len(lat) >= 2 else [float("nan")] * 99
    print(f"model {health['model']} v{health['version']} ({health['engine']}); {len(body):,}-byte PNG per request; "
          f"{os.cpu_count()} CPU cores shared by client and server")
    print(f"{len(lat)} requests, {a.concurrency} concurrent, in {wall:.1f} s: {len(lat) / wall:.1f} req/s; "
          f"latency p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms, p99 {q[98]:.1f} ms, max {1000 * max(lat):.1f} ms; errors {len(errors)}")
    for e in sorted(set(errors))[:5]:
        print("  error:", e)


if __name__ == "__main__":
    main()
