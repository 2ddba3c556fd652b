"""Write Broadcaster publisher backends in Python: the Python face of ``broadcaster-guest``.

A backend is a WebAssembly component built with componentize-py from a module that
subclasses :class:`Publisher` and binds ``Backend = export(MyPublisher)``::

    import broadcaster_guest as bg

    class Mirror(bg.Publisher):
        def init(self, options: bg.Options) -> None:
            self.stream = options.string("stream_name", "events")

        def publish(self, event: bg.OutboxEvent) -> None:
            bg.redis_stream.xadd(self.stream, bg.stream_fields(event), 10_000)

        def health_check(self) -> bool:
            return bg.redis_stream.ping_ok()

    Backend = bg.export(Mirror)

What is here:

- :class:`Publisher`, :func:`export`: the base class and the glue to the WIT exports
  (``broadcaster:backend@0.2.0``: ``publish_batch`` gets a whole batch; by default it calls
  ``publish`` for each event, :func:`until_transient` cuts a batch's results as the host
  wants them);
- :class:`Transient`, :class:`Permanent`: raise them from ``publish`` (anything else that
  escapes becomes a transient error carrying its message);
- :class:`Options`, :class:`OptionError`: validated options, unknown ones refused;
- :mod:`redis_stream`: ``xadd``/``ping`` through the publisher's grant, errors raised as
  ``Transient`` (Redis unavailable) or ``Permanent`` (everything else); ``xadd_batch``
  appends many entries in one round trip;
- :mod:`log`: ``trace``… ``error`` into Broadcaster's log;
- :func:`to_cloud_event`, :func:`stream_fields`: the seed's rendering, byte for byte;
  :func:`data_json`, :func:`replace_data`, :func:`set_extensions` to read an event
  and make a changed copy;
- :mod:`types`: the WIT records (``OutboxEvent``, ``CloudEvent``, ``EventData_Json``…).

Everything the module does at import time runs while the component is BUILT (it is
snapshotted), so call capabilities (``redis_stream``, ``log``) only from the methods.
"""

from wit_world.imports import types
from wit_world.imports.types import (
    CloudEvent,
    EventData,
    EventData_Binary,
    EventData_Json,
    EventData_Text,
    OutboxEvent,
)

from . import log, redis_stream
from ._export import Publisher, export, until_transient
from .errors import Permanent, PublishError, Transient
from .options import REQUIRED, OptionError, Options
from .seed_format import (
    RESERVED_FIELDS,
    data_json,
    extra_value,
    replace_data,
    set_extensions,
    stream_fields,
    to_cloud_event,
)

__all__ = [
    "CloudEvent",
    "EventData",
    "EventData_Binary",
    "EventData_Json",
    "EventData_Text",
    "OptionError",
    "Options",
    "OutboxEvent",
    "Permanent",
    "PublishError",
    "Publisher",
    "REQUIRED",
    "RESERVED_FIELDS",
    "Transient",
    "data_json",
    "export",
    "extra_value",
    "log",
    "redis_stream",
    "replace_data",
    "set_extensions",
    "stream_fields",
    "to_cloud_event",
    "types",
    "until_transient",
]
