"""Invoke the Lambda handler in this process as the Lambda runtime would: import, then events.

Usage: python -m benchmarks.lambda_invoke RESULT.json EVENT.json...
Writes, per event, the wall-clock time when the response came back, the
invocation's own duration and the response. The first event is the cold start.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dinoembed.handler.app import lambda_handler


@dataclass
class Context:
    function_name: str = "dinoembed-bench"
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:dinoembed-bench"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def main(argv: list[str]) -> int:
    result_path, events = Path(argv[0]), [Path(a) for a in argv[1:]]
    report = []
    for event_path in events:
        event = json.loads(event_path.read_text())
        start = time.perf_counter()
        response = lambda_handler(event, Context())
        seconds = time.perf_counter() - start
        report.append({"done_at": time.time(), "seconds": seconds, "response": response})
    result_path.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
