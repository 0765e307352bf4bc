"""Fixtures shared by the Lambda tests (a pytest plugin, registered in conftest.py).

- ``s3``: the example bucket on each S3 backend (moto, then SeaweedFS: tests/s3_backends.py);
- ``lam``: a fresh execution environment with the tiny model, for one test.

A test module that needs another ``s3`` (moto only, in-process) defines its own, which
takes precedence over these.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.s3_backends import S3Endpoint
from tests.test_lambda_support import cold_lambda

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def s3(s3_endpoint: S3Endpoint) -> S3Client:
    """The example bucket on moto, then on SeaweedFS (tests/s3_backends.py)."""
    return s3_endpoint.client


@pytest.fixture
def lam(
    monkeypatch: pytest.MonkeyPatch, s3: S3Client, tiny_model: Path, tmp_path: Path
) -> Iterator[None]:
    with cold_lambda(monkeypatch, tmp_path / "cache", model_path=str(tiny_model)):
        yield
