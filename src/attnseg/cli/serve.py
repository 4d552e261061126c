"""``attnseg serve``."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["serve_command"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


# the docstring is --help in rich markup: a raw string, so \[serve] prints as [serve]
def serve_command(
    runs: list[Path] = typer.Option(
        ...,
        "--run",
        "-r",
        help="Run directory written by `attnseg train` (repeat it for an ensemble, as `attnseg predict`).",
    ),
    port: int = typer.Option(8000, help="TCP port of the page (http://HOST:PORT/)."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on. The default is this machine only; the page has no login."
    ),
    checkpoint: str = typer.Option("best", help="best | last."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="Largest upload accepted, in MB."),
) -> None:
    r"""A local web page to segment an image with a trained run: drop in a PNG/JPEG, a NIfTI volume or a zipped
    DICOM series; see the prediction over the image (slice and opacity sliders), each label's volume (ml) or area
    (mm^2), and download the mask (NIfTI, PNG; DICOM SEG and RT Structure Set for a DICOM series). Needs
    ``pip install "attnseg\[serve]"``. Uploads go to a temporary folder per upload, removed when replaced and
    at exit."""
    import socket

    from attnseg.cli.main import fail
    from attnseg.config import ConfigError
    from attnseg.serve import ServeDependencyError, require_serve_libraries

    try:
        require_serve_libraries()  # before the model loads: a missing extra is said at once
    except ServeDependencyError as exc:
        fail(str(exc))
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint must be best or last, got {checkpoint!r}")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: must be between 1 and 65535")
    if not max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb {max_upload_mb:g}: must be positive")
    if len(set(runs)) < len(runs):
        raise ConfigError("--run: the same run directory is given twice")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:  # a taken port is said before the model loads
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None

    import logging

    import uvicorn
    from rich.console import Console

    from attnseg.inference.predictor import load_run
    from attnseg.serve.app import create_app

    predictor = load_run(runs[0] if len(runs) == 1 else runs, checkpoint=checkpoint, device=device)
    loopback = host in _LOOPBACK
    # Host header check against DNS rebinding; starlette cannot parse an IPv6 Host header, so not for ::1
    allowed = ["127.0.0.1", "localhost"] if host in ("127.0.0.1", "localhost") else None
    app = create_app(predictor, max_upload_mb=max_upload_mb, allowed_hosts=allowed)
    console = Console(stderr=True, highlight=False)
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"attnseg viewer of {', '.join(str(r) for r in runs)}: [bold]http://{shown}:{port}/[/] (Ctrl-C stops)"
    )
    if not loopback:
        console.print(f"[yellow]warning:[/] listening on {host}: anyone who reaches this address can use the page")
    logging.basicConfig(level=logging.INFO, format="%(levelname)-9s %(message)s")  # the server's lines, as uvicorn's
    uvicorn.run(app, host=host, port=port, log_level="info")
