"""The ``visionfm serve`` web application: a page for people and a JSON API for programs.

Routes:

* ``GET /`` — the page (plain HTML/JS/CSS from ``static/``, no build step, nothing fetched from elsewhere);
* ``GET /healthz`` — liveness and which models are loaded;
* ``GET /api/models`` — the registered models (id, name, task, modality, class / target names, units);
* ``GET /api/examples`` and ``GET /api/examples/{id}`` — the bundled example images;
* ``POST /api/predict`` — one image (``multipart/form-data`` field ``file``, or the raw bytes as the body)
  through one model chosen by id; returns probabilities / values / masks / landmarks and image layers;
* ``GET /openapi.json`` — the OpenAPI description of the API.

Safety: the request body is read in memory with a hard size cap (413 past it, before parsing); the file's
content decides whether it is an image (415 otherwise, whatever its name); pixel counts are checked from
the header before decoding (413); a model is named only by a registered id (404 otherwise); inference runs
in a bounded thread pool, so the event loop keeps answering while models run; nothing is written to disk.
Requests whose ``Host`` header is not a loopback name (``localhost``, ``127.0.0.1``, ``::1``), the bound
host or one of ``allowed_hosts`` get 400 (DNS rebinding). Error messages never carry a server path or a
traceback (:mod:`visionfm.serve.redact`); an unexpected failure answers 500 with an error id, and the
details go to the server log. A model folder that cannot be used is reported in ``/api/models``
(``problems``) and the others are served.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from visionfm import __version__
from visionfm.errors import ConfigError, VisionFMError
from visionfm.serve.inference import UploadError, check_days, decode_upload, render_result, run_model
from visionfm.serve.redact import error_id
from visionfm.serve.registry import DEMO_LABEL, ModelRegistry, ModelUnavailableError, UnknownModelError

__all__ = ["create_app", "load_examples", "trusted_hosts", "STATIC_DIR", "LOOPBACK_HOSTS"]

log = logging.getLogger("visionfm.serve")

STATIC_DIR = Path(__file__).parent / "static"
EXAMPLES_DIR = Path(__file__).parent / "examples"
_MULTIPART_OVERHEAD = 64 * 1024
_RAW_TYPES = ("image/", "application/dicom", "application/octet-stream")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_ANY_ADDRESS = ("0.0.0.0", "::", "")


def trusted_hosts(host: str | None = None, allowed_hosts: Sequence[str] = ()) -> list[str]:
    """The ``Host`` header names the server answers: the loopback names, ``host`` (the address it listens
    on, unless that is a wildcard address) and ``allowed_hosts`` (``*`` turns the check off; ``*.example.org``
    matches sub-domains). IPv6 literals are admitted with and without brackets."""
    out: list[str] = []
    for name in (*LOOPBACK_HOSTS, *([host] if host and host not in _ANY_ADDRESS else []), *allowed_hosts):
        name = str(name).strip().lower()
        if not name:
            continue
        if "*" in name[1:] or (name.startswith("*") and name != "*" and not name.startswith("*.")):
            raise ConfigError(f"--allowed_hosts {name!r}: a wildcard must be '*' or like '*.example.org'")
        forms = [name]
        if ":" in name.strip("[]"):  # an IPv6 literal: the Host header carries it in brackets
            bare = name.strip("[]")
            forms = [bare, f"[{bare}]"]
        out += [f for f in forms if f not in out]
    return out


# -- examples ------------------------------------------------------------------------------------------


def load_examples() -> list[dict[str, Any]]:
    """The bundled examples, in memory: scikit-image's CC0 ``retina.jpg`` (when scikit-image is installed)
    and two small synthetic images shipped with the package."""
    out: list[dict[str, Any]] = []
    try:
        import skimage.data

        bundled = Path(skimage.data.__file__).parent / "retina.jpg"
        if bundled.is_file():
            data = bundled.read_bytes()
        else:  # newer scikit-image fetches it into a local cache; never from the network here
            import io

            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(skimage.data.retina()).save(buf, format="JPEG", quality=92)
            data = buf.getvalue()
        out.append({"id": "retina", "filename": "retina.jpg", "media_type": "image/jpeg", "data": data,
                    "title": "Fundus photograph (real)",
                    "description": "Colour fundus photograph from scikit-image (public domain, CC0)."})
    except Exception as exc:  # scikit-image missing or the image unavailable offline
        log.info("example retina.jpg not offered (%s)", exc)
    for fid, fname, media, title, desc in (
        ("synthetic-fundus", "synthetic_fundus.jpg", "image/jpeg", "Fundus (synthetic)",
         "Procedurally drawn fundus image from visionfm's synthetic-data generator."),
        ("synthetic-oct", "synthetic_oct.png", "image/png", "OCT B-scan (synthetic)",
         "Procedurally drawn OCT B-scan from visionfm's synthetic-data generator."),
    ):
        path = EXAMPLES_DIR / fname
        if path.is_file():
            out.append({"id": fid, "filename": fname, "media_type": media, "data": path.read_bytes(),
                        "title": title, "description": desc})
    return out


# -- request parsing -----------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise UploadError(413, f"the upload is too large ({int(declared) / 1e6:.1f} MB); "
                                       f"this server accepts files up to {request.app.state.max_upload_mb:g} MB")
        except ValueError:
            raise UploadError(400, "invalid Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"the upload is too large; this server accepts files up to "
                                   f"{request.app.state.max_upload_mb:g} MB")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """``(fields, files)`` of a ``multipart/form-data`` body held in memory (files: name → (filename, bytes))."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data request without a boundary")
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    st: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "buf": bytearray()}

    def on_part_begin() -> None:
        st["headers"], st["buf"] = {}, bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        st["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        st["value"] += data[start:end]

    def on_header_end() -> None:
        st["headers"][bytes(st["field"]).lower()] = bytes(st["value"])
        st["field"], st["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        st["buf"] += data[start:end]

    def on_part_end() -> None:
        _, opts = parse_options_header(st["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in opts:
            files[name] = (opts[b"filename"].decode("utf-8", "replace"), bytes(st["buf"]))
        else:
            fields[name] = bytes(st["buf"]).decode("utf-8", "replace")

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart/form-data body ({exc})") from None
    return fields, files


def _flag(value: str | None, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise UploadError(422, f"{name} must be true or false, got {value!r}")


def _display_name(filename: str | None) -> str:
    """A client file name for display only: its last component, printable, at most 120 characters."""
    name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return (name or "upload")[:120]


# -- OpenAPI models ------------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    id: str = Field(description="the id to pass as `model` to /api/predict")
    name: str
    task: str = Field(description="classification, regression, segmentation, landmark or forecasting")
    task_kind: str | None = Field(None, description="binary, multiclass or multilabel (classification)")
    modality: str
    output_names: list[str] = Field(description="class, target or landmark names, from the model folder")
    units: list[str | None] | None = Field(None, description="regression: the unit of each target")
    arch: str
    input_size: int
    demo: bool = Field(description="true for the built-in demo models (not for clinical use)")
    metrics: dict[str, float] = Field(default_factory=dict, description="the scalar metrics in config.json")
    metrics_ci: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="confidence intervals from metrics.json: {metric: {low, high, level}}")
    selection: dict[str, Any] | None = Field(
        None, description="the metric that selected the checkpoint: key, label, split, value, higher_is_better")
    evaluated_on: str | None = Field(None, description="the split the metrics were computed on, as recorded")
    card: str | None = Field(None, description="the model card (README.md without its front matter), Markdown")
    max_days: float | None = None


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    problems: list[dict[str, str]] = Field(description="model folders that were found but could not be used")
    max_upload_mb: float
    demo_notice: str | None = None


class HealthResponse(BaseModel):
    status: str
    version: str
    models: int
    loaded: list[str]


class ErrorResponse(BaseModel):
    detail: str


_ERRORS = {code: {"model": ErrorResponse, "description": desc} for code, desc in (
    (400, "damaged file or malformed request"), (404, "unknown model id"), (413, "upload or image too large"),
    (415, "not a supported image (checked from the content, not the name)"),
    (422, "invalid parameter (e.g. days)"), (500, "the model failed (with an error id; details in the server log)"),
    (503, "server busy, or the model failed to load (it is then listed in /api/models problems)"))}

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "JPEG, PNG, TIFF, BMP, WebP or DICOM image"},
                    "model": {"type": "string", "description": "model id from GET /api/models"},
                    "attention": {"type": "boolean", "default": True,
                                  "description": "also compute the encoder attention map"},
                    "overlay": {"type": "boolean", "default": True,
                                "description": "also return a composited PNG overlay (overlay_png)"},
                    "days": {"type": "number", "description": "forecasting models: horizon in days"},
                }}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "model id (form field `model` takes precedence)"},
        {"name": "attention", "in": "query", "required": False, "schema": {"type": "boolean"}},
        {"name": "overlay", "in": "query", "required": False, "schema": {"type": "boolean"}},
        {"name": "days", "in": "query", "required": False, "schema": {"type": "number"}},
        {"name": "filename", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "raw-body uploads: a name to echo back (display only)"},
    ],
}


