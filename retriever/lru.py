"""A byte-bounded least-recently-used cache, shared by the explorer's thumbnails and plate vectors."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class SizedLRU:
    """Values by key within ``max_bytes`` (``sizeof`` of each value): the least recently used go first.

    The newest value is kept even when it alone is past the budget: the caller asked for it, and dropping
    it would only make the next request do the same work again.
    """

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = len) -> None:
        self.max_bytes = max_bytes
        self.sizeof = sizeof
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        """The cached value, or None (counted as a miss)."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value``, evicting the least recently used entries past the byte budget."""
        with self._lock:
            old = self._items.pop(key, None)
            self._size -= self.sizeof(old) if old is not None else 0
            self._items[key] = value
            self._size += self.sizeof(value)
            while self._size > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._size -= self.sizeof(dropped)

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._size
