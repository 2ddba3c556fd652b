"""The seed's rendering of an event: ``to_cloud_event()`` JSON and the Redis Stream fields.

django-broadcaster's Redis Stream backend writes ``json.dumps(event.to_cloud_event())`` and
a few plain fields. Python's own ``json.dumps`` (default arguments: ``", "`` / ``": "``
separators, ``ensure_ascii=True``) is the reference the Rust SDK imitates, so here it is
simply used; the host hands JSON data over already rendered that way, so it is spliced
into the document unchanged. The output is byte for byte what the native backend writes.
"""

import base64
import dataclasses
import json
from typing import Any, Dict, List, Optional, Tuple, Union

from wit_world.imports.types import (
    CloudEvent,
    EventData_Binary,
    EventData_Json,
    EventData_Text,
    OutboxEvent,
)

from .errors import Permanent

#: The five fields every entry starts with; a ``publisher_config`` key may not reuse one.
RESERVED_FIELDS = ("event_id", "event_type", "source", "timestamp", "cloud_event")

Fields = List[Tuple[str, str]]


def _cloud_event(event: Union[OutboxEvent, CloudEvent]) -> CloudEvent:
    return event.event if isinstance(event, OutboxEvent) else event


def to_cloud_event(event: Union[OutboxEvent, CloudEvent]) -> str:
    """The seed's ``json.dumps(event.to_cloud_event())``, byte for byte.

    Keys in the seed's order: ``specversion``, ``type``, ``source``, ``id``, ``time``, then
    ``subject``, ``datacontenttype``, ``dataschema`` when present, then the extension
    attributes (as strings), then ``data`` (JSON spliced as it is, text as a JSON string)
    or ``data_base64`` (binary). No ``data`` key when the event has no data.
    """
    ce = _cloud_event(event)
    members = []

    def member(name: str, json_text: str) -> None:
        members.append(json.dumps(name) + ": " + json_text)

    for name, value in (
        ("specversion", ce.specversion),
        ("type", ce.type),
        ("source", ce.source),
        ("id", ce.id),
        ("time", ce.time),
        ("subject", ce.subject),
        ("datacontenttype", ce.datacontenttype),
        ("dataschema", ce.dataschema),
    ):
        if value is not None:
            member(name, json.dumps(value))
    for name, value in ce.extensions:
        member(name, json.dumps(value))
    data = ce.data
    if isinstance(data, EventData_Json):
        member("data", data.value)  # already rendered as json.dumps renders it
    elif isinstance(data, EventData_Text):
        member("data", json.dumps(data.value))
    elif isinstance(data, EventData_Binary):
        member("data_base64", json.dumps(base64.b64encode(bytes(data.value)).decode("ascii")))
    return "{" + ", ".join(members) + "}"


def extra_value(json_text: str) -> str:
    """The stream field value for one ``publisher_config`` value given as JSON text: a JSON
    string is unquoted, anything else is kept as its JSON text."""
    if json_text.startswith('"'):
        try:
            value = json.loads(json_text)
        except ValueError:
            return json_text
        if isinstance(value, str):
            try:
                value.encode("utf-8")  # a lone surrogate (`"\ud800"`) cannot cross to the host
            except UnicodeEncodeError:
                return json_text
            return value
    return json_text


def stream_fields(event: OutboxEvent) -> Fields:
    """The seed's stream entry fields: ``event_id``, ``event_type``, ``source``,
    ``timestamp``, ``cloud_event``, then one per ``publisher_config`` key (strings as they
    are, other values as JSON text), then one per extension attribute (``traceparent``, …),
    as the native backend writes them.

    Raises :class:`Permanent` when a ``publisher_config`` key collides with one of the five,
    or an extension attribute with one of the five or a ``publisher_config`` key (the seed
    silently let it overwrite the field; Broadcaster refuses the event).
    """
    for key, _ in event.publisher_config:
        if key in RESERVED_FIELDS:
            raise Permanent(
                f"publisher_config key {json.dumps(key, ensure_ascii=False)} collides with the "
                "stream field of the same name (reserved: " + ", ".join(RESERVED_FIELDS) + ")"
            )
    ce = event.event
    config_keys = {key for key, _ in event.publisher_config}
    for name, _ in ce.extensions:
        if name in RESERVED_FIELDS or name in config_keys:
            raise Permanent(
                f"extension attribute {json.dumps(name, ensure_ascii=False)} collides with the stream "
                "field of the same name (reserved: " + ", ".join(RESERVED_FIELDS) + ", and the event's "
                "publisher_config keys)"
            )
    fields = [
        ("event_id", ce.id),
        ("event_type", ce.type),
        ("source", ce.source),
        ("timestamp", ce.time or ""),
        ("cloud_event", to_cloud_event(ce)),
    ]
    fields.extend((key, extra_value(text)) for key, text in event.publisher_config)
    fields.extend((name, value) for name, value in ce.extensions)
    return fields


def data_json(event: Union[OutboxEvent, CloudEvent]) -> Optional[Any]:
    """The event's data parsed as JSON; ``None`` when it has none or it is not JSON."""
    data = _cloud_event(event).data
    if isinstance(data, EventData_Json):
        return json.loads(data.value)
    return None


def replace_data(event: OutboxEvent, value: Any) -> OutboxEvent:
    """A copy of ``event`` whose data is ``value`` rendered with ``json.dumps`` (``None``
    means no data, as the host hands over JSON ``null``)."""
    data = None if value is None else EventData_Json(json.dumps(value))
    return dataclasses.replace(event, event=dataclasses.replace(event.event, data=data))


def set_extensions(event: OutboxEvent, extensions: Union[Dict[str, str], Fields]) -> OutboxEvent:
    """A copy of ``event`` with these extension attributes set: an attribute the event
    already has gets the new value in its place, a new one is appended (so it is rendered
    after the event's own, before ``data``)."""
    items = extensions.items() if isinstance(extensions, dict) else extensions
    merged = list(event.event.extensions)
    for name, value in items:
        name, value = str(name), str(value)
        for i, (existing, _) in enumerate(merged):
            if existing == name:
                merged[i] = (name, value)
                break
        else:
            merged.append((name, value))
    return dataclasses.replace(event, event=dataclasses.replace(event.event, extensions=merged))
