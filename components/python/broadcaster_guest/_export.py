"""The glue between the WIT ``backend`` export and a :class:`Publisher` subclass.

componentize-py looks for a class named ``Backend`` in the app module (the module is
imported and snapshotted while the component is BUILT) and calls ``init``/``publish``/
``health_check`` (and ``publish_batch``) on an instance of it; it may make a new instance for each call (0.25.1
does), so nothing may live on that instance. The glue class made by :func:`export` keeps the user's
:class:`Publisher` (built in ``init``) in its closure and turns Python exceptions into the
WIT results:

- ``init``: an :class:`OptionError` (or any exception) → ``err(message)``;
- ``publish_batch``: the list :meth:`Publisher.publish_batch` returns, each ``None`` →
  ``ok``, each :class:`Transient`/:class:`Permanent` → ``publish-error``; an exception that
  escapes traps, as below;
- ``publish``: :class:`Transient`/:class:`Permanent` → ``publish-error``; any other
  exception is a bug: it escapes, componentize-py prints its traceback to stderr (which goes
  to Broadcaster's log) and traps the instance. The host then fails the event with a
  transient error quoting the traceback's last lines, ``KeyError: 'k'`` (the relay retries
  it), throws the instance away (the interpreter may hold half-done state) and starts a
  fresh one.
"""

import json
import traceback
from typing import Dict, List, Optional, Type

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.types import OutboxEvent, PublishError_Permanent, PublishError_Transient

from . import log
from .errors import PublishError
from .options import OptionError, Options


class Publisher:
    """Subclass this and override ``init``, ``publish`` and (optionally) ``health_check``.

    Keep no state you cannot rebuild from the options: after a trap the host throws the
    instance away and calls ``init`` again on a fresh one.
    """

    def init(self, options: Options) -> None:
        """Reads and validates the options (raise ``options.error(...)`` or let an
        :class:`OptionError` escape). Unknown options are refused after this returns unless
        you call ``options.allow_unknown()``."""

    def publish(self, event: OutboxEvent) -> None:
        """Publishes one event; raise :class:`Transient` or :class:`Permanent` to fail it."""
        raise NotImplementedError("publish")

    def publish_batch(self, events: List[OutboxEvent]) -> List[Optional[PublishError]]:
        """Publishes a batch (never empty), in order: returns one item per event, ``None``
        when it was published or the :class:`Transient`/:class:`Permanent` error (returned,
        not raised) that failed it. A shorter list means the events past its end were not
        attempted (they wait, with no retry spent); stop at the first transient error, as the
        host treats every event after it as not attempted anyway.

        The default calls :meth:`publish` for each event and stops after the first transient
        error. Override it when the destination takes a batch at once (see
        :func:`redis_stream.xadd_batch`, and :func:`until_transient`)."""
        results: List[Optional[PublishError]] = []
        for event in events:
            try:
                self.publish(event)
                results.append(None)
            except PublishError as exc:
                results.append(exc)
                if exc.transient:
                    break
        return results

    def health_check(self) -> bool:
        """Whether the backend can publish now; called on an interval. Defaults to ``True``."""
        return True


def until_transient(results: List[Optional[PublishError]]) -> List[Optional[PublishError]]:
    """``results`` cut after the first transient error: what a batch that attempted every
    event at once should return (the host would not trust the rest)."""
    for i, result in enumerate(results):
        if result is not None and result.transient:
            return results[: i + 1]
    return results


def _wit_error(exc: PublishError):
    case = PublishError_Transient if exc.transient else PublishError_Permanent
    return case(exc.message)


def _message(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def export(publisher: Type[Publisher]) -> type:
    """Returns the class componentize-py exports. Bind it to the name ``Backend`` in your
    app module: ``Backend = broadcaster_guest.export(MyPublisher)``."""

    # The one Publisher of this component instance, set by a successful `init`.
    state: Dict[str, Optional[Publisher]] = {"instance": None}

    class Backend(exports.Backend):
        def init(self, options: str) -> None:
            state["instance"] = None
            try:
                raw = json.loads(options)
            except ValueError as exc:
                raise Err(f"options: not valid JSON: {exc}")
            if not isinstance(raw, dict):
                raise Err(f"options: expected a JSON object, got {options}")
            opts = Options(raw)
            try:
                instance = publisher()
                instance.init(opts)
                opts.check_unknown()
            except OptionError as exc:
                raise Err(str(exc))
            except Exception as exc:  # noqa: BLE001 - every failure is shown to the operator
                raise Err(f"init failed: {_message(exc)}")
            state["instance"] = instance

        def publish(self, event: OutboxEvent) -> None:
            instance = state["instance"]
            if instance is None:
                raise Err(PublishError_Transient("publish called before a successful init"))
            try:
                instance.publish(event)
            except PublishError as exc:
                raise Err(_wit_error(exc))
            # Any other exception escapes: componentize-py prints its traceback to stderr (the
            # host's log, and the last lines are quoted in the event's error) and traps.

        def publish_batch(self, events: List[OutboxEvent]) -> list:
            instance = state["instance"]
            if instance is None:
                return [Err(PublishError_Transient("publish-batch called before a successful init"))]
            results = instance.publish_batch(list(events))
            # As in `publish`, an exception other than a PublishError escapes and traps.
            return [Ok(None) if r is None else Err(_wit_error(r)) for r in results]

        def health_check(self) -> bool:
            instance = state["instance"]
            if instance is None:
                return False
            try:
                return bool(instance.health_check())
            except Exception:  # noqa: BLE001
                log.error("health_check raised:\n" + traceback.format_exc().rstrip())
                return False

    Backend.__qualname__ = f"export({publisher.__name__})"
    return Backend
