"""The states of videos the server has read, so a follow-up question about the same video does not re-read it.

A key is the sha256 of the video's bytes plus every read setting the state depends on (frames / fps, the text
read before the video); a value is the :class:`~aurora.infer.engine.VideoState`. The cache holds at most
``budget`` bytes of state tensors (a state's size is the bytes of its tensors, the last logits included) and
evicts the least recently used states first; a state larger than the whole budget is not kept. Answering leaves a
state untouched (the backbones return a new state), so one cached state serves any number of questions.
Thread-safe (one lock); the counters feed ``GET /v1/stats``.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any


def state_bytes(vs: Any) -> int:
    """Bytes of the tensors of a VideoState (its recurrent state and its logits)."""
    from aurora.infer.engine import flatten_state

    tensors, _ = flatten_state(vs.state)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    logits = getattr(vs, "logits", None)
    return total + (logits.numel() * logits.element_size() if hasattr(logits, "element_size") else 0)


def cache_key(digest: str, **settings: Any) -> str:
    """``digest`` (the video's sha256) + the read settings, as one string."""
    return digest + "|" + json.dumps(settings, sort_keys=True, default=str)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StateCache:
    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"the cache budget must be >= 0 bytes, got {budget}")
        self.budget = int(budget)
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.too_large = 0

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: str, vs: Any) -> bool:
        """Keep ``vs`` under ``key`` (evicting the least recently used to fit); False when it alone is over budget."""
        size = state_bytes(vs)
        with self._lock:
            if key in self._items:
                self.bytes -= self._items.pop(key)[1]
            if size > self.budget:
                self.too_large += 1
                return False
            while self._items and self.bytes + size > self.budget:
                _, (_, freed) = self._items.popitem(last=False)
                self.bytes -= freed
                self.evictions += 1
            self._items[key] = (vs, size)
            self.bytes += size
            return True

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._items), "bytes": self.bytes, "budget_bytes": self.budget, "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions, "too_large": self.too_large}
