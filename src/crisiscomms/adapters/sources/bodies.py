"""Decoding a body we stream ourselves, with a hard output cap (gzip bombs end at the cap)."""

from __future__ import annotations

import zlib


class BodyDecoder:
    """Incremental identity/gzip/deflate decoder with a hard output cap.

    httpx's own decoders inflate a whole network chunk at once (a 64 KiB chunk of a gzip
    bomb is ~64 MiB); ``zlib`` with ``max_length`` lets us stop at the cap instead.
    """

    def __init__(self, encoding: str) -> None:
        enc = encoding.strip().lower()
        self._mode = enc
        self._zlib: zlib._Decompress | None = None
        if enc in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._zlib = None  # decided on the first chunk: zlib-wrapped or raw
        elif enc not in ("", "identity"):
            raise ValueError(enc)
        self._first = True

    def decode(self, data: bytes, room: int) -> bytes:
        """Decode ``data``, producing at most ``room + 1`` bytes (one more means "over")."""
        if self._mode in ("", "identity"):
            return data[: room + 1]
        if self._zlib is None:
            # RFC 7230 "deflate" is zlib-wrapped; some servers send raw deflate.
            wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            raw = not wrapped
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        out = bytearray()
        pending = data
        while pending and len(out) <= room:
            out += self._zlib.decompress(pending, room + 1 - len(out))
            if self._zlib.eof:
                rest = self._zlib.unused_data
                if rest and self._mode != "deflate":  # concatenated gzip members
                    self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    pending = rest
                    continue
                break
            pending = self._zlib.unconsumed_tail
        return bytes(out)


