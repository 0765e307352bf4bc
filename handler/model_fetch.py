"""The ``s3://bucket/key`` model fetcher, registered by the entry points that need it.

The core's model store knows only ``http(s)://``; the Lambda handler (always) and
the command line (when ``DINOEMBED_MODEL_URL`` is an ``s3://`` URL) add this one,
so the core never imports boto3 or botocore.
"""

from __future__ import annotations

from typing import Any

from dinoembed.errors import ModelUnavailableError
from dinoembed.model.fetchers import CHUNK, Fetcher, Sink, default_fetchers


class S3Fetcher:
    """``s3://bucket/key`` through an S3 client (made on first use when none is given)."""

    def __init__(self, client: Any | None = None) -> None:
        self._client = client

    def fetch(self, url: str, out: Sink) -> None:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ModelUnavailableError(f"not an s3://bucket/key URL: {url}")
        try:
            client = self._client or self._default_client()
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(CHUNK):
                out.write(chunk)
        except ModelUnavailableError:
            raise
        except Exception as err:  # botocore's errors have no common base worth naming
            reason = " ".join(str(err).split())[:300]
            raise ModelUnavailableError(
                f"cannot download model from {url}: {reason}; "
                "set DINOEMBED_MODEL_PATH to a local copy"
            ) from err

    @staticmethod
    def _default_client() -> Any:
        from dinoembed.handler.s3io import make_client

        return make_client()


def fetchers_with_s3(client: Any | None = None) -> dict[str, Fetcher]:
    """The core's HTTP(S) fetchers plus ``s3://``."""
    return {**default_fetchers(), "s3": S3Fetcher(client)}
