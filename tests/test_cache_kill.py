"""A cache build killed mid-way (kill -9 or a plain kill) leaves no worker behind and the next build finishes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.data.cache import load_cached

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their parent through Linux's prctl")

N, CHUNK, SIZE = 192, 8, 16

# The build in a child process, each image slowed down so that the kill lands mid-build.
BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import cxrkit.data.cache as cache
    slow = float(sys.argv[3])
    decode = cache.load_grayscale
    def slow_decode(*a, **k):
        time.sleep(slow)
        return decode(*a, **k)
    cache.load_grayscale = slow_decode
    paths = sorted(Path(sys.argv[1]).glob("*.png"))
    t0 = time.perf_counter()
    out = cache.load_cached(paths, SIZE, cache_dir=Path(sys.argv[2]), workers=2, progress=False, chunk=CHUNK)
    print(f"built {len(out.ok)} in {time.perf_counter() - t0:.2f} s, hit={out.hit}", flush=True)
""").replace("SIZE", str(SIZE)).replace("CHUNK", str(CHUNK))


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_build_leaves_no_orphans_and_the_next_run_finishes_it(tmp_path, sig):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(N):
        a = np.full((20, 24), i % 250, np.uint8)
        a[0] = np.linspace(0, 255, 24).astype(np.uint8)  # one grey level (or a few) is a blank image, which the cache refuses
        Image.fromarray(a).save(images / f"{i:03d}.png")
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(images), str(cache_dir), "0.05"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(cache_dir.glob("images/*.partial/progress.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            progress = found[0]
            break
        time.sleep(0.05)
    assert progress is not None, f"the build never made progress: {proc.communicate()}"
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the build runs in worker processes"
    os.kill(proc.pid, sig)
    proc.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    orphans = [w for w in workers if _alive(w)]
    for w in orphans:  # do not leave them running if the test fails
        os.kill(w, signal.SIGKILL)
    assert not orphans, "pool workers outlived the killed build"
    done_before = len(progress.read_text().splitlines())
    assert done_before < N // CHUNK, "the kill landed after the build had finished"

    t0 = time.perf_counter()
    again = subprocess.run([sys.executable, "-c", BUILD, str(images), str(cache_dir), "0.0"], env=env,
                           capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - t0
    assert again.returncode == 0, again.stderr
    assert "hit=False" in again.stdout and seconds < 30
    store = load_cached(sorted(images.glob("*.png")), SIZE, cache_dir=cache_dir, progress=False)
    assert store.hit and store.ok.all()
    np.testing.assert_array_equal(store.images[:, SIZE // 2, SIZE // 2], np.arange(N) % 250)
