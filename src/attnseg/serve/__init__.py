"""``attnseg serve``: a local web page that segments an uploaded image with a trained run and shows the result.

:func:`attnseg.serve.app.create_app` builds the FastAPI application from a loaded
:class:`~attnseg.inference.predictor.Predictor`; :mod:`attnseg.serve.uploads` checks and stores uploads (file type by
content, size limits, safe zip extraction); :mod:`attnseg.serve.render` turns the image and its label map into slice
PNGs and per-label volumes. FastAPI, uvicorn and python-multipart are an optional extra (``pip install
"attnseg[serve]"``), imported only by :mod:`attnseg.serve.app`; docs/serve.md describes the page and its API.
"""

from __future__ import annotations

from attnseg.errors import AttnsegError

__all__ = ["INSTALL_HINT", "ServeDependencyError", "require_serve_libraries"]

INSTALL_HINT = 'attnseg serve needs: pip install "attnseg[serve]"'
# python-multipart is imported as python_multipart (>= 0.0.13) or multipart (older releases)
_LIBRARIES = (("fastapi",), ("uvicorn",), ("python_multipart", "multipart"))


class ServeDependencyError(AttnsegError):
    """The serve extra is not installed."""


def require_serve_libraries() -> None:
    """Raise :class:`ServeDependencyError` (one line: the install command) when the serve extra is missing."""
    from importlib.util import find_spec

    for names in _LIBRARIES:
        if not any(_installed(find_spec, name) for name in names):
            raise ServeDependencyError(INSTALL_HINT)


def _installed(find_spec, name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (tests) raises ValueError
        return False
