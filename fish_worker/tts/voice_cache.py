"""Bounded in-memory cache of encoded reference voices, keyed by a hash of the audio bytes."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch


class VoiceCodesCache:
    def __init__(self, max_items: int):
        self.max_items = max_items
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0  # reused encodings (read by tests and for debugging)

    @staticmethod
    def key(reference: bytes) -> str:
        return hashlib.sha256(reference).hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            codes = self._items.get(key)
            if codes is None:
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return codes

    def put(self, key: str, codes: torch.Tensor) -> None:
        if self.max_items == 0:
            return
        with self._lock:
            self._items[key] = codes
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
