"""A write-only gzip stream whose deflate blocks are *stored* (RFC 1951 block type 0).

Every gzip reader (nibabel, ITK/ANTs, FSL, ``gunzip``) reads it; writing costs a CRC and a copy
to the file. Used for data that does not compress: float32 displacement fields at 1 mm shrink
by 0-16 % at gzip level 1, for ~0.3 s of CPU a warp (docs/benchmarks.md, issue 12).
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

try:  # ISA-L's CRC-32: a few times faster than zlib's
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency
    from zlib import crc32

#: the largest stored block (its length field is 16 bits)
BLOCK = 65535
_HEADER = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"  # deflate, no name, mtime 0, OS unknown


class StoredGzipWriter(io.IOBase):
    """``write`` / ``tell`` / forward ``seek`` over a binary file ``raw`` (left open on close):
    what nibabel needs to write an image into it."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._raw = raw
        self._crc = 0
        self._size = 0
        self._tail = b""  # bytes not yet in a full block
        raw.write(_HEADER)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _block(self, data, final: bool = False) -> None:
        n = len(data)
        self._raw.write(struct.pack("<BHH", 1 if final else 0, n, n ^ 0xFFFF))
        self._raw.write(data)

    def write(self, data) -> int:
        self._checkClosed()
        view = memoryview(data).cast("B")
        n = len(view)
        self._crc = crc32(view, self._crc)
        self._size += n
        start = 0
        if self._tail:
            start = min(n, BLOCK - len(self._tail))
            self._tail += bytes(view[:start])
            if len(self._tail) < BLOCK:
                return n
            self._block(self._tail)
            self._tail = b""
        while n - start >= BLOCK:
            self._block(view[start : start + BLOCK])
            start += BLOCK
        self._tail = bytes(view[start:])
        return n

    def tell(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = 0) -> int:
        """Forward only (zeros fill the gap), as a compressing stream."""
        target = offset if whence == 0 else self._size + offset
        if whence not in (0, 1) or target < self._size:
            raise OSError("StoredGzipWriter seeks forward only")
        if target > self._size:
            self.write(bytes(target - self._size))
        return self._size

    def close(self) -> None:
        """Write the last (final) block and the CRC/size trailer; ``raw`` stays open."""
        if self.closed:
            return
        self._block(self._tail, final=True)
        self._tail = b""
        self._raw.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        super().close()


__all__ = ["StoredGzipWriter", "BLOCK"]
