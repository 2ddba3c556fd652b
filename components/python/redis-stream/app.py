"""django-broadcaster's ``RedisStreamBackend`` as a component, in Python.

Writes the same entry as Broadcaster's native ``redis-stream`` backend, field for field,
through the publisher's ``redis`` grant. A batch is appended in one round trip
(``xadd-batch``).

Options (``[publishers.<name>.options]``):

- ``stream_name`` (default ``"events"``): the stream to append to; must be in the grant.
- ``max_len`` (default ``10000``): trim the stream to about this many entries (``MAXLEN ~``).
"""

import broadcaster_guest as bg

# Connection options of the native backend: a component does not connect by itself.
CONNECTION_OPTIONS = ("host", "port", "db", "password", "connect_timeout", "socket_timeout")


class RedisStream(bg.Publisher):
    def init(self, options: bg.Options) -> None:
        options.refuse(
            CONNECTION_OPTIONS,
            "a component does not connect by itself; set the Redis server in "
            "`[publishers.<name>.grants] redis = { host, port, db, password, streams }`",
        )
        self.stream_name = options.string("stream_name", "events")
        self.max_len = options.integer("max_len", 10_000)

    def publish(self, event: bg.OutboxEvent) -> None:
        bg.redis_stream.xadd(self.stream_name, bg.stream_fields(event), self.max_len)

    def publish_batch(self, events):
        results = []
        entries = []
        slots = []
        for event in events:
            try:
                entries.append((self.stream_name, bg.stream_fields(event), self.max_len))
                slots.append(len(results))
                results.append(None)
            except bg.PublishError as exc:
                results.append(exc)
        for slot, reply in zip(slots, bg.redis_stream.xadd_batch(entries)):
            if isinstance(reply, bg.PublishError):
                results[slot] = reply
        return bg.until_transient(results)

    def health_check(self) -> bool:
        return bg.redis_stream.ping_ok()


Backend = bg.export(RedisStream)
