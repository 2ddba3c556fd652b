"""Redacts fields of each event's JSON data, then writes the seed's stream entry.

Options (``[publishers.<name>.options]``):

- ``stream_name`` (required): the stream to append to; must be in the grant.
- ``paths`` (default ``[]``): the values to redact, as paths into ``data`` (syntax below).
- ``mode`` (default ``"mask"``): ``"mask"`` replaces each value with ``"***"``; ``"drop"``
  removes it (the key from its object, the element from its array).
- ``max_len`` (default ``10000``): trim the stream to about this many entries.

Path syntax: segments separated by ``.``, walked from the root of ``data``.

- a segment names an object key: ``customer.email``;
- ``*`` as a whole segment matches every key of an object and every element of an array:
  ``items.*.card``, ``*.password``;
- a segment of decimal digits (``0``, ``12``; no leading zeros) also picks that element of
  an array: ``items.0.card`` (on an object it is just the key ``"0"``);
- ``\\.``, ``\\*`` and ``\\\\`` stand for a literal dot, star and backslash inside a key:
  ``headers.x\\.api\\.key`` is the key ``x.api.key``; ``\\*`` is the key ``*``.

A path that does not exist in an event (or crosses a value that is not an object or an
array) redacts nothing. Empty paths and empty segments (``a..b``, ``.a``) are refused, and
so is a ``*`` inside a segment (``card*``): paths are not globs.

The redacted data is re-rendered with ``json.dumps``, which is what the host does, so an
event whose paths match nothing is written exactly as the ``redis-stream`` backend writes
it. Events whose data is text or binary (only possible with ``broadcaster send``) cannot be
redacted and fail permanently rather than being written unredacted.
"""

import re
from typing import Any, List, Union

import broadcaster_guest as bg

MASK = "***"
_INDEX = re.compile(r"0|[1-9][0-9]*")


class Wildcard:
    """The ``*`` segment."""

    def __repr__(self) -> str:
        return "*"


WILDCARD = Wildcard()
Segment = Union[str, Wildcard]


def parse_path(text: str) -> List[Segment]:
    """Splits a path into segments; raises ``ValueError`` saying what is wrong."""
    if not text:
        raise ValueError("a path cannot be empty")
    segments: List[Segment] = []
    current: List[str] = []
    bare_star = False  # the segment holds a `*` that was not escaped (`\*` is a literal)
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            if nxt not in (".", "*", "\\"):
                raise ValueError(f"{text!r}: `\\` must be followed by `.`, `*` or `\\`")
            current.append(nxt)
        elif ch == ".":
            segments.append(_segment(text, current, bare_star))
            current, bare_star = [], False
        else:
            bare_star = bare_star or ch == "*"
            current.append(ch)
    segments.append(_segment(text, current, bare_star))
    return segments


def _segment(text: str, chars: List[str], bare_star: bool) -> Segment:
    if not chars:
        raise ValueError(f"{text!r}: empty segment (two dots, or a dot at the start or end)")
    if bare_star:
        if chars != ["*"]:
            raise ValueError(f"{text!r}: `*` must be a whole segment (write `\\*` for a literal star)")
        return WILDCARD
    return "".join(chars)


def redact(node: Any, path: List[Segment], drop: bool) -> None:
    """Redacts, in place, every value of ``node`` that ``path`` reaches."""
    segment, rest = path[0], path[1:]
    if isinstance(node, dict):
        if segment is WILDCARD:
            keys = list(node)
        else:
            keys = [segment] if segment in node else []
        for key in keys:
            if rest:
                redact(node[key], rest, drop)
            elif drop:
                del node[key]
            else:
                node[key] = MASK
    elif isinstance(node, list):
        if segment is WILDCARD:
            indexes = list(range(len(node)))
        elif _INDEX.fullmatch(segment) and int(segment) < len(node):
            indexes = [int(segment)]
        else:
            indexes = []
        if rest:
            for i in indexes:
                redact(node[i], rest, drop)
        elif drop:
            for i in reversed(indexes):  # from the end, so the others keep their index
                del node[i]
        else:
            for i in indexes:
                node[i] = MASK


class Redact(bg.Publisher):
    def init(self, options: bg.Options) -> None:
        self.stream_name = options.string("stream_name")
        self.drop = options.choice("mode", ["mask", "drop"], "mask") == "drop"
        self.max_len = options.integer("max_len", 10_000)
        self.paths = []
        for i, text in enumerate(options.string_list("paths", [])):
            try:
                self.paths.append(parse_path(text))
            except ValueError as exc:
                raise options.error(f"paths[{i}]", str(exc)) from None

    def publish(self, event: bg.OutboxEvent) -> None:
        data = event.event.data
        if isinstance(data, (bg.EventData_Text, bg.EventData_Binary)):
            kind = "text" if isinstance(data, bg.EventData_Text) else "binary"
            raise bg.Permanent(f"cannot redact {kind} data: only JSON data can be redacted")
        if isinstance(data, bg.EventData_Json) and self.paths:
            value = bg.data_json(event)
            for path in self.paths:
                if isinstance(value, (dict, list)):
                    redact(value, path, self.drop)
            event = bg.replace_data(event, value)
        bg.redis_stream.xadd(self.stream_name, bg.stream_fields(event), self.max_len)

    def health_check(self) -> bool:
        return bg.redis_stream.ping_ok()


Backend = bg.export(Redact)
