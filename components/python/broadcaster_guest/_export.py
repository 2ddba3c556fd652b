"""The glue between the WIT ``backend`` export and a :class:`Publisher` subclass.

componentize-py looks for a class named ``Backend`` in the app module (the module is
imported and snapshotted while the component is BUILT) and calls ``init``/``publish``/
``health_check`` on an instance of it; it may make a new instance for each call (0.25.1
does), so nothing may live on that instance. The glue class made by :func:`export` keeps the user's
:class:`Publisher` (built in ``init``) in its closure and turns Python exceptions into the
WIT results:

- ``init``: an :class:`OptionError` (or any exception) → ``err(message)``;
- ``publish``: :class:`Transient`/:class:`Permanent` → ``publish-error``; any other
  exception is a bug: it escapes, componentize-py prints its traceback to stderr (which goes
  to Broadcaster's log) and traps the instance. The host then fails the event with a
  transient error quoting the traceback's last lines, ``KeyError: 'k'`` (the relay retries
  it), throws the instance away (the interpreter may hold half-done state) and starts a
  fresh one.
"""

import json
import traceback
from typing import Dict, Optional, Type

from componentize_py_types import Err
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

    def health_check(self) -> bool:
        """Whether the backend can publish now; called on an interval. Defaults to ``True``."""
        return True


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
                case = PublishError_Transient if exc.transient else PublishError_Permanent
                raise Err(case(exc.message))
            # Any other exception escapes: componentize-py prints its traceback to stderr (the
            # host's log, and the last lines are quoted in the event's error) and traps.

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
