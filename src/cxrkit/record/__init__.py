"""The run folder's format, owned in one place: file names, the typed meta.json record, atomic writers and
readers for metrics, predictions and history. No torch here (see :mod:`cxrkit.run` for a loaded model)."""

from cxrkit.data.spec import MAX_IMAGE_SIZE, ImageSpec
from cxrkit.record.files import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    META_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_FILE,
    RUN_OUTPUTS,
    SHIFT_FILE,
    RunRecordError,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    read_history,
    read_json,
    read_metrics,
    read_predictions,
    replace_predictions,
    split_metrics,
    split_predictions,
    update_metrics,
)
from cxrkit.record.meta import TASKS, RunMeta, read_meta, write_meta

__all__ = [
    "CALIBRATION_FILE", "CONFIG_FILE", "HISTORY_FILE", "META_FILE", "METRICS_FILE", "MODEL_FILE", "PREDICTIONS_FILE", "RUN_OUTPUTS",
    "SHIFT_FILE", "MAX_IMAGE_SIZE", "TASKS", "ImageSpec", "RunMeta", "RunRecordError", "atomic_write_csv", "atomic_write_json",
    "atomic_write_text", "file_sha256", "read_history", "read_json", "read_meta", "read_metrics", "read_predictions", "replace_predictions",
    "split_metrics", "split_predictions", "update_metrics", "write_meta",
]
