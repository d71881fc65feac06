"""``cxr-edge serve-dicom``: a DICOM node that receives chest radiographs, infers, and forwards
the results (Secondary Captures + Structured Report) to PACS destinations. A thin layer over
``cxr_edge.dicom_node.node.DicomNode``."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from cxr_edge.commands.common import one_line_errors


def register(app: typer.Typer) -> None:
    """Add ``serve-dicom`` to the app."""

    @app.command("serve-dicom")
    def serve_dicom(
        forward: Annotated[
            list[str],
            typer.Option(
                "--forward",
                metavar="AE@HOST:PORT",
                help="Destination for the results (repeat for several), e.g. PACS@127.0.0.1:4242.",
            ),
        ],
        spool: Annotated[
            Path, typer.Option("--spool", help="Spool folder: received images and results until delivered.")
        ],
        ae_title: Annotated[str, typer.Option("--ae-title", help="This node's AE title.")] = "CXREDGE",
        port: Annotated[int, typer.Option("--port", help="DICOM port to listen on.")] = 11112,
        bind: Annotated[
            str, typer.Option("--bind", help="Address to listen on (default: this machine only).")
        ] = "127.0.0.1",
        model: Annotated[
            Path | None,
            typer.Option("--model", help="ONNX model or TensorRT engine (default: the bundled demo model)."),
        ] = None,
        steps: Annotated[
            int, typer.Option("--steps", "-s", help="Shifts per patch side S (power of two, 1..64).")
        ] = 8,
        spool_max_mb: Annotated[
            int,
            typer.Option(
                "--spool-max-mb",
                min=1,
                help="Spool bound; images beyond it are refused (status A700, retry later).",
            ),
        ] = 2048,
        threads: Annotated[
            int | None, typer.Option("--threads", min=1, help="CPU threads (default: all).")
        ] = None,
        retry_max_s: Annotated[
            float,
            typer.Option("--retry-max-s", min=0.01, help="Longest wait between retries of a destination."),
        ] = 60.0,
    ) -> None:
        """Receive CR/DX chest radiographs (C-STORE), infer, and C-STORE a Secondary Capture per
        reported finding's overlay and a Structured Report of all findings to every --forward
        destination, into the image's study.

        Answers C-ECHO. Out-of-scope objects (other SOP classes, other body parts, lateral views)
        get a failure status with the reason; an image is answered "stored" only once it is
        durably in the spool, which survives restarts (also kill -9) and is resumed at start.
        Prints one JSON line per object (UIDs, statuses, timings; no patient data). SIGTERM or
        Ctrl-C: finish the image in hand, then exit.
        """
        from cxr_edge.dicom_node.destinations import parse_destination
        from cxr_edge.dicom_node.node import DicomNode, NodeConfig
        from cxr_edge.pipeline import CxrEdge
        from cxr_edge.tile import check_steps

        with one_line_errors():
            config = NodeConfig(
                spool=spool,
                destinations=tuple(parse_destination(d) for d in forward),
                ae_title=ae_title,
                bind=bind,
                port=port,
                steps=check_steps(steps),
                spool_max_bytes=spool_max_mb * 1024**2,
                retry_max_s=retry_max_s,
            )
            node = DicomNode(config, CxrEdge.load(model, threads=threads))

            def stop(signum: int, frame: FrameType | None) -> None:
                node.request_stop()

            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            node.serve()
