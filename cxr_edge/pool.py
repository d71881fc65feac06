"""A thread-safe pool of costly, reusable objects by key (GPU postprocess buffers by S).

``take(key)`` hands out an idle object or makes one, so two concurrent users never share one;
``give(key, obj)`` puts it back for the next user; ``close()`` closes every idle object (and any
given back later). What is handed out is the taker's until it is given back or discarded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Pool(Generic[K, T]):
    """Idle objects per key. ``make(key)`` creates one; ``close_one(obj)`` releases one."""

    def __init__(self, make: Callable[[K], T], close_one: Callable[[T], None]) -> None:
        self._make = make
        self._close_one = close_one
        self._idle: dict[K, list[T]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.made = 0  # objects made so far (for tests and reports)

    def take(self, key: K) -> T:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
            self.made += 1
        return self._make(key)  # outside the lock: making one may take a while (cudaMalloc)

    def give(self, key: K, obj: T) -> None:
        with self._lock:
            if not self._closed:
                self._idle.setdefault(key, []).append(obj)
                return
        self._close_one(obj)  # the pool was closed while obj was out

    def discard(self, obj: T) -> None:
        """Close an object that must not be reused (its last use failed half way)."""
        self._close_one(obj)

    def idle(self, key: K) -> int:
        with self._lock:
            return len(self._idle.get(key, []))

    def close(self) -> None:
        """Close every idle object; objects given back afterwards are closed on return."""
        with self._lock:
            self._closed = True
            idle = [obj for objs in self._idle.values() for obj in objs]
            self._idle.clear()
        for obj in idle:
            self._close_one(obj)
