"""Explanations: heat maps of where a model looks (``cam``) and their overlays on the radiograph (``overlay``)."""
