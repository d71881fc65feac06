"""``python -m cxr_edge ...`` is the ``cxr-edge`` command."""

from cxr_edge.cli import app

app(prog_name="cxr-edge")
