"""The two ways a publish can fail, as exceptions.

Raise :class:`Transient` when trying again later can help (the destination is down, busy,
timed out) and :class:`Permanent` when it cannot (the event is malformed for this backend).
The glue turns them into the WIT ``publish-error`` the relay acts on. Any other exception
that escapes ``publish`` becomes a transient error carrying its message.
"""


class PublishError(Exception):
    """Base of :class:`Transient` and :class:`Permanent`; ``message`` is shown to the operator."""

    transient = True

    def __init__(self, message: str):
        super().__init__(message)
        self.message = str(message)


class Transient(PublishError):
    """Worth trying again later: the relay retries the event with backoff."""

    transient = True


class Permanent(PublishError):
    """Trying again cannot help: the relay marks the event failed at once."""

    transient = False
