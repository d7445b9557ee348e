"""What a run tells the person or scheduler watching it: each step's start, its end with its
time and summary, a heartbeat while a long step works, and the time per step at the end; as
text, as one JSON event per line (--log-format json, for schedulers), or only the verdict
(--quiet). Everything a step prints on its own (Keras' epochs, "reusing ...") goes through here
too: labelled with its step in JSON, dropped when quiet."""
import contextlib
import io
import json
import sys
import threading
import time

HEARTBEAT_SECONDS = 30
VERDICT_STEPS = ("Evaluator", "Pusher")  # what --quiet still prints


class Progress:
    def __init__(self, log_format: str = "text", quiet: bool = False, stall_seconds: float = 3600):
        self.json, self.quiet = log_format == "json", quiet
        self.out = sys.stdout  # the real one: what steps print is redirected (capture)
        self.step, self.times, self.started = None, {}, time.perf_counter()
        self.reused = set()
        self.stall_seconds, self.active = stall_seconds, time.perf_counter()
        self._lock = threading.Lock()

    def emit(self, event: str, text: str | None = None, **fields) -> None:
        """One event: a JSON line, or its text (if any, and if not quiet)."""
        with self._lock:
            if self.json:
                fields = {"event": event, "time": round(time.time(), 3), **fields}
                self.out.write(json.dumps(fields, default=str) + "\n")
            elif text is not None:
                self.out.write(text + "\n")
            self.out.flush()

    @contextlib.contextmanager
    def capture(self):
        """Redirect what the run prints by itself into log events."""
        with contextlib.redirect_stdout(_Lines(self)):
            yield

    @contextlib.contextmanager
    def running(self, step: str):
        """A step at work: its start, a heartbeat every HEARTBEAT_SECONDS, its elapsed time; and
        a watchdog that ends the run when the step printed nothing for stall_seconds, so a hang
        (a stalled network disk, a stuck worker) never holds the pipeline root for good."""
        self.step, started, done = step, time.perf_counter(), threading.Event()
        self.active = started
        self.emit("step_started", None if self.quiet else f"{step}: started", step=step)

        def beat():
            check = min(HEARTBEAT_SECONDS, max(self.stall_seconds / 4, 0.5))
            last_beat = started
            while not done.wait(check):
                now = time.perf_counter()
                if now - self.active > self.stall_seconds:
                    self._stalled(step, now - self.active)
                if now - last_beat >= HEARTBEAT_SECONDS:
                    last_beat = now
                    self.emit("step_running", None if self.quiet else
                              f"{step}: still running ({_duration(now - started)})", step=step,
                              seconds=round(now - started, 1))

        heartbeat = threading.Thread(target=beat, daemon=True)
        heartbeat.start()
        try:
            yield
        finally:
            done.set()
            heartbeat.join()
            self.times[step] = time.perf_counter() - started
            self.step = None

    def finished(self, step: str, summary: str, cached: bool, folder: str) -> None:
        seconds = self.times[step]
        if cached:
            self.reused.add(step)
        shown = not self.quiet or step in VERDICT_STEPS
        self.emit("step_finished", (summary + ("" if self.quiet else
                                               f"\n{step}: done in {_duration(seconds)}"
                                               + (" (reused)" if cached else "")))
                  if shown else None, step=step, seconds=round(seconds, 2), cached=cached,
                  folder=folder, summary=summary)

    def log(self, line: str) -> None:
        self.active = time.perf_counter()
        self.emit("log", None if self.quiet else line, step=self.step, message=line)

    def _stalled(self, step: str, seconds: float) -> None:
        """End the process at once, as a kill would (the stuck thread cannot be interrupted):
        the lock goes with it, and the next run records the step FAILED and starts it over."""
        import os
        import textwrap

        error = (f"{step} made no progress for {_duration(seconds)} (nothing printed; "
                 f"--stall-timeout {self.stall_seconds:g}): the run was stopped so that it does "
                 f"not hold the pipeline root for good. Look for what it waits on (a network "
                 f"disk, a Beam worker, a full disk), or raise --stall-timeout for steps that "
                 f"are slow but sound; the next run records the step FAILED and starts it over.")
        print(textwrap.fill(f"error: {error}", width=100), file=sys.stderr, flush=True)
        self.failed(error, 3)
        os._exit(3)

    def message(self, line: str) -> None:
        """A line that belongs to the run's outcome (shown even when quiet)."""
        self.emit("message", line, message=line)

    def end(self, extra: str) -> None:
        total = time.perf_counter() - self.started
        width = max(map(len, self.times), default=0)
        table = [f"Time per step ({_duration(total)} in all):",
                 *(f"  {step:<{width}}  {_duration(s):>9}" + ("  reused" if step in self.reused
                                                             else "")
                   for step, s in self.times.items())]
        self.emit("run_finished", None if self.quiet else "\n".join([*table, extra]),
                  seconds=round(total, 2), steps={k: round(v, 2) for k, v in self.times.items()},
                  metadata=extra)

    def failed(self, error: str, exit_code: int) -> None:
        """For schedulers reading JSON; the paragraph itself goes to stderr as always."""
        if self.json:
            self.emit("run_failed", error=error, exit_code=exit_code,
                      seconds=round(time.perf_counter() - self.started, 2))


class _Lines(io.TextIOBase):
    """A stdout that hands each complete line to Progress.log."""

    def __init__(self, progress: Progress):
        self.progress, self.pending = progress, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.progress.log(line)
        return len(text)

    def flush(self) -> None:
        self.progress.out.flush()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s"
