"""Peak memory of ``cxrkit serve`` for the worst requests its limits allow, alone and three at once.

    python benchmarks/serve_memory.py [--run RUN] [--concurrent 3] [--max-seconds 600]

Starts ``cxrkit serve`` (default limits: 16 files of at most 50 MiB and 40 M pixels each) on 127.0.0.1 in a
child process, waits for ``/healthz``, and for each case resets the server's peak-RSS mark
(``/proc/PID/clear_refs``), sends the requests, and reads the peak (``VmHWM``) against the idle RSS:

- ``png16``: 16 files, each a 16-bit 6324 x 6324 PNG (40 M pixels, the pixel limit; a few MB compressed);
- ``dicom49``: 16 files, each an uncompressed 16-bit 4950 x 4950 DICOM (49 MB, under the 50 MiB file limit),
  a 784 MB request body.

Linux only (``/proc``). Without ``--run`` a tiny run is trained first on synthetic images. Writes a
JSON summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, tiny_run  # noqa: E402


def png16(path: Path, side: int = 6324) -> Path:
    """A 16-bit PNG at the default pixel limit: a smooth 12-bit ramp, so it compresses to a few MB."""
    from PIL import Image

    arr = (np.add.outer(np.arange(side, dtype=np.uint32), np.arange(side, dtype=np.uint32)) * 4095 // (2 * side)).astype(np.uint16)
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)
    return path


def dicom16(path: Path, side: int = 4950) -> Path:
    """An uncompressed 16-bit MONOCHROME2 DICOM of ``side`` squared pixels (2 bytes each)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.add.outer(np.arange(side), np.arange(side)) % 4096).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def post(url: str, file: Path, n: int, results: list, key: str | None) -> None:
    """One request with ``n`` copies of ``file`` streamed from disk; appends (status, seconds)."""
    import httpx

    t0 = time.perf_counter()
    handles = [open(file, "rb") for _ in range(n)]
    try:
        r = httpx.post(url, files=[("files", (f"{i}{file.suffix}", h, "application/octet-stream")) for i, h in enumerate(handles)],
                       headers={"X-API-Key": key} if key else {}, timeout=600)
        results.append((r.status_code, time.perf_counter() - t0, r.text[:200] if r.status_code != 200 else ""))
    finally:
        for h in handles:
            h.close()


def main() -> int:
    """Run the cases and print a JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="run folder to serve (default: train a tiny one)")
    ap.add_argument("--concurrent", type=int, default=3, help="requests at once in the concurrent cases (default %(default)s)")
    ap.add_argument("--cases", default="png16,dicom49", help="comma-separated cases (default %(default)s)")
    ap.add_argument("--max-seconds", type=float, default=600, help="give up after this long (default %(default)s)")
    a = ap.parse_args()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(a.run) if a.run else tiny_run(tmp)
        files = {"png16": png16(tmp / "big16.png"), "dicom49": dicom16(tmp / "big16.dcm")}
        port = free_port()
        env = {**os.environ, "CXRKIT_API_KEY": ""}
        server = subprocess.Popen([sys.executable, "-m", "cxrkit", "serve", str(run), "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            import httpx

            base = f"http://127.0.0.1:{port}"
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stderr.read()}")
                time.sleep(0.3)
            time.sleep(1)
            idle = rss(server.pid)["VmRSS"]
            summary = {"idle_rss_mb": round(idle / 2**20, 1), "files": {k: os.path.getsize(v) for k, v in files.items()}, "cases": []}
            for name in a.cases.split(","):
                for n_requests in (1, a.concurrent):
                    if time.monotonic() - t_start > a.max_seconds:
                        summary["stopped"] = "max-seconds reached"
                        break
                    before = rss(server.pid)["VmRSS"]
                    Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                    results: list = []
                    threads = [threading.Thread(target=post, args=(base + "/v1/predict", files[name], 16, results, None))
                               for _ in range(n_requests)]
                    t0 = time.perf_counter()
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    peak = rss(server.pid)["VmHWM"]
                    summary["cases"].append({
                        "case": name, "requests_at_once": n_requests, "statuses": sorted(r[0] for r in results),
                        "seconds": round(time.perf_counter() - t0, 1), "rss_before_mb": round(before / 2**20, 1),
                        "peak_rss_mb": round(peak / 2**20, 1), "peak_above_idle_mb": round((peak - idle) / 2**20, 1),
                        "errors": [r[2] for r in results if r[2]],
                    })
                    print(json.dumps(summary["cases"][-1]), file=sys.stderr, flush=True)
            print(json.dumps(summary, indent=1))
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
