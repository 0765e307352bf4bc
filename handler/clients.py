"""AWS clients for the handler and the CLI, made with botocore.

``boto3.client(...)`` is botocore's ``Session.create_client`` behind boto3's resource
layer and its s3transfer upload/download helpers, none of which dinoembed uses; importing
them costs ~55 ms of every Lambda cold start (the S3 client is made before the first
image is fetched: ``python -m benchmarks.lambda_bundled --breakdown``). The clients made
here are the same botocore clients, configured the same way: region, credentials and
endpoint (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_<SERVICE>``) from the standard AWS
variables and files, read afresh for each client.

Each client gets a session of its own (credentials and settings are never carried over
from an earlier client), but they share one data loader: the service models and the
endpoint and partition data read from disk for the first client (~60 ms) serve the next
ones, so the S3 Vectors client made beside S3's at a cold start takes ~10 ms, not ~50.
"""

from __future__ import annotations

import threading
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.loaders import Loader

_lock = threading.Lock()
_loader: Loader | None = None


def make_aws_client(service: str, config: Config) -> Any:
    """A botocore client for ``service`` (``"s3"``, ``"s3vectors"``, ``"sqs"``)."""
    global _loader
    session = botocore.session.get_session()
    with _lock:  # a loader's caches are not thread-safe
        if _loader is None:
            _loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _loader)
        return session.create_client(service, config=config)
