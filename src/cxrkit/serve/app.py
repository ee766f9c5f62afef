"""The HTTP service: ``create_app(run_dir)`` returns a FastAPI app serving one run.

Routes: ``POST /v1/predict`` (multipart ``files``: PNG, JPEG, BMP, TIFF or DICOM, sniffed by content),
``GET /v1/model`` (model card), ``GET /v1/sample.png`` (a synthetic radiograph to try), ``GET /healthz``,
the web page at ``/`` and OpenAPI docs at ``/docs``.

Safety: the request body is capped while it is read, files by size and by pixel count (checked from
the header before decoding), content decides the format, every bad input gets a 4xx JSON error
``{"error": {"code", "message", "file"}}``. The model loads once; decoding runs in the thread pool
and the model behind a lock, so concurrent requests queue instead of fighting over the CPU cores.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from cxrkit import __version__
from cxrkit.data.decode import ImageDecodeError, ImageTooLargeError, UnsupportedImageError, UnusableImageError
from cxrkit.data.magic import sniff_format
from cxrkit.prediction.results import ood_findings
from cxrkit.report.narrative import against_threshold
from cxrkit.run import Run
from cxrkit.serve.guard import PROTECTED_PREFIX, ApiKeyGate, OneBodyLength, OwnAnswer, error_response
from cxrkit.serve.model_card import decision_rule, model_card, model_identity

log = logging.getLogger("cxrkit.serve")

API_KEY_ENV = "CXRKIT_API_KEY"


PART_HEADERS = 64 * 1024  # allowance for multipart framing (boundaries, part headers) beside the files' bytes


@dataclass(frozen=True)
class Limits:
    """Input limits of the service."""

    max_file_bytes: int = 50 * 1024 * 1024  # a 16-bit 4k x 4k DICOM is ~32 MB
    max_files: int = 16
    max_pixels: int = 40_000_000  # twice a 4.3k x 4.3k detector
    max_decodes: int = 1  # images decoded at once across all requests: a 40 MP 16-bit decode holds ~170 MB (measured)
    # Request bodies held at once across all requests (spooled to disk past 1 MB until their answer): 50 clients sending 16
    # files of 50 MB each had ~40 GB on disk. Past it a new body is answered 503, to retry.
    max_inflight_bytes: int = 2 * 1024**3

    def __post_init__(self) -> None:
        for name, lo, hi in (("max_file_bytes", 1024, 1024**3), ("max_files", 1, 256), ("max_pixels", 4096, 200_000_000),
                             ("max_decodes", 1, 64), ("max_inflight_bytes", 1024, 1024**4)):
            value = getattr(self, name)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be a whole number from {lo:,} to {hi:,}, got {value!r}")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: every file at its limit plus room for the multipart framing."""
        return self.max_files * self.max_file_bytes + PART_HEADERS


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with a 4xx status."""

    def __init__(self, status: int, code: str, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.file = status, code, message, file


class BodyLimit:
    """ASGI middleware: 413 for a declared Content-Length over the limit, and an error as soon as a streamed body passes it;
    503 for a body that would take the bytes held by all requests at once past ``max_inflight``."""

    def __init__(self, app, max_bytes: int, max_inflight: int | None = None) -> None:
        self.app, self.max_bytes, self.max_inflight = app, max_bytes, max_inflight
        self.inflight = 0  # one event loop: no lock needed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await error_response(413, "request_too_large", f"request body over the limit of {self.max_bytes:,} bytes")(scope, receive, send)
            return
        seen, own = 0, OwnAnswer(scope, receive, send)
        message_413 = f"request body over the limit of {self.max_bytes:,} bytes"

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                if self.max_inflight and self.inflight + chunk > self.max_inflight:
                    busy = "the server holds as many uploads as it takes at once; send the request again in a moment"
                    own.response = error_response(503, "busy", busy)
                    own.response.headers["Retry-After"] = "5"
                    raise ApiError(503, "busy", busy)
                seen += chunk
                self.inflight += chunk
                if seen > self.max_bytes:
                    own.response = error_response(413, "request_too_large", message_413)
                    raise ApiError(413, "request_too_large", message_413)
            return message

        try:
            await self.app(scope, limited, own.send)
        finally:  # held until the answer: the spooled files live as long as the request
            self.inflight -= seen


class CompleteMultipart:
    """ASGI middleware: a multipart body must reach its closing boundary, and no part may follow it; else 400.

    Starlette's parser returns the parts it has when the body stops early and skips whatever follows the closing
    boundary, so an upload cut off in its second file (or a Content-Length shorter than the body) was answered
    200 for the first file alone, the rest dropped without a word.
    """

    def __init__(self, app, max_file_bytes: int | None = None) -> None:
        self.app, self.max_file_bytes = app, max_file_bytes

    async def __call__(self, scope, receive, send) -> None:
        boundary = _multipart_boundary(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if not boundary:  # not a multipart body (or no boundary, which the parser refuses itself)
            await self.app(scope, receive, send)
            return
        encoding = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"content-encoding"), "identity")
        if encoding.strip().lower() not in ("", "identity"):  # compressed: no boundary to find, and "Invalid multipart data." said nothing
            response = error_response(415, "unsupported_media_type", f"compressed request bodies (Content-Encoding: {encoding}) are not "
                                                                     "read; send the files as they are")
            await response(scope, receive, send)
            return
        close, delimiter = b"\r\n--" + boundary + b"--", b"--" + boundary
        keep = len(close) - 1
        tail, closed, own = b"\r\n", False, OwnAnswer(scope, receive, send)  # the CRLF lets a body that opens with the close match

        def refuse(message: str) -> ApiError:
            own.response = error_response(400, "malformed_multipart", message)
            return ApiError(400, "malformed_multipart", message)

        since = 0  # bytes since the last boundary: the part being received

        async def checked():
            nonlocal tail, closed, since
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            data = tail + body
            cuts, at = [], data.find(delimiter)
            while at >= 0:
                cuts.append(at)
                at = data.find(delimiter, at + len(delimiter))
            if cuts:  # the part that ends here, the parts wholly inside this chunk, and the one it opens
                longest = max([since + cuts[0] - len(tail), *(b - a for a, b in zip(cuts, cuts[1:])), len(data) - cuts[-1]])
                since = len(data) - cuts[-1]
            else:
                since += len(body)
                longest = since
            if self.max_file_bytes and longest > self.max_file_bytes + PART_HEADERS:
                # Stopped as it streams: a 300 MB file was spooled to disk whole before its 413 (16 of them fit the request limit).
                message_413 = f"a file is over the limit of {self.max_file_bytes:,} bytes; the upload was stopped there"
                own.response = error_response(413, "file_too_large", message_413)
                raise ApiError(413, "file_too_large", message_413)
            if not closed and (at := data.find(close)) >= 0:
                closed, data = True, data[at + len(close):]
            if closed and delimiter in data:
                raise refuse(f"a part follows the closing boundary --{boundary.decode('latin-1')}--; it would be ignored: send every file before it")
            tail = data[-keep:]
            if not message.get("more_body", False) and not closed:
                raise refuse(f"the body ends before its closing boundary --{boundary.decode('latin-1')}--: the upload was cut off "
                             "(or Content-Length is shorter than the body), so its last file is incomplete")
            return message

        await self.app(scope, checked, own.send)


def _multipart_boundary(scope) -> bytes | None:
    """The boundary of a multipart/form-data request, read as Starlette reads it (first Content-Type header); None for other bodies."""
    from python_multipart.multipart import parse_options_header

    ctype = next((v for k, v in scope.get("headers") or [] if k == b"content-type"), None)
    if ctype is None:
        return None
    kind, params = parse_options_header(ctype)
    return (params.get(b"boundary") or None) if kind == b"multipart/form-data" else None


def _libc_malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def _return_freed_memory() -> None:
    # glibc keeps freed blocks of a full-size decode (Pillow allocates 16 MB blocks, below the mmap threshold)
    # in the decoding thread's arena; without this the server's RSS stays at its high-water mark.
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _size(data: bytes | BinaryIO) -> int:
    if isinstance(data, bytes):
        return len(data)
    return data.seek(0, io.SEEK_END) - data.seek(0)


def _head(data: bytes | BinaryIO) -> bytes:
    if isinstance(data, bytes):
        return data[:132]
    head = data.read(132)
    data.seek(0)
    return head


def _png_bytes(gray: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _png_base64(gray: np.ndarray) -> str:
    return base64.b64encode(_png_bytes(gray)).decode("ascii")


class Service:
    """The loaded run and the lock that serialises model calls."""

    def __init__(self, run: Run, limits: Limits) -> None:
        self.run, self.limits = run, limits
        self.lock = threading.Lock()
        self.decode_slots = threading.BoundedSemaphore(limits.max_decodes)
        self.identity = model_identity(run)
        self.rule = decision_rule(run)
        self.card = model_card(run)
        self.reference = run.shift_reference()
        self.warm_up()

    def warm_up(self) -> None:
        """One prediction at start-up, so lazy imports and first-run allocations do not land on the first request."""
        from cxrkit.data.synthetic import synthetic_cxr

        img = synthetic_cxr(np.random.default_rng(0), self.run.preprocessing.image_size)
        self.predict([("warm-up", _png_bytes(img))], explain=False, preview=False)

    def decode(self, name: str, data: bytes | BinaryIO) -> np.ndarray:
        """One upload (bytes or a spooled file) -> uint8 (S, S) at the run's size, or an :class:`ApiError` saying what is wrong with it."""
        size = _size(data)
        if not size:
            raise ApiError(400, "empty_file", "the file is empty", name)
        if size > self.limits.max_file_bytes:
            raise ApiError(413, "file_too_large", f"file is {size:,} bytes; the limit is {self.limits.max_file_bytes:,}", name)
        try:
            with self.decode_slots:  # bounds the full-resolution images held at once, whatever the number of requests
                try:
                    return self.run.preprocessing.load(data, max_pixels=self.limits.max_pixels)
                finally:
                    _return_freed_memory()
        except ImageTooLargeError as exc:
            raise ApiError(413, "too_many_pixels", str(exc), name) from exc
        except UnsupportedImageError as exc:
            raise ApiError(415, "unsupported_image", str(exc), name) from exc
        except UnusableImageError as exc:
            raise ApiError(422, "unusable_image", str(exc), name) from exc
        except ImageDecodeError as exc:
            raise ApiError(422, "undecodable_image", str(exc), name) from exc
        except (MemoryError, RecursionError) as exc:  # hostile files can exhaust a decoder; refuse them, do not crash
            raise ApiError(422, "undecodable_image", f"cannot decode image: {type(exc).__name__}", name) from exc
        except Exception as exc:  # Pillow's and pydicom's parsers raise more than their documented errors on damaged files
            log.warning("decoder raised %s on upload %r", type(exc).__name__, name, exc_info=True)
            raise ApiError(422, "undecodable_image", f"cannot decode image: damaged or unusual file ({type(exc).__name__}: {exc})", name) from exc

    def predict(self, uploads: list[tuple[str, bytes | BinaryIO]], explain: bool, preview: bool) -> dict:
        """Decode every upload (all must be valid), classify them in one batch, describe each result."""
        images = np.stack([self.decode(name, data) for name, data in uploads])
        heat = None
        with self.lock:
            probs = self.run.predict_arrays(images)
        method = None
        if explain:  # outside the prediction lock (the explainer has its own, on its own copy of the model): 16 occlusion maps
            from cxrkit.explain.cam import heatmaps, resolve_method  # held every plain request for 4 s

            try:
                method = resolve_method(self.run, "auto")  # as `cxrkit explain` and the report draw this model's maps
                heat = heatmaps(self.run, images, method=method)
            except ValueError as exc:  # the explainer refuses this model or image, with a reason
                raise ApiError(422, "explain_failed", f"no heat map for this model: {exc}") from exc
        labels = self.run.decision_labels(probs)
        outliers = ood_findings(self.reference, images)
        results = []
        for i, (name, data) in enumerate(uploads):
            label = labels[i]
            result = {
                "file": name, "bytes": _size(data), "format": sniff_format(_head(data)) or "unknown",
                # Unrounded: rounded to 6 decimals, a probability within 5e-7 of the threshold read as on the other side of it.
                "probabilities": {c: float(probs[i, j]) for j, c in enumerate(self.run.classes)},
                "decision": {**{k: v for k, v in self.rule.items() if k != "words"}, "label": label,
                             "words": self._words(probs[i], label), "rule_words": self.rule["words"]},
                "calibrated": getattr(self.run, "calibration", None) is not None,
                "ood_warning": None if self.reference is None else bool(outliers[i]),  # None: not checked
                "ood_findings": outliers[i],
            }
            if preview:
                result["image_png"] = _png_base64(images[i])
            if heat is not None:
                from cxrkit.explain.overlay import overlay_png

                result["overlay_png"] = base64.b64encode(overlay_png(images[i], heat[i])).decode("ascii")
                result["overlay_method"] = method
            results.append(result)
        return {"model": {**self.identity, "engine": self.run.engine}, "results": results}

    def _words(self, p: np.ndarray, label: str) -> str:
        if self.run.task == "multilabel":
            # three decimals and more where needed: a calibrated rare finding read "Edema (0.00 >= 0.00)"
            found = [f"{c} ({' >= '.join(against_threshold(float(p[j]), float(t)))})"
                     for j, (c, t) in enumerate(zip(self.run.classes, self.run.thresholds)) if p[j] >= t]
            return "findings above their thresholds: " + ", ".join(found) if found else "no finding above its threshold"
        band = self.run.record.referral
        if label == "refer" and band is not None:
            return (f"refer to a reader: the probability of {self.run.classes[1]} ({p[1]:.3f}) lies in the referral band "
                    f"{band['lower']:.3f}-{band['upper']:.3f}, where the model does not decide")
        if self.run.task == "binary":
            pos, t = self.run.classes[1], self.rule["threshold"]
            side = "at or above" if p[1] >= t else "below"
            shown_p, shown_t = against_threshold(float(p[1]), float(t))
            return f"{label}: the probability of {pos} ({shown_p}) is {side} the threshold {shown_t}"
        j = int(np.argmax(p))
        return f"{label}: the most probable class ({p[j]:.2f})"


