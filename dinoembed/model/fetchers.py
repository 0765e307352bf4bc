"""Streaming downloads of model files: HTTP(S) with bounded retries.

A fetcher writes the bytes at a URL into an open file. It raises
:class:`ModelUnavailableError` (transient: try again later) when the bytes
cannot be had. Checksums are the model store's business, not the fetcher's.
The ``s3://`` fetcher lives in the AWS adapter (``dinoembed.handler.model_fetch``),
so the core never imports boto3; the entry points register it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dinoembed.errors import ModelUnavailableError

if TYPE_CHECKING:  # httpx is imported when a download happens: not on every start
    import httpx

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0


class Sink(Protocol):
    """Where a fetcher writes; a retry rewinds it with ``seek(0)`` + ``truncate()``."""

    def write(self, data: bytes, /) -> int: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def truncate(self, size: int | None = None, /) -> int: ...


class Fetcher(Protocol):
    def fetch(self, url: str, out: Sink) -> None: ...


def _retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        return default


class HttpFetcher:
    """GET with streaming, retrying connection errors, cut-off bodies, 429 and 5xx."""

    def __init__(
        self,
        *,
        attempts: int = 4,
        backoff: float = 0.5,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.transport = transport
        self.sleep = sleep

    def fetch(self, url: str, out: Sink) -> None:
        import httpx

        reason = "no attempt made"
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        client = httpx.Client(timeout=timeout, follow_redirects=True, transport=self.transport)
        with client:
            for attempt in range(1, self.attempts + 1):
                delay = self.backoff * 2 ** (attempt - 1)
                out.seek(0)
                out.truncate()
                try:
                    delay, reason = self._attempt(client, url, out, delay)
                except httpx.HTTPError as err:
                    reason = " ".join(str(err).split()) or type(err).__name__
                if not reason:
                    return
                if attempt < self.attempts:
                    log.warning(
                        "model download attempt %d failed (%s); retrying in %.1fs",
                        attempt,
                        reason,
                        delay,
                    )
                    self.sleep(delay)
        raise ModelUnavailableError(
            f"cannot download model from {url}: {reason}; set DINOEMBED_MODEL_PATH to a local copy"
        )

    def _attempt(
        self, client: httpx.Client, url: str, out: Sink, delay: float
    ) -> tuple[float, str]:
        """One GET. Returns (delay before the next try, reason it failed or '')."""
        with client.stream("GET", url) as response:
            if response.status_code in RETRY_STATUSES:
                return _retry_after(response, delay), f"HTTP {response.status_code}"
            if response.status_code != 200:
                raise ModelUnavailableError(
                    f"cannot download model from {url}: HTTP {response.status_code}; "
                    "set DINOEMBED_MODEL_PATH to a local copy"
                )
            expected = response.headers.get("content-length")
            received = 0
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
                received += len(chunk)
            if expected is not None and received != int(expected):
                return delay, f"body cut off at {received} of {expected} bytes"
        return delay, ""


def fetcher_for(url: str, fetchers: dict[str, Fetcher]) -> Fetcher:
    scheme = url.split("://", 1)[0]
    if scheme not in fetchers:
        hint = " (pip install 'dinoembed[lambda]')" if scheme == "s3" else ""
        raise ModelUnavailableError(f"no way to download {scheme}:// model URLs{hint}")
    return fetchers[scheme]


def default_fetchers() -> dict[str, Fetcher]:
    """``http://`` and ``https://``. The entry points add ``s3://`` (``dinoembed.handler``)."""
    http = HttpFetcher()
    return {"http": http, "https": http}
