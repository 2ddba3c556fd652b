"""Appending to Redis Streams through the publisher's ``redis`` grant.

The operator grants a publisher a Redis server and the stream names it may write to
(``[publishers.<name>.grants] redis = { host, port, streams = ["tenant-a:*"] }``); the
backend never sees the address or the password. A failed call raises :class:`Transient`
when Redis is unavailable (worth retrying) and :class:`Permanent` for everything else (no
grant, a stream outside the grant, a command Redis rejected), so a ``publish`` that lets
the exception escape reports the right kind of error. ``error.cause`` holds the WIT error.
"""

import json
from typing import Iterable, List, Optional, Tuple, Union

from componentize_py_types import Err, Ok
from wit_world.imports import redis_stream as _raw
from wit_world.imports.redis_stream import (
    Error,
    Error_NotGranted,
    Error_Rejected,
    Error_StreamDenied,
    Error_Unavailable,
    XaddEntry,
)

from .errors import Permanent, PublishError, Transient

__all__ = ["BATCH_BYTES", "BATCH_ENTRIES", "Error", "XaddEntry", "describe", "ping", "ping_ok", "xadd", "xadd_batch"]

#: The most entries :func:`xadd_batch` passes in one host call (the host's default
#: ``limits.xadd_batch_entries``).
BATCH_ENTRIES = 1000
#: The most bytes (stream names, field names and values) :func:`xadd_batch` passes in one host
#: call (the host's default ``limits.xadd_batch_bytes``).
BATCH_BYTES = 16 << 20


def describe(err: Error) -> str:
    """A sentence for people: what went wrong."""
    if isinstance(err, Error_NotGranted):
        return "this publisher has no `redis` grant"
    if isinstance(err, Error_StreamDenied):
        return f"stream {json.dumps(err.value, ensure_ascii=False)} is outside the streams granted to this publisher"
    if isinstance(err, Error_Unavailable):
        return f"Redis is unavailable: {err.value}"
    if isinstance(err, Error_Rejected):
        return f"Redis rejected the entry: {err.value}"
    return f"Redis error: {err!r}"


def _failure(err: Error) -> PublishError:
    kind = Transient if isinstance(err, Error_Unavailable) else Permanent
    failure = kind(describe(err))
    failure.cause = err
    return failure


def xadd(stream: str, fields: Iterable[Tuple[str, str]], max_len: Optional[int] = None) -> str:
    """``XADD <stream> [MAXLEN ~ <max_len>] * <fields…>``; returns the new entry's id.

    Fields are written in the order given. Raises :class:`Transient` or :class:`Permanent`.
    """
    try:
        return _raw.xadd(stream, [(str(k), str(v)) for k, v in fields], max_len)
    except Err as err:
        raise _failure(err.value) from None


def xadd_batch(
    entries: Iterable[Tuple[str, Iterable[Tuple[str, str]], Optional[int]]],
) -> List[Union[str, PublishError]]:
    """Appends ``(stream, fields, max_len)`` entries in as few round trips as the host allows:
    one ``xadd-batch`` (a pipeline of ``XADD``s) per :data:`BATCH_ENTRIES` entries or
    :data:`BATCH_BYTES` bytes. Returns one item per entry, in order: its id, or the
    :class:`Transient`/:class:`Permanent` error (returned, not raised) that kept it out (a
    stream outside the grant fails only its entry; Redis unavailable fails every entry of the
    round trip). When the host refuses a round trip as too large (its limits set lower than
    these), its entries are appended one ``xadd`` at a time instead.
    """
    pending = [
        XaddEntry(str(stream), [(str(k), str(v)) for k, v in fields], max_len) for stream, fields, max_len in entries
    ]
    results: List[Union[str, PublishError]] = []
    start = 0
    while start < len(pending):
        end, size = start, 0
        while end < len(pending) and end - start < BATCH_ENTRIES:
            entry = pending[end]
            # Bytes as the host counts them: UTF-8.
            entry_size = len(entry.stream.encode()) + sum(len(k.encode()) + len(v.encode()) for k, v in entry.fields)
            if end > start and size + entry_size > BATCH_BYTES:
                break
            end, size = end + 1, size + entry_size
        chunk = pending[start:end]
        try:
            replies = _raw.xadd_batch(chunk)
            results.extend(r.value if isinstance(r, Ok) else _failure(r.value) for r in replies)
        except Err as err:
            if isinstance(err.value, Error_Rejected) and len(chunk) > 1:
                for entry in chunk:
                    try:
                        results.append(_raw.xadd(entry.stream, entry.fields, entry.max_len))
                    except Err as one:
                        results.append(_failure(one.value))
            else:
                results.extend(_failure(err.value) for _ in chunk)
        start = end
    return results


def ping() -> None:
    """``PING`` the granted Redis. Raises :class:`Transient` or :class:`Permanent`."""
    try:
        _raw.ping()
    except Err as err:
        raise _failure(err.value) from None


def ping_ok() -> bool:
    """Whether the granted Redis answers ``PING``: a ready-made ``health_check``."""
    try:
        _raw.ping()
        return True
    except Err:
        return False
