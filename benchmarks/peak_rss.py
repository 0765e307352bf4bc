"""Launcher that runs a command and reports that command's own peak RSS.

Usage: python -S benchmarks/peak_rss.py REPORT_FILE CMD [ARG...]

Why a launcher: on Linux the ``ru_maxrss`` that ``wait4`` returns for a child
starts from the RSS of the process it was forked (or vforked) from. ``exec``
folds the old address space's high-water mark into the child's (kernel
``exec_mmap`` -> ``setmax_mm_hiwater_rss``), so a benchmarked process started
straight from the harness inherits the harness's RSS, and every row reports at
least that. Started from this launcher instead, which is tiny (a bare
interpreter without ``site``, a few MB), the inherited floor is the launcher's
own RSS, far below anything a benchmarked process uses. Reading the child's
``VmHWM`` from ``/proc/<pid>/status`` was the other option, but it has to be
sampled before the process exits, which races with its end.

The command inherits stdin/stdout/stderr, so the caller still sees its output
as it happens. This script writes ``<ru_maxrss KiB> <time.monotonic() at fork>``
to REPORT_FILE (the clock is system-wide, so the caller can leave this
launcher's own start-up out of its timings) and exits
with the command's exit code (128 + N when it was killed by signal N). Only the
standard library's ``os`` and ``sys`` are used, so that it stays small.
"""

import os
import sys
import time


def main(argv: list[str]) -> int:
    report, cmd = argv[0], argv[1:]
    forked_at = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child becomes the command
        try:
            os.execvp(cmd[0], cmd)
        except OSError as err:
            os.write(2, f"peak_rss: cannot run {cmd[0]}: {err}\n".encode())
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(report, "w") as fh:
        fh.write(f"{usage.ru_maxrss} {forked_at!r}\n")
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
