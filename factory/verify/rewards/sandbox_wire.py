"""What crosses a process boundary of the sandbox: framed messages and the strict plain-data codec.

A leaf module: it imports nothing of `factory` and only builtin/stdlib modules, because it also runs inside the
sandbox (the zygote loads it under the plain name `sandbox_wire`).

Frames: a 4-byte big-endian length, then the body. Trusted → untrusted messages (the parent's or the harness's
instructions to a confined program) are `marshal`; untrusted → trusted messages (a candidate's return values) are
JSON text of the tagged tree below, read back by `decode`, which builds exact builtin objects only: whatever bytes a
candidate sends, what reaches a comparison is made of int, float, bool, str, bytes, None, list, tuple, dict, set,
frozenset and complex built here, never an object the candidate made (no `__eq__` of its own can take part).

Encoding (`encode`) accepts exactly those types (`type(x) is int`, not `isinstance`: a subclass of int/str/list that
lies is rejected) and refuses cycles, depth over MAX_DEPTH and more than MAX_ITEMS objects.
"""
from __future__ import annotations

import json
import math
import select
import struct
import time

COMPILE_ERROR_EXIT = 97  # exit status meaning: the Python program did not compile
CONFINE_ERROR_EXIT = 96  # exit status meaning: confinement could not be set up (nothing untrusted ran)
MAX_DEPTH = 100
MAX_ITEMS = 5_000_000
MAX_REPLY_BYTES = 32 << 20  # a candidate's reply (one return value) larger than this is refused


class WireError(ValueError):
    """A message could not be framed, encoded or decoded (the verdict is then a failure, never a pass)."""


class WireTimeout(WireError):
    pass


class WireClosed(WireError):
    pass


# --- the strict codec ----------------------------------------------------------------------------------------
_SCALARS = (str, int, float, bool, type(None))
_TAGS = {list: "l", tuple: "t", set: "s", frozenset: "z", dict: "d", bytes: "b", complex: "c"}


def _enc(x, depth: int, seen: list) -> object:  # depth counts down
    t = type(x)
    if t is int and -(1 << 53) < x < (1 << 53):
        return x
    if t is int:
        return ["i", format(x, "x")]
    if t is float and not math.isfinite(x):
        return ["f", repr(x)]
    if t in _SCALARS:
        return x
    tag = _TAGS.get(t)
    if tag is None:
        raise WireError(f"a {t.__module__}.{t.__qualname__} is not a plain builtin value")
    if tag == "b":
        return ["b", x.hex()]
    if tag == "c":
        return ["c", _enc(x.real, depth, seen), _enc(x.imag, depth, seen)]
    if depth <= 0:
        raise WireError("nested too deeply")
    seen[0] += len(x)
    if seen[0] > MAX_ITEMS:
        raise WireError(f"more than {MAX_ITEMS} items")
    if tag == "d":
        out: list = ["d"]
        for k, v in x.items():
            out.append(_enc(k, depth - 1, seen))
            out.append(_enc(v, depth - 1, seen))
        return out
    return [tag, *(_enc(v, depth - 1, seen) for v in x)]


def encode(value, max_depth: int = MAX_DEPTH) -> bytes:
    """Plain data → JSON bytes (tagged); WireError for anything else."""
    try:
        text = json.dumps(_enc(value, max_depth, [0]), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8", "surrogatepass")
    except RecursionError as exc:
        raise WireError("nested too deeply") from exc


def _dec(x, depth: int):
    t = type(x)
    if t in _SCALARS:
        return x
    if t is not list or not x or type(x[0]) is not str or depth > 2 * MAX_DEPTH:
        raise WireError("malformed value")
    tag, items = x[0], x[1:]
    if tag == "i" and len(items) == 1 and type(items[0]) is str:
        return int(items[0], 16)
    if tag == "f" and items in (["inf"], ["-inf"], ["nan"]):
        return float(items[0])
    if tag == "b" and len(items) == 1 and type(items[0]) is str:
        return bytes.fromhex(items[0])
    if tag == "c" and len(items) == 2:
        re_, im = _dec(items[0], depth + 1), _dec(items[1], depth + 1)
        if type(re_) is not float or type(im) is not float:
            raise WireError("malformed complex")
        return complex(re_, im)
    vals = [_dec(v, depth + 1) for v in items]
    if tag == "l":
        return vals
    if tag == "t":
        return tuple(vals)
    if tag == "s":
        return set(vals)
    if tag == "z":
        return frozenset(vals)
    if tag == "d" and len(vals) % 2 == 0:
        return dict(zip(vals[0::2], vals[1::2]))
    raise WireError(f"unknown tag {tag[:20]!r}")


def decode(data: bytes):
    """JSON bytes from an untrusted process → exact builtin objects; WireError when malformed."""
    try:
        return _dec(json.loads(data.decode("utf-8", "surrogatepass")), 0)
    except WireError:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed reply: {type(exc).__name__}") from exc


# --- frames over a socket ------------------------------------------------------------------------------------
def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def send(sock, body: bytes) -> None:
    sock.sendall(frame(body))


def _read_exact(sock, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise WireTimeout("no reply in time")
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise WireClosed("the other side closed the channel")
        buf += chunk
    return bytes(buf)


def recv(sock, cap: int = MAX_REPLY_BYTES, deadline: float | None = None) -> bytes:
    """One frame; WireTimeout past `deadline` (monotonic), WireClosed at EOF, WireError when over `cap`."""
    (n,) = struct.unpack(">I", _read_exact(sock, 4, deadline))
    if n > cap:
        raise WireError(f"a message of {n} bytes is over the {cap}-byte limit")
    return _read_exact(sock, n, deadline)


def split_frames(data: bytes) -> list[bytes]:
    """Complete frames in a buffer collected by the parent (an incomplete tail is ignored)."""
    out, i = [], 0
    while i + 4 <= len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        if i + 4 + n > len(data):
            break
        out.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return out
