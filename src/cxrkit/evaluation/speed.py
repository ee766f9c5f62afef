"""Inference speed of a trained run as prediction runs it: preprocessing, model, probabilities."""

from __future__ import annotations

import time

import numpy as np

from cxrkit.run import Run


def inference_ms_per_image(run: Run, batch_size: int, images: int = 32, repeats: int = 3, seed: int = 0) -> float:
    """Median milliseconds per image over ``repeats`` passes of ``images`` random images in batches of ``batch_size``.

    One warm-up pass runs first (allocator and oneDNN kernel selection). Uses the run's own settings,
    test-time augmentation included, so the figure is what ``cxrkit predict`` costs on this machine.
    """
    size = run.preprocessing.image_size
    x = np.random.default_rng(seed).integers(0, 256, (images, size, size), dtype=np.uint8)
    run.predict_arrays(x[:batch_size], batch_size)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run.predict_arrays(x, batch_size)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)) / images
