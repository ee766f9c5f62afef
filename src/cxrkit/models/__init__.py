"""Models: a registry of named networks, all taking one-channel input."""

from cxrkit.models.registry import MODELS, build_model, count_parameters, model_names

__all__ = ["MODELS", "build_model", "count_parameters", "model_names"]
