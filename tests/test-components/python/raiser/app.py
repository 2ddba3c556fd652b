"""A Python backend with a bug: ``data.explode`` makes ``publish`` raise a ``KeyError``.
Otherwise it writes the seed's entry to ``stream_name``."""

import broadcaster_guest as bg


class Raiser(bg.Publisher):
    def init(self, options: bg.Options) -> None:
        self.stream_name = options.string("stream_name", "events")

    def publish(self, event: bg.OutboxEvent) -> None:
        data = bg.data_json(event) or {}
        if data.get("explode"):
            {}["no-such-key"]
        bg.redis_stream.xadd(self.stream_name, bg.stream_fields(event), 10_000)


Backend = bg.export(Raiser)
