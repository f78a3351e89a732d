"""Peak memory of this process over a block of work, for benchmarks and training records.

    with PeakMemory() as memory:
        docs = list(nlp.pipe(texts))
    memory.to_dict()  # {"start_rss_mib": ..., "peak_rss_mib": ..., "method": ..., ...}

Resident set size (RSS) is what the operating system holds in RAM for the process: the model's
weights, activations, the key/value cache, Python objects. How the peak is taken, best first:

- "vmhwm": Linux keeps the process's high-water mark (`VmHWM` in /proc/self/status); writing
  "5" to /proc/self/clear_refs resets it to the current RSS, so the mark read at the end is the
  exact peak of the block, however short the spike.
- "sampled": elsewhere, a daemon thread reads the RSS (psutil) every `interval` seconds; a spike
  shorter than the interval can be missed.
- "process": neither is available; `resource.getrusage`'s peak since the process started (may
  predate the block; says so in `method`).

On CUDA the peak of torch's allocator over the block is added (`cuda_peak_mib`). Memory freed by
earlier work in the same process may be reused rather than returned to the system, so
`peak_rss_mib - start_rss_mib` is the block's footprint only roughly; for clean figures run each
system in its own process (`scripts/bench_memory.py` does; `scripts/bench_speed.py` keeps the
results of earlier calls, so it can be run one system per call).
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
_OPEN: list[PeakMemory] = []  # blocks being measured, outermost first
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    """A `VmRSS`/`VmHWM`-style field of /proc/self/status, in KiB (None off Linux)."""
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def current_rss_mib() -> float | None:
    """The process's resident set size now, in MiB (None if it cannot be read)."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / MIB


def _reset_high_water_mark() -> bool:
    """Reset Linux's VmHWM to the current RSS; False where that is not possible."""
    if _status_kib("VmHWM") is None:
        return False
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _process_peak_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB


class PeakMemory:
    """Context manager: the process's peak RSS (and CUDA allocator peak) within the block."""

    def __init__(self, interval: float = 0.02) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self.method: str | None = None
        self.start_rss_mib: float | None = None
        self.peak_rss_mib: float | None = None
        self.end_rss_mib: float | None = None
        self.cuda_peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0.0
        self._carried_mib = 0.0  # the mark before an inner block reset it
        self._carried_cuda_mib = 0.0

    def __enter__(self) -> PeakMemory:
        self.start_rss_mib = current_rss_mib()
        # Blocks nest (a benchmark around an evaluation): the mark is reset for the inner block,
        # so the outer ones keep what it had reached.
        mark = _status_kib("VmHWM")
        if mark is not None:
            for outer in _OPEN:
                outer._carried_mib = max(outer._carried_mib, mark / 1024)
        if _reset_high_water_mark():
            self.method = "vmhwm"
        elif self.start_rss_mib is not None:
            self.method = "sampled"
            self._sampled_peak = self.start_rss_mib
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.method = "process"
        if _cuda_in_use():  # else CUDA starts inside the block, if at all: its peak is the block's
            import torch

            cuda_mark = torch.cuda.max_memory_allocated() / MIB
            for outer in _OPEN:
                outer._carried_cuda_mib = max(outer._carried_cuda_mib, cuda_mark)
            torch.cuda.reset_peak_memory_stats()
        _OPEN.append(self)
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = current_rss_mib()
            if rss is not None and rss > self._sampled_peak:
                self._sampled_peak = rss

    def __exit__(self, *exc_info: object) -> None:
        if self in _OPEN:
            _OPEN.remove(self)
        self.end_rss_mib = current_rss_mib()
        if self.method == "vmhwm":
            kib = _status_kib("VmHWM")
            peak = kib / 1024 if kib is not None else None
        elif self.method == "sampled":
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak = self._sampled_peak
        else:
            peak = _process_peak_mib()
        # The block's first and last readings are part of it. The kernel's mark can sit a little
        # below the RSS read at the start (RSS counters are batched per thread, and memory freed
        # between that reading and the reset lowers the mark's base), so it never stands alone.
        readings = [v for v in (peak, self.start_rss_mib, self.end_rss_mib) if v is not None]
        if readings and self._carried_mib:  # what inner blocks reached (and reset away)
            readings.append(self._carried_mib)
        self.peak_rss_mib = max(readings) if readings else None
        for outer in _OPEN:  # an enclosing block's peak is at least this one's
            outer._carried_mib = max(outer._carried_mib, self.peak_rss_mib or 0.0)
        if _cuda_in_use():
            import torch

            self.cuda_peak_mib = max(
                torch.cuda.max_memory_allocated() / MIB, self._carried_cuda_mib
            )

    def to_dict(self) -> dict[str, Any]:
        """The figures, rounded to 0.1 MiB; `method` says how the peak was taken."""

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {
            "start_rss_mib": rounded(self.start_rss_mib),
            "peak_rss_mib": rounded(self.peak_rss_mib),
            "end_rss_mib": rounded(self.end_rss_mib),
            "cuda_peak_mib": rounded(self.cuda_peak_mib),
            "method": self.method,
        }


def _cuda_in_use() -> bool:
    """True when torch is already imported and has CUDA (never imports torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_initialized())
    except Exception:  # a broken CUDA setup must not break a measurement
        return False
