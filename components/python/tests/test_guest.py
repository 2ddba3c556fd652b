"""Unit tests of broadcaster_guest and the Python backends, run with the host's CPython.

The helpers import the componentize-py bindings (``wit_world``), which only exist inside a
component; here they come from ``componentize-py bindings`` (a directory named by
``$BROADCASTER_PY_BINDINGS``, or generated into a temporary one), and the capability
functions, which raise ``NotImplementedError`` outside a component, are replaced by fakes.

    python3 -m unittest discover -s components/python/tests   # from the repository root
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(HERE)
WIT = os.path.join(PYTHON_DIR, "..", "..", "wit", "backend@0.2.0")


def _bindings() -> str:
    path = os.environ.get("BROADCASTER_PY_BINDINGS")
    if path:
        return path
    tool = shutil.which("componentize-py")
    if tool is None:
        raise unittest.SkipTest("componentize-py is not on PATH and $BROADCASTER_PY_BINDINGS is not set")
    path = tempfile.mkdtemp(prefix="broadcaster-py-bindings-")
    subprocess.run([tool, "-d", WIT, "-w", "publisher", "bindings", path], check=True, capture_output=True)
    return path


sys.path[:0] = [_bindings(), PYTHON_DIR]

from componentize_py_types import Err, Ok  # noqa: E402
from wit_world.imports import log as wit_log  # noqa: E402
from wit_world.imports import redis_stream as wit_redis  # noqa: E402
from wit_world.imports.types import (  # noqa: E402
    CloudEvent,
    EventData_Binary,
    EventData_Json,
    EventData_Text,
    OutboxEvent,
    PublishError_Permanent,
    PublishError_Transient,
)

import broadcaster_guest as bg  # noqa: E402


def load_app(folder: str):
    spec = importlib.util.spec_from_file_location(f"app_{folder.replace('-', '_')}", os.path.join(PYTHON_DIR, folder, "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(data=None, config=(), **attrs) -> OutboxEvent:
    ce = dict(
        id="e-1",
        source="/shop",
        specversion="1.0",
        type="order.created",
        datacontenttype="application/json",
        dataschema=None,
        subject=None,
        time="2026-11-29T10:00:00.500000+00:00",
        data=data,
        extensions=[],
    )
    ce.update(attrs)
    return OutboxEvent(event=CloudEvent(**ce), retry_count=0, max_retries=3, publisher_config=list(config))


class Fakes(unittest.TestCase):
    """Replaces the capabilities with recorders."""

    def setUp(self):
        self.logged = []
        self.added = []
        self.redis_error = None
        self.batches = []
        self.batch_error = None
        self.saved = (wit_log.log, wit_redis.xadd, wit_redis.ping, wit_redis.xadd_batch)

        def xadd(stream, fields, max_len):
            if self.redis_error is not None:
                raise Err(self.redis_error)
            self.added.append((stream, fields, max_len))
            return "1-0"

        def xadd_batch(entries):
            if self.batch_error is not None:
                raise Err(self.batch_error)
            self.batches.append(len(entries))
            replies = []
            for entry in entries:
                if entry.stream == "denied":
                    replies.append(Err(wit_redis.Error_StreamDenied(entry.stream)))
                else:
                    self.added.append((entry.stream, entry.fields, entry.max_len))
                    replies.append(Ok(f"{len(self.added)}-0"))
            return replies

        def ping():
            if self.redis_error is not None:
                raise Err(self.redis_error)

        wit_log.log = lambda level, message: self.logged.append((level, message))
        wit_redis.xadd, wit_redis.ping, wit_redis.xadd_batch = xadd, ping, xadd_batch

    def tearDown(self):
        wit_log.log, wit_redis.xadd, wit_redis.ping, wit_redis.xadd_batch = self.saved


class SeedFormat(unittest.TestCase):
    def test_cloud_event_is_json_dumps_of_the_seed_dict(self):
        data = {"name": "Zoë 😀", "n": 1.0, "big": 1e16, "tab": "a\tb", "del": "\x7f", "ctl": "\x00\x1f\u2028"}
        e = event(EventData_Json(json.dumps(data)), subject="orders/1", dataschema="https://x/s.json",
                  extensions=[("traceparent", "00-x"), ("zz", "ü")])
        seed = {"specversion": "1.0", "type": "order.created", "source": "/shop", "id": "e-1",
                "time": "2026-11-29T10:00:00.500000+00:00", "subject": "orders/1",
                "datacontenttype": "application/json", "dataschema": "https://x/s.json",
                "traceparent": "00-x", "zz": "ü", "data": data}
        self.assertEqual(bg.to_cloud_event(e), json.dumps(seed))
        self.assertIn(r'"Zo\u00eb \ud83d\ude00"', bg.to_cloud_event(e))
        self.assertIn(r'"del": "\u007f"', bg.to_cloud_event(e))

    def test_absent_attributes_and_data_are_left_out(self):
        e = event(None, datacontenttype=None, time=None)
        self.assertEqual(bg.to_cloud_event(e), '{"specversion": "1.0", "type": "order.created", "source": "/shop", "id": "e-1"}')

    def test_text_and_binary_data(self):
        self.assertTrue(bg.to_cloud_event(event(EventData_Text("h\u00e9\n"))).endswith(r', "data": "h\u00e9\n"}'))
        self.assertTrue(bg.to_cloud_event(event(EventData_Binary(b"\xff\x00"))).endswith(', "data_base64": "/wA="}'))

    def test_stream_fields_order_and_extras(self):
        e = event(EventData_Json("[1]"), config=[("tenant", '"acme"'), ("n", "5"), ("obj", '{"a": [1, null]}'), ("u", '"Zo\\u00eb"')])
        fields = bg.stream_fields(e)
        self.assertEqual([k for k, _ in fields], ["event_id", "event_type", "source", "timestamp", "cloud_event", "tenant", "n", "obj", "u"])
        self.assertEqual(fields[3][1], "2026-11-29T10:00:00.500000+00:00")
        self.assertEqual(fields[5:], [("tenant", "acme"), ("n", "5"), ("obj", '{"a": [1, null]}'), ("u", "Zoë")])

    def test_a_reserved_key_is_permanent(self):
        with self.assertRaises(bg.Permanent) as caught:
            bg.stream_fields(event(config=[("x", "1"), ("event_id", '"forged"')]))
        self.assertIn('publisher_config key "event_id" collides', caught.exception.message)

    def test_extension_attributes_are_fields_after_the_extras(self):
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        fields = bg.stream_fields(event(config=[("tenant", '"acme"')], extensions=[("traceparent", tp)]))
        self.assertEqual(fields[5:], [("tenant", "acme"), ("traceparent", tp)])
        for extensions, config in (([("timestamp", "x")], []), ([("tenant", "x")], [("tenant", '"a"')])):
            with self.assertRaises(bg.Permanent) as caught:
                bg.stream_fields(event(config=config, extensions=extensions))
            self.assertIn(f'extension attribute "{extensions[0][0]}" collides', caught.exception.message)

    def test_extra_value(self):
        self.assertEqual(bg.extra_value('"plain \\u00e9"'), "plain é")
        self.assertEqual(bg.extra_value("1.0"), "1.0")
        self.assertEqual(bg.extra_value('"\\ud800"'), '"\\ud800"')  # no UTF-8 form: kept
        self.assertEqual(bg.extra_value('"broken'), '"broken')

    def test_replace_data_and_set_extensions(self):
        e = event(EventData_Json('{"a": 1}'), extensions=[("region", "us"), ("x", "1")])
        self.assertEqual(bg.data_json(e), {"a": 1})
        changed = bg.replace_data(e, {"a": "é"})
        self.assertEqual(changed.event.data, EventData_Json('{"a": "\\u00e9"}'))
        self.assertEqual(e.event.data, EventData_Json('{"a": 1}'))  # a copy
        self.assertIsNone(bg.replace_data(e, None).event.data)
        enriched = bg.set_extensions(e, {"tenant": "acme", "region": "eu"})
        self.assertEqual(enriched.event.extensions, [("region", "eu"), ("x", "1"), ("tenant", "acme")])


class OptionsTests(unittest.TestCase):
    def test_defaults_required_and_types(self):
        o = bg.Options({"s": "x", "n": 5, "l": ["a"], "m": {"k": "v"}, "b": True, "c": "drop"})
        self.assertEqual(o.string("s"), "x")
        self.assertEqual(o.string("missing", "d"), "d")
        self.assertIsNone(o.string("missing2", None))
        self.assertEqual(o.integer("n"), 5)
        self.assertEqual(o.string_list("l"), ["a"])
        self.assertEqual(o.string_map("m"), {"k": "v"})
        self.assertTrue(o.boolean("b"))
        self.assertEqual(o.choice("c", ["mask", "drop"], "mask"), "drop")
        o.check_unknown()

    def test_errors_name_the_option(self):
        cases = [
            (lambda o: o.string("s"), {}, "option `s`: required (a non-empty string)"),
            (lambda o: o.string("s"), {"s": ""}, 'option `s`: expected a non-empty string, got ""'),
            (lambda o: o.integer("n"), {"n": True}, "option `n`: expected an integer >= 0"),
            (lambda o: o.integer("n"), {"n": 1.5}, "got 1.5"),
            (lambda o: o.integer("n"), {"n": -1}, "got -1"),
            (lambda o: o.string_list("l"), {"l": ["a", 2]}, "option `l[1]`: expected a non-empty string, got 2"),
            (lambda o: o.string_map("m"), {"m": {"k": 1}}, "option `m.k`: expected a non-empty string, got 1"),
            (lambda o: o.choice("c", ["a", "b"]), {"c": "z"}, 'option `c`: expected one of "a", "b", got "z"'),
            (lambda o: o.refuse(["host"], "use the grant"), {"host": "h"}, "option `host`: use the grant"),
        ]
        for read, raw, message in cases:
            with self.subTest(message=message), self.assertRaises(bg.OptionError) as caught:
                read(bg.Options(raw))
            self.assertIn(message, str(caught.exception))

    def test_unknown_options_are_refused_unless_allowed(self):
        o = bg.Options({"stream_name": "s", "stream": "x"})
        o.string("stream_name")
        with self.assertRaises(bg.OptionError) as caught:
            o.check_unknown()
        self.assertEqual(str(caught.exception), "option `stream`: unknown option (known options: stream_name)")
        o.allow_unknown()
        o.check_unknown()


class Glue(Fakes):
    def backend(self, publish=None, init=None):
        class P(bg.Publisher):
            def init(self, options):
                if init:
                    init(options)

            def publish(self, event):
                publish(event)

        return bg.export(P)()

    def test_init_errors(self):
        b = self.backend()
        for options, message in [
            ("nope", "options: not valid JSON"),
            ("[]", "options: expected a JSON object, got []"),
            ('{"x": 1}', "option `x`: unknown option (known options: none)"),
        ]:
            with self.subTest(options=options), self.assertRaises(Err) as caught:
                b.init(options)
            self.assertIn(message, caught.exception.value)

        def boom(options):
            raise RuntimeError("no way")

        with self.assertRaises(Err) as caught:
            self.backend(init=boom).init("{}")
        self.assertEqual(caught.exception.value, "init failed: RuntimeError: no way")

    def test_publish_errors_map_to_the_wit_cases(self):
        def raiser(exc):
            def publish(event):
                raise exc
            return publish

        for exc, want in [
            (bg.Transient("later"), PublishError_Transient("later")),
            (bg.Permanent("never"), PublishError_Permanent("never")),
        ]:
            b = self.backend(raiser(exc))
            b.init("{}")
            with self.subTest(exc=exc), self.assertRaises(Err) as caught:
                b.publish(event())
            self.assertEqual(caught.exception.value, want)

    def test_any_other_exception_escapes_to_trap_the_instance(self):
        b = self.backend(lambda event: {}["k"])
        b.init("{}")
        with self.assertRaises(KeyError):
            b.publish(event())

    def test_state_survives_fresh_glue_instances(self):
        # componentize-py may make a new instance of the exported class for each call.
        published = []
        cls = type(self.backend(published.append))
        cls().init("{}")
        cls().publish(event())
        self.assertEqual(len(published), 1)
        self.assertTrue(cls().health_check())

    def test_publish_before_init_is_transient(self):
        with self.assertRaises(Err) as caught:
            self.backend(lambda e: None).publish(event())
        self.assertIsInstance(caught.exception.value, PublishError_Transient)

    def test_redis_errors(self):
        self.assertEqual(bg.redis_stream.xadd("s", [("a", "b")], 10), "1-0")
        self.assertEqual(self.added, [("s", [("a", "b")], 10)])
        for err, kind, message in [
            (wit_redis.Error_Unavailable("timed out"), bg.Transient, "Redis is unavailable: timed out"),
            (wit_redis.Error_StreamDenied("x"), bg.Permanent, 'stream "x" is outside the streams granted'),
            (wit_redis.Error_NotGranted(), bg.Permanent, "no `redis` grant"),
            (wit_redis.Error_Rejected("WRONGTYPE"), bg.Permanent, "Redis rejected the entry: WRONGTYPE"),
        ]:
            self.redis_error = err
            with self.subTest(err=err), self.assertRaises(kind) as caught:
                bg.redis_stream.xadd("s", [("a", "b")])
            self.assertIn(message, caught.exception.message)
            self.assertIs(caught.exception.cause, err)
            self.assertFalse(bg.redis_stream.ping_ok())


class Batches(Fakes):
    def backend(self, publish):
        class P(bg.Publisher):
            pass

        P.publish = lambda self, event: publish(event)
        b = bg.export(P)()
        b.init("{}")
        return b

    def test_the_default_batch_publishes_each_event_and_stops_after_a_transient_error(self):
        seen = []

        def publish(e):
            seen.append(e.event.id)
            if e.event.id == "t":
                raise bg.Transient("later")
            if e.event.id == "p":
                raise bg.Permanent("never")

        results = self.backend(publish).publish_batch([event(id="a"), event(id="p"), event(id="t"), event(id="z")])
        self.assertEqual(
            results, [Ok(None), Err(PublishError_Permanent("never")), Err(PublishError_Transient("later"))]
        )
        self.assertEqual(seen, ["a", "p", "t"])

    def test_an_exception_in_a_batch_escapes_to_trap(self):
        with self.assertRaises(KeyError):
            self.backend(lambda e: {}["k"]).publish_batch([event()])

    def test_xadd_batch_returns_ids_and_errors_in_order(self):
        results = bg.redis_stream.xadd_batch([("s", [("a", "b")], 5), ("denied", [("a", "b")], None), ("s", [("c", "d")], None)])
        self.assertEqual(results[0], "1-0")
        self.assertIsInstance(results[1], bg.Permanent)
        self.assertIn('"denied" is outside', results[1].message)
        self.assertEqual(results[2], "2-0")
        self.assertEqual(self.batches, [3])

    def test_xadd_batch_splits_at_the_entry_cap_and_falls_back_when_refused(self):
        entries = [("s", [("i", str(i))], None) for i in range(bg.redis_stream.BATCH_ENTRIES + 1)]
        self.assertEqual(len(bg.redis_stream.xadd_batch(entries)), len(entries))
        self.assertEqual(self.batches, [bg.redis_stream.BATCH_ENTRIES, 1])
        self.added.clear()
        self.batch_error = wit_redis.Error_Rejected("more than limits.xadd_batch_entries")
        self.assertEqual(bg.redis_stream.xadd_batch(entries[:3]), ["1-0", "1-0", "1-0"])
        self.assertEqual(len(self.added), 3, "one xadd per entry instead")
        self.batch_error = wit_redis.Error_Unavailable("down")
        self.assertTrue(all(isinstance(r, bg.Transient) for r in bg.redis_stream.xadd_batch(entries[:2])))

    def test_until_transient(self):
        t, p = bg.Transient("t"), bg.Permanent("p")
        self.assertEqual(bg.until_transient([None, p, t, None]), [None, p, t])
        self.assertEqual(bg.until_transient([None, p]), [None, p])


class RedisStreamApp(Fakes):
    def test_a_batch_is_one_xadd_batch_and_a_bad_event_fails_alone(self):
        app = load_app("redis-stream")
        b = app.Backend()
        b.init('{"stream_name": "poly:x"}')
        good, bad = event(EventData_Json("1")), event(config=[("event_id", '"forged"')])
        results = b.publish_batch([good, bad, good])
        self.assertEqual(results[0], Ok(None))
        self.assertIsInstance(results[1].value, PublishError_Permanent)
        self.assertEqual(results[2], Ok(None))
        self.assertEqual(self.batches, [2])
        self.assertEqual(self.added[0], ("poly:x", bg.stream_fields(good), 10000))

    def test_writes_the_seed_entry(self):
        app = load_app("redis-stream")
        b = app.Backend()
        b.init('{"stream_name": "poly:x"}')
        e = event(EventData_Json('{"a": 1}'), config=[("t", '"x"')])
        b.publish(e)
        self.assertEqual(self.added, [("poly:x", bg.stream_fields(e), 10000)])

    def test_connection_options_point_to_the_grant(self):
        with self.assertRaises(Err) as caught:
            load_app("redis-stream").Backend().init('{"host": "redis"}')
        self.assertIn("option `host`: a component does not connect by itself", caught.exception.value)
        self.assertIn("[publishers.<name>.grants] redis", caught.exception.value)


class RedactApp(Fakes):
    def setUp(self):
        super().setUp()
        self.app = load_app("redact")

    def test_paths(self):
        p = self.app.parse_path
        W = self.app.WILDCARD
        self.assertEqual(p("customer.email"), ["customer", "email"])
        self.assertEqual(p("items.*.card"), ["items", W, "card"])
        self.assertEqual(p("x\\.api\\.key.\\*.a\\\\b"), ["x.api.key", "*", "a\\b"])
        for bad in ["", "a..b", ".a", "a.", "card*", "a\\b", "a\\"]:
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                p(bad)

    def redacted(self, value, paths, drop=False):
        for path in paths:
            self.app.redact(value, self.app.parse_path(path), drop)
        return value

    def test_mask_and_drop(self):
        def data():
            return {"c": {"email": "e", "n": 1}, "items": [{"card": 1}, {"card": {"x": 2}}, {"q": 3}], "tags": ["a", "b", "c"]}

        paths = ["c.email", "items.*.card", "tags.1", "missing.x", "c.n.deeper", "items.9"]
        self.assertEqual(self.redacted(data(), paths), {"c": {"email": "***", "n": 1}, "items": [{"card": "***"}, {"card": "***"}, {"q": 3}], "tags": ["a", "***", "c"]})
        self.assertEqual(self.redacted(data(), paths, drop=True), {"c": {"n": 1}, "items": [{}, {}, {"q": 3}], "tags": ["a", "c"]})
        self.assertEqual(self.redacted({"t": [1, 2, 3]}, ["t.*"], drop=True), {"t": []})
        self.assertEqual(self.redacted([{"p": 1}], ["0.p"]), [{"p": "***"}])
        self.assertEqual(self.redacted({"0": 1, "01": 2}, ["0", "01"]), {"0": "***", "01": "***"})

    def test_publish_rewrites_data_with_json_dumps(self):
        b = self.app.Backend()
        b.init('{"stream_name": "s", "paths": ["who"], "max_len": 5}')
        b.publish(event(EventData_Json('{"who": "Zo\\u00eb", "n": 1.0, "big": 1e+16}')))
        stream, fields, max_len = self.added[0]
        self.assertEqual((stream, max_len), ("s", 5))
        self.assertTrue(dict(fields)["cloud_event"].endswith(', "data": {"who": "***", "n": 1.0, "big": 1e+16}}'))

    def test_text_data_is_refused(self):
        b = self.app.Backend()
        b.init('{"stream_name": "s", "paths": ["a"]}')
        with self.assertRaises(Err) as caught:
            b.publish(event(EventData_Text("secret")))
        self.assertEqual(caught.exception.value, PublishError_Permanent("cannot redact text data: only JSON data can be redacted"))
        self.assertEqual(self.added, [])

    def test_bad_options(self):
        for options, message in [
            ("{}", "option `stream_name`: required"),
            ('{"stream_name": "s", "mode": "hide"}', "option `mode`"),
            ('{"stream_name": "s", "paths": [1]}', "option `paths[0]`"),
            ('{"stream_name": "s", "paths": [""]}', "option `paths[0]`"),
            ('{"stream_name": "s", "paths": ["a..b"]}', "option `paths[0]`: 'a..b': empty segment"),
        ]:
            with self.subTest(options=options), self.assertRaises(Err) as caught:
                self.app.Backend().init(options)
            self.assertIn(message, caught.exception.value)


if __name__ == "__main__":
    unittest.main()
