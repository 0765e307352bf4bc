"""Fuzzing the Lambda event normaliser: arbitrary JSON and near-valid events.

``normalise`` may only return an Invocation or raise UnrecognisedEventError;
every key it returns must be the URL-decoding of a key string in the event,
and every field it returns must have the documented type.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dinoembed.handler.events import Invocation, UnrecognisedEventError, normalise
from tests.reliability_plugin import fuzz_examples, tried

pytestmark = pytest.mark.reliability("fuzzing: event normaliser")

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
keys = st.text(min_size=1, max_size=40)


def _weird(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field that is usually right and sometimes anything at all."""
    return strategy | json_values


@st.composite
def s3_record(draw: st.DrawFn) -> dict[str, Any]:
    key = draw(keys)
    obj = {
        "key": draw(_weird(st.just(quote_plus(key)))),
        "size": draw(_weird(st.integers(0, 10**12))),
        "eTag": draw(_weird(st.text(alphabet="0123456789abcdef", max_size=32))),
        "versionId": draw(_weird(st.text(max_size=10))),
    }
    record = {
        "eventSource": draw(_weird(st.just("aws:s3"))),
        "eventName": draw(_weird(st.sampled_from(["ObjectCreated:Put", "ObjectRemoved:Delete"]))),
        "s3": draw(
            _weird(
                st.just(
                    {
                        "bucket": {"name": draw(_weird(st.just("bucket")))},
                        "object": draw(_weird(st.just(obj))),
                    }
                )
            )
        ),
    }
    for field in draw(st.sets(st.sampled_from(sorted(record)))):
        del record[field]
    return record


@st.composite
def eventbridge(draw: st.DrawFn) -> dict[str, Any]:
    obj = {
        "key": draw(_weird(st.just(quote_plus(draw(keys))))),
        "size": draw(_weird(st.integers(0, 10**9))),
        "etag": draw(_weird(st.text(max_size=8))),
    }
    return {
        "source": "aws.s3",
        "detail-type": draw(_weird(st.just("Object Created"))),
        "detail": draw(_weird(st.just({"bucket": {"name": "b"}, "object": obj}))),
    }


@st.composite
def sqs(draw: st.DrawFn) -> dict[str, Any]:
    messages = []
    for i in range(draw(st.integers(1, 4))):
        inner = draw(
            st.one_of(
                st.builds(lambda r: {"Records": r}, st.lists(s3_record(), min_size=1, max_size=3)),
                eventbridge(),
                json_values,
            )
        )
        body = draw(_weird(st.just(json.dumps(inner)))) if draw(st.booleans()) else "Infinity"
        messages.append({"messageId": f"m{i}", "eventSource": "aws:sqs", "body": body})
    return {"Records": messages}


events = st.one_of(
    json_values,
    st.builds(lambda r: {"Records": r}, st.lists(s3_record(), min_size=1, max_size=4)),
    eventbridge(),
    sqs(),
)


def _key_strings(value: Any) -> set[str]:
    """Every string anywhere in the event, JSON-encoded bodies unwrapped."""
    found: set[str] = set()
    if isinstance(value, str):
        found.add(value)
        with contextlib.suppress(ValueError):
            found |= _key_strings(json.loads(value))
    elif isinstance(value, dict):
        for item in value.values():
            found |= _key_strings(item)
    elif isinstance(value, list):
        for item in value:
            found |= _key_strings(item)
    return found


def _check(event: Any) -> None:
    tried()
    try:
        invocation = normalise(event)
    except UnrecognisedEventError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(invocation, Invocation)
    strings = {unquote_plus(s) for s in _key_strings(event)}
    for ref in invocation.refs:
        assert isinstance(ref.bucket, str) and ref.bucket
        assert isinstance(ref.key, str) and ref.key in strings
        assert ref.size is None or (isinstance(ref.size, int) and ref.size >= 0)
        assert ref.etag is None or isinstance(ref.etag, str)
        assert ref.version_id is None or isinstance(ref.version_id, str)
    assert all(isinstance(m, str) for m in invocation.bad_messages)


@settings(max_examples=fuzz_examples(200), deadline=None)
@given(event=events)
def test_normaliser_returns_decoded_keys_or_the_documented_error(event: Any) -> None:
    _check(event)


@pytest.mark.parametrize(
    "event",
    [
        {
            "Records": [
                {
                    "eventSource": "aws:sqs",
                    "messageId": "m",
                    "body": '{"Records": '
                    '[{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": '
                    '{"bucket": {"name": "b"}, "object": {"key": "k", "size": Infinity}}}]}',
                }
            ]
        },
        {
            "source": "aws.s3",
            "detail-type": "Object Created",
            "detail": {"bucket": {"name": "b"}, "object": [1, 2]},
        },
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": "k", "versionId": {}}},
                }
            ]
        },
    ],
    ids=["infinite-size", "object-is-a-list", "version-is-an-object"],
)
def test_known_tricky_events(event: Any) -> None:
    _check(event)