# -- the app -------------------------------------------------------------------------------------------


def create_app(models_dir: str | os.PathLike[str] | None, max_upload_mb: float = 25, *,
               max_megapixels: float = 64, workers: int = 2, max_queue: int = 64, device: str = "cpu",
               preload: bool = False, registry: ModelRegistry | None = None, host: str | None = None,
               allowed_hosts: Sequence[str] = ()) -> FastAPI:
    """The FastAPI application over the model folders in ``models_dir`` (demo models when it has none).

    Args:
        models_dir: a model folder or a folder of model folders (``None``: the demo models).
        max_upload_mb: largest accepted upload, in MB (10^6 bytes).
        max_megapixels: largest accepted image (all frames of a DICOM file counted), checked before decoding.
        workers: inference threads (requests beyond these wait in a queue).
        max_queue: requests in flight beyond which new ones get 503.
        device: ``cpu``, ``cuda`` or ``auto``.
        preload: load (and warm up) every model at start-up instead of on first use; one that fails is
            reported in ``problems`` and not offered, the others are served.
        host: the address the server listens on (its name is admitted in the ``Host`` header).
        allowed_hosts: more ``Host`` header names to admit besides the loopback names and ``host``.
    """
    if max_upload_mb <= 0 or max_megapixels <= 0 or workers < 1 or max_queue < 1:
        raise ConfigError("max_upload_mb and max_megapixels must be positive, workers and max_queue at least 1")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    hosts = trusted_hosts(host, allowed_hosts)
    reg = registry if registry is not None else ModelRegistry(models_dir, device=device)
    redact = reg.redact
    max_bytes = int(max_upload_mb * 1_000_000)
    max_pixels = int(max_megapixels * 1_000_000)
    examples = {e["id"]: e for e in load_examples()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="visionfm-infer")
        app.state.pool = pool
        if preload:
            loop = asyncio.get_running_loop()
            for mid in list(reg.entries):
                try:
                    await loop.run_in_executor(pool, _warm_up, mid)
                except Exception as exc:  # reported (log, /api/models, the page); the other models still serve
                    reg.mark_broken(mid, exc)
        try:
            yield
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="VisionFM local inference",
        version=__version__,
        description="Ophthalmic foundation-model predictions on images sent to this computer. "
                    "Models are the folders given to `visionfm serve --models`, addressed by id. "
                    "For research use; not a medical device.",
        docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.registry = reg
    app.state.max_upload_mb = float(max_upload_mb)
    app.state.in_flight = 0
    app.state.predictors = {}
    app.state.pool = None
    app.state.allowed_hosts = hosts

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    # outermost: a request for another Host name (DNS rebinding) is refused before anything else runs
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)

    @app.exception_handler(UploadError)
    async def _upload_error(_: Request, exc: UploadError):
        return JSONResponse({"detail": redact(exc.message)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": redact(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # the last resort: no traceback, no path
        ref = error_id()
        log.error("unexpected error on %s %s (error id %s)", request.method, request.url.path, ref, exc_info=exc)
        return JSONResponse({"detail": f"internal error (error id {ref}; details are in the server log)"},
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(x) for x in e.get("loc", ()) if x != "body"), e.get("msg"))
                 for e in exc.errors()]
        return JSONResponse({"detail": redact("invalid request: " + "; ".join(parts))}, status_code=422)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness and loaded models")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "models": len(reg),
                "loaded": [m for m in reg.entries if reg.is_loaded(m)]}

    @app.get("/api/models", response_model=ModelsResponse, summary="The models this server offers")
    async def models() -> dict[str, Any]:
        demo = any(e.demo for e in reg.entries.values())
        return {"models": reg.list(), "problems": reg.problem_list(), "max_upload_mb": float(max_upload_mb),
                "demo_notice": ("No trained model folders were found, so only the built-in demo models are available "
                                f"{DEMO_LABEL[len('demo model '):]}. Their outputs are meaningless.")
                if demo else None}

    @app.get("/api/examples", summary="Bundled example images")
    async def list_examples() -> dict[str, Any]:
        return {"examples": [{k: v for k, v in e.items() if k != "data"} | {"url": f"/api/examples/{e['id']}"}
                             for e in examples.values()]}

    @app.get("/api/examples/{example_id}", summary="One bundled example image",
             responses={404: _ERRORS[404]})
    async def get_example(example_id: str) -> Response:
        ex = examples.get(example_id)
        if ex is None:
            raise UploadError(404, f"unknown example {example_id!r}")
        return Response(ex["data"], media_type=ex["media_type"],
                        headers={"Content-Disposition": f'inline; filename="{ex["filename"]}"',
                                 "Cache-Control": "max-age=3600"})

    def _warm_up(model_id: str) -> None:
        """Load a model and send one small image through the whole request path (decode, model, attention,
        record, rendering): the first CPU pass is much slower, and a model that cannot answer shows now."""
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (90, 40, 20)).save(buf, format="PNG")
        days = 0.0 if reg.entry(model_id).needs_days else None
        _work(model_id, buf.getvalue(), "warm-up.png", True, True, days)

    def _work(model_id: str, data: bytes, filename: str, attention: bool, overlay: bool,
              days: float | None) -> dict[str, Any]:
        from visionfm.inference.predictor import Predictor

        t0 = time.perf_counter()
        image, fmt = decode_upload(data, max_pixels)
        t1 = time.perf_counter()
        entry = reg.entry(model_id)
        model = reg.get(model_id)  # ModelUnavailableError (503) when it fails to load; then listed in problems
        with reg.run_lock(model_id):
            pred = app.state.predictors.get(model_id)
            if pred is None:
                pred = app.state.predictors[model_id] = Predictor(model, device=str(reg.device))
            raw = run_model(model, image, attention=attention, days=days)
        record = pred.records([filename], [image], raw.pred, days)[0]
        t2 = time.perf_counter()
        result = render_result(entry, record, raw, image, overlay=overlay)
        t3 = time.perf_counter()
        return {
            "model": {k: v for k, v in entry.public().items() if k in ("id", "name", "task", "task_kind",
                                                                       "modality", "demo")},
            "image": {"filename": filename, "format": fmt, "width": image.width, "height": image.height},
            "prediction": record,
            **result,
            "timing_ms": {"decode": round((t1 - t0) * 1000, 1), "model": round(raw.model_ms, 1),
                          "attention": round(raw.attention_ms, 1), "render": round((t3 - t2) * 1000, 1),
                          "total": round((t3 - t0) * 1000, 1)},
            "notice": f"This is a {DEMO_LABEL}; its outputs are meaningless." if entry.demo else
                      "Research use only; not a medical device. Confirm findings clinically.",
        }

    @app.post("/api/predict", summary="Predict one image with one model", openapi_extra=_PREDICT_BODY,
              responses={200: {"description": "the prediction: `classes` (sorted), `values` (with units), "
                                              "`segmentation` (area per class) or `landmarks`, the record "
                                              "`visionfm predict` writes (`prediction`), image layers as data "
                                              "URLs (`layers.image`, `layers.attention`, `layers.mask`) and "
                                              "`overlay_png`"},
                         **{k: v for k, v in _ERRORS.items() if k != 200}})
    async def predict(request: Request) -> JSONResponse:
        body = await _read_body(request, max_bytes + _MULTIPART_OVERHEAD)
        ctype = request.headers.get("content-type", "")
        params = dict(request.query_params)
        if ctype.lower().startswith("multipart/form-data"):
            fields, files = parse_multipart(body, ctype)
            params.update(fields)
            if "file" not in files:
                raise UploadError(400, "no file was sent (multipart field 'file')")
            filename, data = files["file"]
        elif ctype.lower().startswith(_RAW_TYPES):
            filename, data = params.get("filename") or "upload", body
        else:
            raise UploadError(415, "send the image as multipart/form-data (field 'file') or as the raw request "
                                   f"body with an image content type; got Content-Type {ctype or 'none'!r}")
        if len(data) > max_bytes:
            raise UploadError(413, f"the file is too large ({len(data) / 1e6:.1f} MB); this server accepts "
                                   f"files up to {max_upload_mb:g} MB")
        if not data:
            raise UploadError(400, "the file is empty")
        model_id = params.get("model") or ""
        if not model_id:
            if len(reg) != 1:
                raise UploadError(422, "choose a model (field 'model'); available: " + ", ".join(reg.entries))
            model_id = next(iter(reg.entries))
        try:
            entry = reg.entry(model_id)
        except UnknownModelError as exc:
            raise UploadError(404, str(exc)) from None
        except ModelUnavailableError as exc:
            raise UploadError(503, str(exc)) from None
        attention = _flag(params.get("attention"), "attention", True)
        overlay = _flag(params.get("overlay"), "overlay", True)
        days = None
        if params.get("days") not in (None, ""):
            try:
                days = float(params["days"])
            except ValueError:
                raise UploadError(422, f"days must be a number, got {params['days']!r}") from None
            if not math.isfinite(days):
                raise UploadError(422, "days must be a finite number")
        try:
            days = check_days(entry, days)
        except ConfigError as exc:
            raise UploadError(422, str(exc)) from None
        if app.state.in_flight >= max_queue:
            raise UploadError(503, "the server is busy; try again in a moment")
        app.state.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(app.state.pool, _work, model_id, data, _display_name(filename),
                                                attention, overlay, days)
        except UploadError:
            raise
        except UnknownModelError as exc:
            raise UploadError(404, str(exc)) from None
        except ModelUnavailableError as exc:
            raise UploadError(503, str(exc)) from None
        except VisionFMError as exc:
            raise UploadError(422, str(exc)) from None
        except Exception:
            ref = error_id()
            log.exception("prediction failed (model %s, error id %s)", model_id, ref)
            raise UploadError(500, f"the model failed on this image (error id {ref}; details are in the server "
                                   "log)") from None
        finally:
            app.state.in_flight -= 1
        return JSONResponse(result)

    return app
