"""The node's structured log: one JSON object per line, UIDs, statuses and timings only (never a
patient attribute)."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any


class EventLog:
    """Writes ``{"time": ..., "event": ..., **fields}`` lines to a stream, one whole line at a time."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
