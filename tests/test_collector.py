"""The Lambda handler imports without cyclic garbage collections (dinoembed.common.collector)."""

from __future__ import annotations

import json

from tests.helpers import python_stdout

# Collections counted (gc.callbacks) while the handler module imports, in a fresh process,
# from its first import after the pause (the preload module: the packages above it and
# the collector module itself import before the pause can start).
IMPORT_HANDLER = """
import gc, json, sys
WINDOW = "dinoembed.handler.preload"
runs = []
gc.callbacks.append(lambda phase, _: phase == "stop" and WINDOW in sys.modules and runs.append(1))
if sys.argv[1] == "paused-already":
    gc.disable()
import dinoembed.handler.app
print(json.dumps({"collections": len(runs), "enabled": gc.isenabled(),
                  "frozen": gc.get_freeze_count()}))
"""

# The same imports with the collector left to itself: what the pause saves.
IMPORT_UNPAUSED = """
import gc, json, sys
WINDOW = "dinoembed.handler.preload"
from dinoembed.common import collector
collector.pause_collection = lambda: (lambda: None)
runs = []
gc.callbacks.append(lambda phase, _: phase == "stop" and WINDOW in sys.modules and runs.append(1))
import dinoembed.handler.app
print(json.dumps({"collections": len(runs)}))
"""


def test_the_handler_imports_with_no_collection_then_collects_again() -> None:
    # GIVEN a fresh process, whose imports alone trigger many collections
    assert json.loads(python_stdout(IMPORT_UNPAUSED))["collections"] > 10
    # WHEN it imports the Lambda handler
    report = json.loads(python_stdout(IMPORT_HANDLER, "default"))
    # THEN no collection ran meanwhile, and the collector is back on, with what the
    # imports left frozen (never traversed again)
    assert report["collections"] == 0
    assert report["enabled"] is True
    assert report["frozen"] > 10_000


def test_a_process_that_disabled_the_collector_keeps_it_disabled() -> None:
    # GIVEN a host process that disabled the collector itself
    report = json.loads(python_stdout(IMPORT_HANDLER, "paused-already"))
    # THEN importing the handler leaves that choice alone: nothing enabled, nothing frozen
    assert report == {"collections": 0, "enabled": False, "frozen": 0}
