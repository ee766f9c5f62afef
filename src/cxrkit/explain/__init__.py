"""Explanations: heat maps of where a model looks (``cam``) and their overlays on the radiograph (``overlay``)."""

# Here, not in cam.py, so that building the CLI parser does not import torch.
METHODS = ("gradcam", "gradcam++", "occlusion")
# Occlusion for every model (explain.cam.resolve_method): Grad-CAM missed a corner-marker shortcut on every model measured.
AUTO = "auto"
