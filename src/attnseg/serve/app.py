"""The FastAPI application of ``attnseg serve``: one static page and a small JSON API around one loaded run.

Routes (docs/serve.md):

- ``GET /`` the page; ``GET /static/...`` its script and style sheet.
- ``GET /api/info``: the run (model, labels and their colours), the upload limit, the accepted inputs.
- ``POST /api/predict``: the file as the request body (``?name=`` the client's file name, for messages and download
  names only) or as the one file of a ``multipart/form-data`` form. Answers the result (:func:`_summary`) or
  ``{"error": "..."}`` with 400 (a file that cannot be read or does not fit the run), 413 (too large) or 415 (not an
  accepted type).
- ``GET /api/results/{token}``, ``.../slices/{k}/image.png``, ``.../slices/{k}/mask.png``,
  ``.../download/{format}`` and ``DELETE /api/results/{token}``.

Every upload gets its own :class:`tempfile.TemporaryDirectory`; it is removed when the upload fails, when its result
is deleted or pushed out by newer ones (``max_results``), and at shutdown. Results are addressed by a random token,
never by a path. The model is loaded once by the caller; predictions run one at a time in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from attnseg.data.dicom_out import require_dicom_libraries
from attnseg.data.io import ImageReadError
from attnseg.errors import AttnsegError
from attnseg.inference.predictor import PredictionInput, Predictor
from attnseg.serve.render import Display, color_of, display_stack, label_sizes, mask_rgba, png_bytes
from attnseg.serve.uploads import (
    ACCEPTED,
    SNIFF_BYTES,
    SUFFIXES,
    UploadError,
    ZipLimits,
    display_name,
    download_stem,
    extract_dicom_zip,
    sniff,
)

__all__ = ["create_app"]

log = logging.getLogger("attnseg.serve")

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)  # the page loads nothing from elsewhere
_DOWNLOAD_SUFFIXES = {"nifti": "_mask.nii.gz", "png": "_mask.png", "dicom-seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm"}
_MEDIA_TYPES = {"nifti": "application/gzip", "png": "image/png", "dicom-seg": "application/dicom"}
_MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around the file


@dataclass
class _Result:
    token: str
    folder: tempfile.TemporaryDirectory
    display: Display
    downloads: dict[str, tuple[Path, str]]  # format -> (file, download name)
    summary: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.folder.cleanup()


class _Results:
    """The latest results by token; the oldest are removed (with their folders) beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(int(capacity), 1)
        self._items: OrderedDict[str, _Result] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, result: _Result) -> None:
        with self._lock:
            self._items[result.token] = result
            evicted = [self._items.popitem(last=False)[1] for _ in range(len(self._items) - self.capacity)]
        for old in evicted:
            old.close()

    def get(self, token: str) -> _Result:
        with self._lock:
            result = self._items.get(token)
        if result is None:
            raise UploadError(
                "this result is no longer on the server (deleted, replaced or restarted); upload again", 404
            )
        return result

    def remove(self, token: str) -> bool:
        with self._lock:
            result = self._items.pop(token, None)
        if result is not None:
            result.close()
        return result is not None

    def close_all(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        for result in items:
            result.close()


def create_app(
    predictor: Predictor,
    *,
    max_upload_mb: float = 512.0,
    max_voxels: int = 2**29,
    work_dir: str | Path | None = None,
    max_results: int = 8,
    zip_limits: ZipLimits | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The viewer application around ``predictor`` (loaded once, e.g. by :func:`attnseg.inference.predictor.load_run`).

    Args:
        max_upload_mb: the largest upload accepted (bigger: HTTP 413).
        max_voxels: the largest NIfTI accepted, in voxels per channel, read from its header before its data.
        work_dir: where the per-upload temporary folders are made (default: the system's temporary folder).
        max_results: results kept on the server; older ones are deleted with their files.
        zip_limits: what a zipped DICOM series may unpack to (:class:`~attnseg.serve.uploads.ZipLimits`).
        allowed_hosts: ``Host`` headers accepted (a page elsewhere cannot reach a loopback server through its own
            domain name: DNS rebinding); None accepts any.
    """
    max_bytes = int(max_upload_mb * 2**20)
    limits = zip_limits or ZipLimits(max_total_bytes=max(4 * max_bytes, 2**30))
    results = _Results(max_results)
    predict_lock = threading.Lock()
    names = dict(predictor.label_names)
    classes = max(predictor.num_classes, 2)
    ct = "ct" in predictor.plan.channel_kinds
    static = Path(str(files("attnseg.serve") / "static"))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        results.close_all()  # at shutdown no upload stays on disk

    app = FastAPI(title="attnseg serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.results = results
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        legend = []
        for value in range(1, classes):
            r, g, b = color_of(value)
            legend.append(
                {"value": value, "name": names.get(value, f"label {value}"), "color": f"#{r:02x}{g:02x}{b:02x}"}
            )
        return {
            "run": predictor.run_name,
            "model": predictor.model_name,
            "labels": legend,
            "data": "volumes" if predictor.plan.data_is_3d else "2D images",
            "channels": list(predictor.plan.channel_kinds),
            "max_upload_bytes": max_bytes,
            "accepted": ACCEPTED,
        }

    @app.post("/api/predict")
    async def predict(request: Request, name: str = "") -> JSONResponse:
        folder = tempfile.TemporaryDirectory(prefix="attnseg-serve-", dir=work_dir)
        work = Path(folder.name)
        try:
            shown, raw = await _receive(request, work, name, max_bytes)
            result = await run_in_threadpool(_predict_upload, raw, shown, folder)
        except BaseException:
            folder.cleanup()  # a refused or failed upload leaves nothing behind
            raise
        results.add(result)
        return JSONResponse(result.summary)

    def _predict_upload(raw: Path, shown: str, folder: tempfile.TemporaryDirectory) -> _Result:
        start = time.perf_counter()
        work = Path(folder.name)
        with open(raw, "rb") as fh:
            kind = sniff(fh.read(SNIFF_BYTES))
        if kind is None:
            raise UploadError(f"{shown}: is not {ACCEPTED} (judged by its content, not its name)", 415)
        if kind == "zip":
            series = work / "series"
            extract_dicom_zip(raw, series, shown, limits)
            raw.unlink()
            item = PredictionInput("mask", [series], is_dicom=True)
        else:
            path = raw.rename(work / f"upload{SUFFIXES[kind]}")
            if kind.startswith("nifti"):
                _check_nifti_header(path, shown, max_voxels)
            item = PredictionInput("mask", [path])
        try:
            with predict_lock:
                image, meta, _, labels = predictor.predict_item(item)
                if meta.ndim == 2 and predictor.plan.data_is_3d:
                    raise UploadError(f"{shown}: is a 2D image, but the run was trained on volumes")
                formats = ["nifti"] if meta.ndim == 3 else ["png", "nifti"]
                paths = predictor.output_paths(item, work / "out", formats=formats)
                predictor.write_masks(item, labels, meta, paths)
                unavailable = {}
                for fmt in ("dicom-seg", "rtstruct") if item.is_dicom else ():
                    try:  # a DICOM output the series cannot have is named on the page; the others still download
                        require_dicom_libraries(fmt)
                        path = predictor.output_paths(item, work / "out", formats=[fmt])[fmt]
                        predictor.write_masks(item, labels, meta, {fmt: path})
                    except AttnsegError as exc:
                        unavailable[fmt] = _hide(str(exc), work, shown)
                    else:
                        formats.append(fmt)
                        paths[fmt] = path
        except ImageReadError as exc:
            problem = _hide(exc.problem, work, shown)
            if item.is_dicom:  # the reader's advice is for folders; here the folder is the zip
                problem = problem.replace("folder holds", "holds").replace(
                    "put each series in its own folder", "zip one"
                )
            raise UploadError(f"{shown}: {problem}") from None
        except UploadError:
            raise
        except AttnsegError as exc:
            raise UploadError(_hide(str(exc), work, shown)) from None
        display = display_stack(image, labels, meta, ct=ct)
        stem = download_stem(shown)
        downloads = {fmt: (paths[fmt], stem + _DOWNLOAD_SUFFIXES[fmt]) for fmt in formats}
        token = secrets.token_urlsafe(18)
        unit, sizes = label_sizes(labels, meta, names, classes)
        seconds = time.perf_counter() - start
        summary = {
            "token": token,
            "name": shown,
            "input": "dicom" if item.is_dicom else kind,
            "kind": "volume" if meta.ndim == 3 else "image",
            "shape": list(labels.shape),
            "spacing": [float(s) for s in meta.spacing],
            "unit": unit,
            "labels": [
                {"value": s.value, "name": s.name, "color": s.color, "voxels": s.voxels, "size": s.size} for s in sizes
            ],
            "slices": display.slices,
            "slice": display.busiest_slice(),
            "display_shape": list(display.labels.shape[1:]),  # rows, columns of a shown slice
            "pixel_mm": list(display.pixel_mm),
            "downloads": [
                {"format": fmt, "filename": filename, "url": f"/api/results/{token}/download/{fmt}"}
                for fmt, (_, filename) in downloads.items()
            ],
            "unavailable": unavailable,
            "seconds": round(seconds, 3),
        }
        log.info("%s: %s %s predicted in %.1f s", shown, summary["input"], "x".join(map(str, labels.shape)), seconds)
        return _Result(token, folder, display, downloads, summary)

    @app.get("/api/results/{token}")
    async def result(token: str) -> JSONResponse:
        return JSONResponse(results.get(token).summary)

    @app.get("/api/results/{token}/slices/{index}/{layer}.png")
    async def slice_png(token: str, index: int, layer: str) -> Response:
        display = results.get(token).display
        if not 0 <= index < display.slices or layer not in ("image", "mask"):
            raise UploadError(f"no {layer} slice {index} (the result has slices 0..{display.slices - 1})", 404)
        array = display.image[index] if layer == "image" else mask_rgba(display.labels[index])
        data = await run_in_threadpool(png_bytes, array)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/results/{token}/download/{fmt}")
    async def download(token: str, fmt: str) -> FileResponse:
        found = results.get(token).downloads.get(fmt)
        if found is None:
            raise UploadError(f"no {fmt!r} download for this result", 404)
        path, filename = found
        return FileResponse(path, media_type=_MEDIA_TYPES.get(fmt, "application/octet-stream"), filename=filename)

    @app.delete("/api/results/{token}")
    async def delete(token: str) -> dict[str, bool]:
        return {"deleted": results.remove(token)}

    return app


async def _receive(request: Request, work: Path, name: str, max_bytes: int) -> tuple[str, Path]:
    """Store the request's file as ``work/received``, counting bytes against ``max_bytes``: ``(shown name, path)``."""
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    shown = display_name(name)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + (_MULTIPART_SLACK if multipart else 0):
        raise UploadError(_too_large(shown, int(length), max_bytes), 413)
    raw = work / "received"
    size = 0
    with open(raw, "xb") as out:
        if multipart:
            if length is None:
                raise UploadError("a multipart upload needs a Content-Length header", 411)
            form = await request.form(max_files=1, max_fields=8)
            try:
                upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
                if upload is None:
                    raise UploadError("the form holds no file; send the image as its one file field")
                shown = display_name(upload.filename or name)
                while chunk := await upload.read(2**20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadError(_too_large(shown, size, max_bytes), 413)
                    out.write(chunk)
            finally:
                await form.close()
        else:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise UploadError(_too_large(shown, size, max_bytes), 413)
                out.write(chunk)
    if size == 0:
        raise UploadError(f"{shown}: the file is empty")
    return shown, raw


def _too_large(shown: str, size: int, max_bytes: int) -> str:
    over = "more than " if size > max_bytes else ""
    return (
        f"{shown}: {over}{size / 2**20:.1f} MB is above the upload limit of {max_bytes / 2**20:g} MB "
        "(attnseg serve --max-upload-mb)"
    )


def _check_nifti_header(path: Path, shown: str, max_voxels: int) -> None:
    """Read a NIfTI header with nibabel (not the data) and refuse a file that is none or too large."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = tuple(int(n) for n in image.shape)
    except Exception as exc:  # nibabel raises many types for a file that is no NIfTI
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UploadError(f"{shown}: not a readable NIfTI file ({type(exc).__name__}: {reason})") from None
    voxels = int(np.prod(shape[:3], dtype=np.int64))
    if voxels > max_voxels:
        raise UploadError(f"{shown}: {'x'.join(map(str, shape))} voxels, above the limit of {max_voxels}", 413)


def _hide(message: str, work: Path, shown: str) -> str:
    """A message without the server's folder: paths inside ``work`` read as the client's file name."""
    for inside in sorted((str(p) for p in [*work.rglob("*"), work]), key=len, reverse=True):
        message = message.replace(inside, shown)
    return message
