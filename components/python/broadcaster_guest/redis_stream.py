"""Appending to Redis Streams through the publisher's ``redis`` grant.

The operator grants a publisher a Redis server and the stream names it may write to
(``[publishers.<name>.grants] redis = { host, port, streams = ["tenant-a:*"] }``); the
backend never sees the address or the password. A failed call raises :class:`Transient`
when Redis is unavailable (worth retrying) and :class:`Permanent` for everything else (no
grant, a stream outside the grant, a command Redis rejected), so a ``publish`` that lets
the exception escape reports the right kind of error. ``error.cause`` holds the WIT error.
"""

import json
from typing import Iterable, Optional, Tuple

from componentize_py_types import Err
from wit_world.imports import redis_stream as _raw
from wit_world.imports.redis_stream import (
    Error,
    Error_NotGranted,
    Error_Rejected,
    Error_StreamDenied,
    Error_Unavailable,
)

from .errors import Permanent, PublishError, Transient

__all__ = ["Error", "describe", "ping", "ping_ok", "xadd"]


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
