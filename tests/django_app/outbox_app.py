"""A minimal Django project with django-broadcaster 0.1.1 installed: the seed itself, driven
by Broadcaster's compatibility tests.

    python outbox_app.py <db> migrate
    python outbox_app.py <db> enqueue '<json list of publish_event kwargs>'   -> one id per line
    python outbox_app.py <db> rows <id>...      -> one JSON object per row (columns + to_cloud_event)
    python outbox_app.py <db> seed-publish <redis port> <stream> <id>...   (the seed's RedisStreamBackend)
    python outbox_app.py <db> seed-relay <redis host:port> <publisher> <stream> <batch>
        -> "<events> <seconds>": the seed's own worker loop (`process_pending_events(batch)`
           until it finds nothing), publishing to <stream> as the backend named <publisher>
           (`broadcaster bench relay` runs it beside Broadcaster)
    python outbox_app.py <db> seed-worker <redis host:port> <publisher> <stream>
        -> the seed's `manage.py outbox_worker` at its defaults (batch 100, 5 s interval) until
           SIGTERM, publishing to <stream> as the backend named <publisher>
           (`broadcaster bench latency` runs it beside Broadcaster)
    python outbox_app.py <db> django-producer <rate> <seconds> <out file>
        -> an application's requests, one after another in this one process: `publish_event`
           (one transaction per event, Django's default SQLite busy handling) at <rate> events/s
           on a fixed schedule (open loop: a late commit makes the ones after it late too);
           one line per event in <out file>: "<id hex> <scheduled> <started> <committed>", in
           wall-clock nanoseconds (`broadcaster bench latency --producer django` reads it)

<db> is a SQLite file path or a postgres:// URL.
"""
import json
import sys
from urllib.parse import urlparse

import django
from django.conf import settings


def configure(db, publishers=None):
    if db.startswith("postgres://"):
        url = urlparse(db)
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": url.path.lstrip("/"),
            "USER": url.username or "postgres",
            "PASSWORD": url.password or "",
            "HOST": url.hostname or "127.0.0.1",
            "PORT": str(url.port or 5432),
        }
    else:
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": db}
    settings.configure(
        SECRET_KEY="tests",
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_broadcaster"],
        DATABASES={"default": database},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        OUTBOX_PUBLISHERS=publishers or {},
        LOGGING_CONFIG=None,
    )
    django.setup()


def main():
    db, command, *args = sys.argv[1:]
    publishers = None
    if command in ("seed-relay", "seed-worker"):
        server, name, stream = args[:3]
        host, port = server.rsplit(":", 1)
        options = {"host": host, "port": int(port), "stream_name": stream, "max_len": 10_000_000}
        publishers = {name: {"BACKEND": "django_broadcaster.backends.RedisStreamBackend", "OPTIONS": options}}
    configure(db, publishers)
    from django.core.management import call_command
    from django_broadcaster.backends import RedisStreamBackend
    from django_broadcaster.models import OutboxEvent
    from django_broadcaster.publishers import publisher

    if command == "migrate":
        call_command("migrate", "django_broadcaster", verbosity=0)
    elif command == "enqueue":
        for kwargs in json.loads(args[0]):
            print(publisher.publish_event(**kwargs).id)
    elif command == "seed-enqueue":
        import time

        count = int(args[0])
        started = time.perf_counter()
        for i in range(count):
            publisher.publish_event(
                event_type="order.created",
                source="/bench/shop",
                subject=f"order/{i}",
                data={
                    "order_id": i,
                    "customer": {"id": 4711, "name": "Zoë Example"},
                    "items": [{"sku": "SKU-1", "qty": 2, "price": 9.95}],
                    "total": 19.9,
                },
            )
        print(count, time.perf_counter() - started)
    elif command == "rows":
        for id in args:
            e = OutboxEvent.objects.get(id=id)
            print(json.dumps({
                "id": str(e.id), "spec_version": e.spec_version, "event_type": e.event_type,
                "source": e.source, "subject": e.subject, "data_content_type": e.data_content_type,
                "data_schema": e.data_schema, "data": e.data, "status": e.status,
                "retry_count": e.retry_count, "max_retries": e.max_retries, "last_error": e.last_error,
                "publisher_backend": e.publisher_backend, "publisher_config": e.publisher_config,
                "published": e.published_at is not None,
                "created_at": e.created_at.isoformat(), "scheduled_at": e.scheduled_at.isoformat(),
                "cloud_event": json.dumps(e.to_cloud_event()),
            }))
    elif command == "seed-publish":
        port, stream, *ids = args
        backend = RedisStreamBackend({"host": "127.0.0.1", "port": int(port), "stream_name": stream})
        for id in ids:
            backend.publish(OutboxEvent.objects.get(id=id))
    elif command == "seed-relay":
        import time

        from django_broadcaster.publishers import OutboxPublisher

        worker = OutboxPublisher()
        batch = int(args[3])
        started = time.perf_counter()
        total = 0
        while True:
            done = worker.process_pending_events(batch)
            if done == 0:
                break
            total += done
        print(total, time.perf_counter() - started)
    elif command == "seed-worker":
        call_command("outbox_worker")
    elif command == "django-producer":
        import time

        rate, seconds, out = float(args[0]), float(args[1]), args[2]
        total = int(rate * seconds)
        lines = []
        # Django's first query opens the connection: not part of any event's commit.
        OutboxEvent.objects.exists()
        start = time.time_ns()
        for i in range(total):
            scheduled = start + int(i * 1e9 / rate)
            pause = (scheduled - time.time_ns()) / 1e9
            if pause > 0:
                time.sleep(pause)
            started = time.time_ns()
            event = publisher.publish_event(
                event_type="latency.probe", source="/bench/django", subject=f"order/{i}", data={"n": i}
            )
            committed = time.time_ns()
            lines.append(f"{event.id.hex} {scheduled} {started} {committed}\n")
        with open(out, "w") as f:
            f.writelines(lines)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
