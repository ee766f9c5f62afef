"""Explanations: heat maps of where a model looks (``cam``) and their overlays on the radiograph (``overlay``)."""

# Here, not in cam.py, so that building the CLI parser does not import torch.
METHODS = ("gradcam", "gradcam++", "occlusion")
# The model's own default (ModelSpec.heatmap): occlusion for the small networks, Grad-CAM for the pretrained ones.
AUTO = "auto"
