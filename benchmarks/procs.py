"""Running one benchmarked process: wall time, time to first output line, peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LAUNCHER = Path(__file__).with_name("peak_rss.py")


def busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS, sum(fields[:8]) / CLOCK_TICKS


def wait_for_quiet(max_wait: float = 60.0, threshold: float = 0.15, window: float = 1.0) -> float:
    """Wait until the machine has been nearly idle for ``window`` seconds (other people's
    processes share it), at most ``max_wait``. Returns the busy fraction last seen."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, total0 = busy_seconds()
        time.sleep(window)
        busy1, total1 = busy_seconds()
        share = (busy1 - busy0) / max(total1 - total0, 1e-9)
        if share <= threshold or time.monotonic() > deadline:
            return share


@dataclass(frozen=True, slots=True)
class ProcResult:
    started_at: float  # time.time() just before the process was started
    wall: float  # process start -> exit, seconds
    first_line: float | None  # process start -> first stdout line, seconds
    lines: int
    max_rss_mb: float
    others: float  # share of the machine's CPUs busy with other processes during the run
    returncode: int
    stdout: str
    stderr: str
    forked_at: float = 0.0  # time.monotonic() when the command was started (system-wide clock)
    line_times: tuple[float, ...] = ()  # process start -> each stdout line, seconds

    def line_time(self, text: str) -> float | None:
        """Process start -> the first stdout line containing ``text``, seconds."""
        for line, seconds in zip(self.stdout.splitlines(), self.line_times, strict=False):
            if text in line:
                return seconds
        return None


@dataclass(frozen=True, slots=True)
class LauncherReport:
    max_rss_kib: int  # the command's own peak RSS
    forked_at: float  # time.monotonic() (system-wide CLOCK_MONOTONIC) just before the fork


def launcher_report(text: str) -> LauncherReport | None:
    """What ``peak_rss.py`` wrote, or None if it could not start the command."""
    fields = text.split()
    if len(fields) != 2:
        return None
    return LauncherReport(int(fields[0]), float(fields[1]))


def python() -> str:
    return sys.executable


def dinoembed_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("dinoembed")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dinoembed.cli"]


def compile_bytecode() -> None:
    """Write dinoembed's bytecode, as installing it does (pip compiles at install time, and
    the Lambda build precompiles). Where PYTHONDONTWRITEBYTECODE is set, as on these build
    machines, an editable checkout would otherwise compile every module it imports on every
    start, which the floors' libraries (installed, compiled) never do."""
    import compileall

    import dinoembed

    root = Path(dinoembed.__file__).parent
    links = [p.resolve() for p in root.iterdir() if p.is_symlink() and p.is_dir()]
    for folder in [root, *links]:  # compileall does not follow the adapters' symlinks
        compileall.compile_dir(folder, quiet=1)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without DINOEMBED_* settings (a benchmark states its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOEMBED_")}
    env["PYTHONDONTWRITEBYTECODE"] = env.get("PYTHONDONTWRITEBYTECODE", "")
    env.update(extra or {})
    return env


def run(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, *, check: bool = True
) -> ProcResult:
    """Run ``cmd``, stamping the first stdout line.

    Peak RSS is the command's own: the small launcher ``peak_rss.py`` starts it and
    reports its ``wait4`` rusage. Taken here, that number would start from this
    process's RSS at fork (see the launcher's docstring).
    """
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as report:
        busy0, total0 = busy_seconds()
        started_at = time.time()
        launched = time.monotonic()
        launch = [sys.executable, "-S", str(LAUNCHER), report.name, *cmd]
        proc = subprocess.Popen(
            launch, stdout=subprocess.PIPE, stderr=err, env=dict(env) if env else None
        )
        assert proc.stdout is not None
        stamps: list[float] = []
        out: list[bytes] = []
        for line in proc.stdout:
            stamps.append(time.monotonic())
            out.append(line)
        _, status, usage = os.wait4(proc.pid, 0)
        ended = time.monotonic()
        busy1, total1 = busy_seconds()
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        peak = launcher_report(report.read())
    # Times count from the launcher's fork of the command, so its own start-up is left out.
    start = launched if peak is None else peak.forked_at
    rss = 0.0 if peak is None else peak.max_rss_kib / 1024.0
    wall = ended - start
    first = stamps[0] - start if stamps else None
    text = b"".join(out).decode(errors="replace")
    ours = usage.ru_utime + usage.ru_stime
    others = max(0.0, (busy1 - busy0 - ours) / max(total1 - total0, 1e-9))
    code = proc.returncode
    times = tuple(stamp - start for stamp in stamps)
    result = ProcResult(
        started_at, wall, first, len(out), rss, others, code, text, stderr, start, times
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {stderr[-2000:]}")
    return result
