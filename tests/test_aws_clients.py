"""AWS clients are botocore's, each configured afresh from the standard AWS variables."""

from __future__ import annotations

import pytest

from dinoembed.handler.clients import make_aws_client
from dinoembed.handler.s3io import client_config
from tests.helpers import python_stdout

NO_BOTO3 = """
import sys
from dinoembed.handler.s3io import make_client
client = make_client()
print(type(client).__name__, client.meta.region_name, "boto3" in sys.modules)
"""


def test_an_s3_client_needs_no_boto3() -> None:
    # WHEN a fresh interpreter makes the handler's S3 client
    out = python_stdout(NO_BOTO3, env={"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "eu-west-3"})
    # THEN it is botocore's S3 client for the region asked, and boto3 (s3transfer and its
    # resource layer, ~55 ms of a cold start) was never imported
    assert out.split() == ["S3", "eu-west-3", "False"]


def test_each_client_reads_the_credentials_and_endpoint_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a client made with one set of credentials and endpoint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9001")
    first = make_aws_client("s3", client_config())
    # WHEN the variables change (another test's server, a rotated key) and another is made
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "second-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9002")
    second = make_aws_client("s3", client_config())
    # THEN each has its own (nothing is carried over from the first)
    assert first._request_signer._credentials.access_key == "first"
    assert second._request_signer._credentials.access_key == "second"
    assert (first.meta.endpoint_url, second.meta.endpoint_url) == (
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9002",
    )
