"""The server's limits, in one place: every bound a request is checked against.

Why bounds at all: a server on a laptop or a shared box is one huge request (a 10 MB body, a
``max_tokens`` of a million, a thousand messages) away from holding every core for an hour
or running out of memory. Each bound answers a 4xx in the OpenAI error shape instead, and
the queue bound answers 429 with ``Retry-After`` so a client backs off rather than piling up.
"""

from __future__ import annotations

from dataclasses import dataclass

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeSettings:
    """How ``specialize serve`` listens and what it accepts.

    ``max_pending``: requests accepted and not yet answered (running plus waiting); one more is
    answered 429. ``timeout_s``: a request still unanswered after this long is cancelled and
    answered 504. ``max_context``: prompt plus ``max_tokens`` (None: the model's own limit).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 1_000_000
    max_messages: int = 64
    max_tokens: int = 1024
    default_max_tokens: int = 256
    max_context: int | None = None
    max_pending: int = 64
    timeout_s: float = 300.0
    batch_size: int = 16
    retry_after_s: int = 1

    def check(self) -> None:
        """Refuse an unsafe or meaningless setting before anything loads."""
        from specialize.errors import SpecializeError

        if self.host not in LOOPBACK and not self.api_key:
            raise SpecializeError(
                f"binding {self.host} exposes the models to the network: give an API key "
                "(--api-key or SPECIALIZE_API_KEY), or bind 127.0.0.1",
                field="host",
            )
        for name in ("max_body_bytes", "max_messages", "max_tokens", "max_pending", "batch_size"):
            if getattr(self, name) < 1:
                raise SpecializeError(f"{name} must be at least 1", field=name)
        if self.timeout_s <= 0:
            raise SpecializeError("timeout_s must be positive", field="timeout_s")
