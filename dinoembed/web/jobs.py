"""The seed plugin's job documents (``POST /jobs/dino_embedding``), answered already done,
and the last few kept in memory for ``GET /jobs/{job_id}``."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from typing import Any

from dinoembed.results.schema import EmbeddingResult, utc_now

TASK_TYPE = "dino_embedding"
# "ok" is the seed's value for a finished job; its example client checks it.
JOB_DONE = "ok"


def job_document(result: EmbeddingResult, *, normalize: bool) -> dict[str, Any]:
    """The seed's job, finished: its ``task_output`` is the seed's DinoEmbeddingOutput."""
    file_result = {
        "file_path": result.file_path,
        "embedding": result.embedding.model_dump() if result.embedding else None,
        "status": result.status,
        "error": result.error,
    }
    return {
        "job_id": str(uuid.uuid4()),
        "status": JOB_DONE,
        "task_type": TASK_TYPE,
        "created_at": utc_now(),
        "task_output": {"files": [file_result], "total_files": 1, "normalize": normalize},
    }


class JobStore:
    """The last ``capacity`` jobs of this process, oldest dropped first; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, job: dict[str, Any]) -> None:
        with self._lock:
            self._jobs[job["job_id"]] = job
            while len(self._jobs) > self.capacity:
                self._jobs.popitem(last=False)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._jobs.get(job_id)
