"""Socketless ("simulated") connections of the gateway emulator, for load tests of 100k+ connections.

A registered id is live for the `@connections` API; a post to it counts a frame instead of sending one.
Counts are compact: an id maps to an index; per-id totals live in an `array('I')`, and per broadcast
a `bytearray` (one saturating byte per id) tells how many ids got that broadcast once, and more than once.
Attribution reads only the `broadcastId` field near the start of the envelope
`{"type":"broadcast","broadcastId":"...","sentAt":...,"data":...}` (a bounded `bytes.find`, no JSON parse).
"""

from __future__ import annotations

from array import array
from typing import Any

_BID_KEY = b'"broadcastId"'
_BID_WINDOW = 256  # the envelope puts broadcastId in its first few dozen bytes


def broadcast_id_of(frame: bytes) -> str | None:
    """The envelope's broadcastId, read without parsing the frame; None when the frame is not an envelope."""
    i = frame.find(_BID_KEY, 0, _BID_WINDOW)
    if i < 0:
        return None
    start = frame.find(b'"', i + len(_BID_KEY), i + len(_BID_KEY) + 8)
    if start < 0:
        return None
    end = frame.find(b'"', start + 1, start + 130)
    if end < 0:
        return None
    try:
        return frame[start + 1 : end].decode()
    except UnicodeDecodeError:
        return None


class SimulatedConnections:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._index: dict[str, int] = {}
        self._live = bytearray()
        self._counts = array("I")
        self._per_broadcast: dict[str, bytearray] = {}
        self._broadcast_frames: dict[str, int] = {}
        self.frames = 0
        self.unattributed = 0

    def register(self, ids: list[str]) -> int:
        """Register ids as live connections (again, if deleted); returns how many were new."""
        added = 0
        index = self._index
        for cid in ids:
            i = index.get(cid)
            if i is None:
                index[cid] = len(self._live)
                self._live.append(1)
                self._counts.append(0)
                added += 1
            else:
                self._live[i] = 1
        return added

    @property
    def registered(self) -> int:
        return len(self._index)

    def lookup(self, cid: str) -> int | None:
        """The index of a live simulated id, else None."""
        i = self._index.get(cid)
        if i is None or not self._live[i]:
            return None
        return i

    def is_known(self, cid: str) -> bool:
        return cid in self._index

    def delete(self, cid: str) -> bool:
        i = self.lookup(cid)
        if i is None:
            return False
        self._live[i] = 0
        return True

    def record(self, i: int, broadcast_id: str | None) -> None:
        """Count one frame delivered to index `i`."""
        self.frames += 1
        counts = self._counts
        if counts[i] < 0xFFFFFFFF:
            counts[i] += 1
        if broadcast_id is None:
            self.unattributed += 1
            return
        per = self._per_broadcast.get(broadcast_id)
        if per is None:
            per = self._per_broadcast[broadcast_id] = bytearray(len(self._live))
            self._broadcast_frames[broadcast_id] = 0
        elif i >= len(per):
            per.extend(bytes(len(self._live) - len(per)))
        if per[i] < 255:
            per[i] += 1
        self._broadcast_frames[broadcast_id] += 1

    def frames_of(self, cid: str) -> int:
        i = self._index.get(cid)
        return 0 if i is None else int(self._counts[i])

    def stats(self) -> dict[str, Any]:
        counts = self._counts
        zero_ids, one_ids = counts.count(0), counts.count(1)
        with_frames = len(counts) - zero_ids
        multiple = with_frames - one_ids
        broadcasts: dict[str, Any] = {}
        for bid, per in self._per_broadcast.items():
            zero, one = per.count(0), per.count(1)
            # ids registered after the broadcast's first frame are missing from `per`: none got it.
            broadcasts[bid] = {
                "frames": self._broadcast_frames[bid],
                "ids": len(per) - zero,
                "duplicates": len(per) - zero - one,
            }
        return {
            "registered": len(self._index),
            "live": self._live.count(1),
            "frames": self.frames,
            "idsWithFrames": with_frames,
            "idsWithMultipleFrames": multiple,
            "unattributedFrames": self.unattributed,
            "broadcasts": broadcasts,
        }
