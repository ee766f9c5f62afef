"""Export: a run's model in formats other runtimes load (ONNX)."""
