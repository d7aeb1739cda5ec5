"""Prometheus exposition: metric families and their text and OpenMetrics 1.0 renderings.

Written here rather than taken from prometheus_client, whose import cost about 8 ms of
start-up and 1.2 MiB of idle memory (it loads http.server, wsgiref, gzip, ...). The output
is the same as prometheus_client 0.26 gave for the families chatd exports, including its
process_*, python_info and python_gc_* families.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# Module attributes so tests can stand in for a /proc that systemd has trimmed.
PROC_STAT = "/proc/stat"
PROC_SELF = "/proc/self"

# Label values in both formats, and HELP in OpenMetrics; the 0.0.4 text format leaves double
# quotes in HELP as they are.
_ESCAPES = str.maketrans({"\\": r"\\", "\n": r"\n", '"': r"\""})
_TEXT_HELP_ESCAPES = str.maketrans({"\\": r"\\", "\n": r"\n"})


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


@dataclass(slots=True)
class Family:
    """One metric family. A counter's name is the OpenMetrics family name, without `_total`."""

    name: str
    help: str
    type: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, labels: dict[str, str] | None = None) -> None:
        suffix = "_total" if self.type == "counter" else ""
        self.samples.append(Sample(self.name + suffix, labels or {}, value))


def counter(name: str, help: str, value: float | None = None) -> Family:
    fam = Family(name, help, "counter")
    if value is not None:
        fam.add(value)
    return fam


def gauge(name: str, help: str, value: float | None = None) -> Family:
    fam = Family(name, help, "gauge")
    if value is not None:
        fam.add(value)
    return fam


def histogram(name: str, help: str, buckets: list[tuple[str, float]], total: float) -> Family:
    """`buckets` are cumulative (upper bound as written in `le`, count), ending with +Inf."""
    fam = Family(name, help, "histogram")
    for le, n in buckets:
        fam.samples.append(Sample(name + "_bucket", {"le": le}, n))
    fam.samples.append(Sample(name + "_count", {}, buckets[-1][1]))
    fam.samples.append(Sample(name + "_sum", {}, total))
    return fam


# --- rendering ---------------------------------------------------------------------------


def render(families: Iterable[Family], accept: str = "") -> tuple[bytes, str]:
    """The exposition body and its content type: OpenMetrics when the scraper asks for it."""
    if wants_openmetrics(accept):
        return render_openmetrics(families), OPENMETRICS
    return render_text(families), TEXT


def wants_openmetrics(accept: str) -> bool:
    # As prometheus_client chooses: the first OpenMetrics entry of version 1 or later (or no
    # version) wins, whatever its q; anything else gets the 0.0.4 text format.
    for entry in accept.split(","):
        media, *params = (p.strip() for p in entry.split(";"))
        if media != "application/openmetrics-text":
            continue
        version = next((p[8:] for p in params if p.startswith("version=")), "")
        major = version.split(".")[0]
        if not version or (major.isdigit() and int(major) >= 1):
            return True
    return False


def render_text(families: Iterable[Family]) -> bytes:
    out: list[str] = []
    for fam in families:
        # The 0.0.4 format names a counter family after its samples.
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out.append(f"# HELP {name} {fam.help.translate(_TEXT_HELP_ESCAPES)}\n")
        out.append(f"# TYPE {name} {fam.type}\n")
        out.extend(_sample_line(s) for s in fam.samples)
    return "".join(out).encode()


def render_openmetrics(families: Iterable[Family]) -> bytes:
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {fam.help.translate(_ESCAPES)}\n")
        out.append(f"# TYPE {fam.name} {fam.type}\n")
        out.extend(_sample_line(s) for s in fam.samples)
    out.append("# EOF\n")
    return "".join(out).encode()


def _sample_line(s: Sample) -> str:
    if not s.labels:
        return f"{s.name} {format_value(s.value)}\n"
    labels = ",".join(f'{k}="{v.translate(_ESCAPES)}"' for k, v in sorted(s.labels.items()))
    return f"{s.name}{{{labels}}} {format_value(s.value)}\n"


def format_value(value: float) -> str:
    """A float as Go writes it (prometheus_client's floatToGoString), so values read the
    same as before: 1.0, +Inf, 2.21896704e+08."""
    d = float(value)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    # Go writes an exponent from 1e+06 up, Python's repr only from 1e+16.
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


# --- the process and Python families prometheus_client's stock collectors gave ---------


def boot_time() -> float:
    """Seconds since the epoch when the machine booted, for process_start_time_seconds.

    systemd's ProcSubset=pid hides /proc/stat; without a fallback every process_* series
    would go. The boot clock gives the same instant to within a second.
    """
    try:
        with open(PROC_STAT, "rb") as stat:
            for line in stat:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_families(btime: float) -> list[Family]:
    """process_* from /proc/self; a part that cannot be read is left out, not an error."""
    out: list[Family] = []
    try:
        with open(f"{PROC_SELF}/stat", "rb") as f:
            # The command name, in parentheses, may hold spaces; fields count from after it.
            parts = f.read().split(b")")[-1].split()
    except OSError:
        parts = []
    if len(parts) > 21:
        out += [
            gauge(
                "process_virtual_memory_bytes", "Virtual memory size in bytes.", float(parts[20])
            ),
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                float(parts[21]) * _PAGE_SIZE,
            ),
            gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                float(parts[19]) / _TICKS + btime,
            ),
            counter(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                (float(parts[11]) + float(parts[12])) / _TICKS,
            ),
        ]
    try:
        max_fds = _max_open_files()
        open_fds = len(os.listdir(f"{PROC_SELF}/fd"))
    except OSError:
        return out
    out.append(gauge("process_open_fds", "Number of open file descriptors.", open_fds))
    if max_fds is not None:
        out.append(gauge("process_max_fds", "Maximum number of open file descriptors.", max_fds))
    return out


def _max_open_files() -> float | None:
    with open(f"{PROC_SELF}/limits", "rb") as limits:
        for line in limits:
            if line.startswith(b"Max open file"):
                return float(line.split()[3])
    return None


def python_info() -> Family:
    major, minor, patchlevel = platform.python_version_tuple()
    fam = gauge("python_info", "Python platform information")
    labels = {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patchlevel,
    }
    fam.add(1, labels)
    return fam


def gc_families() -> list[Family]:
    # gc.get_stats() is CPython's; prometheus_client left these out elsewhere too.
    if platform.python_implementation() != "CPython":
        return []
    collected = Family("python_gc_objects_collected", "Objects collected during gc", "counter")
    uncollectable = Family(
        "python_gc_objects_uncollectable", "Uncollectable objects found during GC", "counter"
    )
    collections = Family(
        "python_gc_collections", "Number of times this generation was collected", "counter"
    )
    for generation, stat in enumerate(gc.get_stats()):
        labels = {"generation": str(generation)}
        collected.add(stat["collected"], labels)
        uncollectable.add(stat["uncollectable"], labels)
        collections.add(stat["collections"], labels)
    return [collected, uncollectable, collections]
