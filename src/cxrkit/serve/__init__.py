"""Serve a run over HTTP: a FastAPI app (``create_app``) with a JSON API and a web page."""

from cxrkit.serve.app import create_app

__all__ = ["create_app"]
