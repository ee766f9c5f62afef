"""Training-step throughput on this CPU for precision and memory-format options.

    python benchmarks/cpu_speed.py --models cnn,resnet18 --image-size 224 --batch-size 32

Prints images/second (median of --repeats timed steps after warm-up) for fp32 vs bf16 autocast,
and NCHW vs channels_last, so the defaults are chosen by measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cxrkit.models import build_model


def step_rate(model_name: str, size: int, batch: int, precision: str, channels_last: bool, repeats: int) -> float:
    torch.manual_seed(0)
    model = build_model(model_name, 1)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 1, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,)).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        loss = loss_fn(out.float()[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {a.image_size}px, batch {a.batch_size}")
    print(f"{'model':<14}{'fp32 NCHW':>12}{'fp32 CL':>12}{'bf16 NCHW':>12}{'bf16 CL':>12}   (train images/s)")
    for m in a.models.split(","):
        rates = [step_rate(m, a.image_size, a.batch_size, p, cl, a.repeats) for p in ("32", "bf16") for cl in (False, True)]
        print(f"{m:<14}" + "".join(f"{r:>12.1f}" for r in rates))


if __name__ == "__main__":
    main()
