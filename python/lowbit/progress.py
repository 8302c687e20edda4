"""Progress of lowbit's long phases, rendered one way everywhere.

The Rust crates report every long phase (``load``, ``calibrate``, ``blocks``, ``write``,
``perplexity``, ``generate``) through one interface, :class:`Progress`: ``start(name, total)``,
``advance(n)``, ``metric(name, value)`` and ``finish()``. Any object with these methods can be
passed as ``progress=`` to :func:`lowbit.quantize_model`, :meth:`lowbit.Model.load`,
:meth:`lowbit.Model.perplexity` and :meth:`lowbit.Model.generate`; :class:`Bars` is the renderer
the command line uses. While a phase runs, Ctrl-C stops the work within about a second (the
native code polls for signals whether or not a renderer is given) and raises
``KeyboardInterrupt``.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Protocol

from tqdm import tqdm

#: Seconds between the status lines a long phase prints when the output is not a terminal.
STATUS_INTERVAL = 5.0


class Progress(Protocol):
    """What the native code calls while it works (every method may be a no-op)."""

    def start(self, name: str, total: int) -> None:
        """Phase ``name`` begins with ``total`` units of work (0 when unknown)."""

    def advance(self, n: int) -> None:
        """``n`` more units are done; ``advance(0)`` is a heartbeat, sent about once a second
        while a phase runs."""

    def metric(self, name: str, value: float) -> None:
        """A figure to show beside the bar (``loss`` of the last block, ``ppl`` so far)."""

    def finish(self) -> None:
        """The phase ended (also on error or Ctrl-C)."""


class Bars:
    """The command line's renderer, on stderr.

    On a terminal each phase is a tqdm bar (units done, rate, ETA, the latest metrics). Anywhere
    else (a log file, CI) each phase prints one line when it ends, with its elapsed time, and a
    status line every :data:`STATUS_INTERVAL` seconds while it runs, so a long run is never
    silent. ``enabled=False`` shows nothing.
    """

    def __init__(
        self,
        enabled: bool = True,
        *,
        file: IO[str] | None = None,
        tty: bool | None = None,
        interval: float = STATUS_INTERVAL,
    ) -> None:
        self.enabled = enabled
        self.file = file if file is not None else sys.stderr
        self.tty = self.file.isatty() if tty is None else tty
        self.interval = interval
        self._bar: tqdm[Any] | None = None
        self._name = ""
        self._total = 0
        self._done = 0
        self._metrics: dict[str, float] = {}
        self._started = 0.0
        self._last_line = 0.0

    def start(self, name: str, total: int) -> None:
        self.finish()
        self._name, self._total, self._done, self._metrics = name, total, 0, {}
        self._started = self._last_line = time.perf_counter()
        if self.enabled and self.tty:
            self._bar = tqdm(
                total=total or None, desc=name, unit="", file=self.file, leave=True, dynamic_ncols=True
            )

    def advance(self, n: int) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and not self.tty and time.perf_counter() - self._last_line >= self.interval:
            self._line("...")

    def metric(self, name: str, value: float) -> None:
        self._metrics[name] = value
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in self._metrics.items()}, refresh=False)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and not self.tty and self._name:
            self._line("done")
        self._name = ""

    def _line(self, state: str) -> None:
        now = time.perf_counter()
        self._last_line = now
        count = f"{self._done}/{self._total}" if self._total else str(self._done)
        figures = "".join(f", {k} {v:.4g}" for k, v in self._metrics.items())
        print(
            f"lowbit: {self._name}: {count} {state} ({now - self._started:.1f} s{figures})",
            file=self.file,
            flush=True,
        )