class JsonCORS(CORSMiddleware):
    """Starlette's CORS middleware, with its refusal of a preflight (a plain-text 400) in the API's JSON error shape."""

    def preflight_response(self, request_headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        refused = error_response(response.status_code, "cors_refused", response.body.decode(errors="replace"))
        refused.headers.update({k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")})
        return refused


def _validation_message(errors) -> str:
    """FastAPI's validation errors in words: a bad query parameter is named as such, not blamed on the body."""
    query = [f"{'.'.join(str(x) for x in e['loc'][1:])}={e.get('input')!r}: {e.get('msg')}" for e in errors if e.get("loc", ())[:1] == ("query",)]
    if query:
        return f"invalid query parameter ({'; '.join(query)}); explain and preview take true or false"
    if any(e.get("loc", ())[:2] == ("body", "files") and len(e["loc"]) > 2 for e in errors):
        # python-multipart drops RFC 5987's filename*= (RFC 7578 4.2: form-data uses filename=), so such a part reads as text.
        return ("a 'files' part is not a file: give each part a filename in its Content-Disposition (curl -F files=@image.png); "
                "filename*= alone is not read, send filename=\"...\" (RFC 7578)")
    where = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
    return f"expected multipart/form-data with one or more 'files' ({where})"


def _static(name: str) -> bytes:
    return resources.files("cxrkit.serve").joinpath("static", name).read_bytes()


STATIC_TYPES = {"app.js": "text/javascript", "style.css": "text/css"}
SWAGGER_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


def add_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (Swagger UI 5, which reads FastAPI's OpenAPI 3.1) from files installed with fastapi-offline, not a CDN.

    Hospital networks are often cut off from the internet; FastAPI's default page loads its JavaScript from a CDN and
    stays blank there. This is FastAPI's "self-hosting JavaScript and CSS for docs" recipe.
    """
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html

    folder = Path(fastapi_offline.__file__).parent / "static"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} – API documentation",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js", swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon.png")

    @app.get("/docs-static/{name}", include_in_schema=False)
    async def docs_static(name: str) -> Response:
        if name not in SWAGGER_TYPES:
            raise ApiError(404, "not_found", f"no documentation file {name}")
        return Response((folder / name).read_bytes(), media_type=SWAGGER_TYPES[name], headers={"Cache-Control": "max-age=86400"})


def resolve_api_key(api_key: str | None) -> str | None:
    """The key the server requires: ``api_key``, else ``$CXRKIT_API_KEY``, surrounding whitespace removed; None for no key.

    An explicit empty key turns auth off even when the environment variable is set (tests, local use). The client's key is
    stripped too, so a key kept with its trailing newline (``echo key > secret``) locked every client out."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if not key:
        return None
    where = "--api-key" if api_key is not None else f"${API_KEY_ENV}"
    if not key.strip():
        raise ValueError(f"{where} is only whitespace; give a key, or an empty one for no key")
    if any(ord(c) < 32 or ord(c) == 127 for c in key.strip()):
        raise ValueError(f"{where} holds a control character (a line break?), which no client can send in a header; give the key on one line")
    return key.strip()


_ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


def check_cors_origins(origins: list[str] | None) -> list[str] | None:
    """Origins as a browser sends them (``scheme://host[:port]``, or ``*``); others are refused in one line: with a trailing
    slash or no scheme an origin never matches, so CORS silently never worked, and ``null`` let any sandboxed page in."""
    for origin in origins or []:
        if origin == "null":
            raise ValueError("--cors-origin null would let any sandboxed iframe or file:// page call the API; name the page's origin")
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(f"--cors-origin {origin!r} is not an origin as browsers send it: scheme://host[:port], without a path or a "
                             "trailing slash, e.g. https://viewer.example.org")
    return origins


def create_app(run_dir: str | Path, engine: str = "auto", api_key: str | None = None, limits: Limits | None = None,
               cors_origins: list[str] | None = None, device: str = "cpu") -> FastAPI:
    """The FastAPI app serving the run in ``run_dir``; the model is loaded here, once.

    ``api_key`` (default: the ``CXRKIT_API_KEY`` environment variable; ``""`` for none) is then required on every
    ``/v1/`` route as ``X-API-Key`` or ``Authorization: Bearer``, checked from the headers before the body is read. CORS stays off unless
    ``cors_origins`` names the origins allowed to call the API from a browser.
    """
    limits = limits or Limits()
    api_key = resolve_api_key(api_key)
    cors_origins = check_cors_origins(cors_origins)
    service = Service(Run.load(run_dir, engine=engine, device=device), limits)
    # redirect_slashes off: /v1/predict/ was a 307 whose Location was built from the request's own Host header.
    app = FastAPI(title="cxrkit", version=__version__, docs_url=None, redoc_url=None, redirect_slashes=False,  # /docs: offline, below
                  description=f"Chest X-ray classification with model {service.identity['id']} "
                              f"({service.identity['architecture']}, version {service.identity['version']}). Not a medical device.")
    app.state.service = service
    add_offline_docs(app)
    app.add_middleware(CompleteMultipart, max_file_bytes=limits.max_file_bytes)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, max_inflight=limits.max_inflight_bytes)
    app.add_middleware(ApiKeyGate, api_key=api_key)  # outside the body limit: no key, no body read
    app.add_middleware(OneBodyLength)  # outermost: an ambiguous body length is refused before anything reads it
    if cors_origins:
        app.add_middleware(JsonCORS, allow_origins=cors_origins, allow_methods=["GET", "POST"], allow_headers=["X-API-Key", "Authorization"])

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.file)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and kind != "multipart/form-data":  # JSON or a raw image/png body: "body.files: Field required"
            return error_response(415, "unsupported_media_type", f"send multipart/form-data with one or more 'files' parts (curl -F "
                                                                 f"files=@image.png), not {kind or 'a body without a Content-Type'}")
        return error_response(422, "invalid_request", _validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if "Maximum number of files" in detail:  # Starlette's own cap (1000), not the service's
            return error_response(400, "too_many_files", f"more than 1000 files; at most {limits.max_files} per request")
        if detail == "Invalid multipart data.":  # python-multipart's one word for every malformed body
            return error_response(400, "invalid_multipart", "the multipart body could not be parsed: a part's headers over 8 KB (a very "
                                                            "long file name), or a malformed body; send each image as a 'files' part "
                                                            "(curl -F files=@image.png)")
        response = error_response(exc.status_code, "http_error", detail)
        response.headers.update(exc.headers or {})  # a 405 must name the methods allowed (Allow)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal_error", "unexpected server error; it has been logged")

    # Load balancers probe with HEAD; it is left out of the schema, where one route with both methods gave the two
    # operations the same operationId (a warning, and an OpenAPI document that code generators refuse).
    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", summary="liveness: the model is loaded")
    async def healthz() -> dict:
        return {"status": "ok", "model": service.identity["id"], "version": service.identity["version"], "engine": service.run.engine}

    @app.get("/v1/model", summary="model card: training data, metrics with 95% CIs, intended use, limitations")
    async def model() -> dict:
        return {**service.card, "auth_required": api_key is not None}

    @app.post("/v1/predict", summary="classify one or more uploaded radiographs (PNG, JPEG, BMP, TIFF or DICOM)")
    async def predict(request: Request, files: list[UploadFile] = File(..., description="one or more image files"),
                      explain: bool = Query(False, description="add a heat-map overlay (PNG, base64) per image, and overlay_method "
                                                              "(occlusion, as in the report)"),
                      preview: bool = Query(False, description="add the image as the model sees it (PNG, base64)")) -> dict:
        # A misspelt ?explian=true was ignored and the answer came without its heat maps; a repeated one took its last value.
        params = request.query_params
        unknown = sorted(set(params) - {"explain", "preview"})
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                                   "known: explain, preview (true or false)")
        repeated = sorted(k for k in set(params) if len(params.getlist(k)) > 1)
        if repeated:
            raise ApiError(422, "invalid_request", f"query parameter {', '.join(map(repr, repeated))} given more than once; give it once")
        # FastAPI reads only 'files': an image sent under another name would go unanswered beside the others' results.
        others = sorted({name for name in (await request.form()).keys() if name != "files"})  # the form FastAPI parsed, cached
        if others:
            raise ApiError(400, "unexpected_field", f"form field{'s' if len(others) > 1 else ''} {', '.join(map(repr, others))} "
                                                    "not read: send every image as a 'files' part (explain and preview are query parameters)")
        if len(files) > limits.max_files:
            raise ApiError(400, "too_many_files", f"{len(files)} files; at most {limits.max_files} per request")
        # Starlette spooled each file to a temporary file past 1 MB; decoding reads from there, never a whole copy in memory.
        uploads = [(f.filename or "upload", f.file) for f in files]
        if explain:
            try:
                import cxrkit.explain.cam  # noqa: F401
                import cxrkit.explain.overlay  # noqa: F401
            except ImportError as exc:
                raise ApiError(501, "explain_unavailable", f"heat maps are not available in this installation ({exc})") from exc
        return await run_in_threadpool(service.predict, uploads, explain, preview)

    @app.get("/v1/sample.png", summary="a synthetic chest radiograph (not a patient) to try the service with",
             response_class=Response)
    async def sample() -> Response:
        from cxrkit.data.synthetic import synthetic_cxr

        return Response(_png_bytes(synthetic_cxr(np.random.default_rng(7), 256, pattern=1)), media_type="image/png")

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC_TYPES:
            raise ApiError(404, "not_found", f"no static file {name}")
        return Response(_static(name), media_type=STATIC_TYPES[name])

    # HEAD wherever GET is (RFC 9110 9.3.2): a HEAD on /v1/model was 405. Left out of the schema, as for /healthz.
    for route in list(app.routes):
        if isinstance(route, APIRoute) and "GET" in route.methods and "HEAD" not in route.methods and route.path != "/healthz":
            app.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False, response_class=route.response_class)
    if api_key is not None:
        _declare_api_key(app)
    return app


def _declare_api_key(app: FastAPI) -> None:
    """Name the key in the OpenAPI schema, so that /docs offers to send it: the check itself is a middleware, which FastAPI
    cannot see, and "Try it out" on /v1/ got 401 with no way to give the key."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema.get("paths", {}).items():
                if path.startswith(PROTECTED_PREFIX):
                    for op in operations.values():
                        op["security"] = [{"ApiKey": []}, {"Bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
