"""What a run tells its user: progress lines and TensorBoard scalars, the stage's ``console.log`` (echoed by a
driver whose Ray does not forward worker output), Ray Train reports, and Ctrl-C that saves a checkpoint."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from trainer.parallel import Dist


class _Progress:
    """Metrics to TensorBoard every 10 steps; a progress line (step of steps, metrics, tokens/s over all
    workers, ETA) at most every ``every_s`` seconds and at the last step, so a long stage stays readable."""

    def __init__(self, stage: str, start: int, total: int, dist: Dist, every_s: float = 15.0):
        self.stage, self.start, self.total, self.dist = stage, start, total, dist
        self.t0 = self.t_last = time.monotonic()
        self.tokens = 0
        self.every_s, self.said = every_s, None

    def log(self, writer, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        metrics["tokens_per_s"] = self.tokens * self.dist.world / max(now - self.t_last, 1e-9)
        self.t_last, self.tokens = now, 0
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"{self.stage}/{k}", v, step)
        if self.said is not None and now - self.said < self.every_s and step < self.total:
            return
        self.said = now
        per_step = (now - self.t0) / max(1, step - self.start)
        eta = per_step * (self.total - step)
        _say(self.dist, f"{self.stage} step {step}/{self.total}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
             + f" eta {int(eta // 60)}m{int(eta % 60):02d}s")


class _Interrupt:
    """Ctrl-C during training: the step in progress finishes, a checkpoint is saved and the run stops with
    KeyboardInterrupt (exit 130); a second Ctrl-C stops at once. Only in the main thread of a local run
    (under Ray Train the driver handles Ctrl-C)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._old = None

    def __enter__(self) -> "_Interrupt":
        if self.enabled:
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("[audiomill] stopping after this step (Ctrl-C again to stop at once)", flush=True)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._old)


def _writer(stage_dir: str):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(stage_dir, "tensorboard"))


def _say(dist: Dist, msg: str) -> None:
    if dist.rank != 0:
        return
    if dist.console:
        with open(dist.console, "a") as f:
            f.write(f"[audiomill] {msg}\n")
    if dist.ray:   # Ray Train's patched print both tees and logs a print: write to the stream once
        sys.__stdout__.write(f"[audiomill] {msg}\n")
        sys.__stdout__.flush()
    else:
        print(f"[audiomill] {msg}", flush=True)


def _report(dist: Dist, metrics: dict[str, Any], folder: str | None) -> None:
    """Every rank reports (Ray Train synchronises on it); only rank 0 hands over the checkpoint."""
    if dist.ray:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint)


CONSOLE = "console.log"


class _Echo:
    """Prints the lines rank 0 appends to the stage's ``console.log`` while Ray Train runs, for a driver
    whose Ray does not forward worker output (``audiomill run`` starts Ray quiet for its data phases)."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled = path, enabled
        self.stop = threading.Event()
        self.offset = os.path.getsize(path) if enabled and os.path.exists(path) else 0

    def __enter__(self) -> "_Echo":
        if self.enabled:
            self.thread = threading.Thread(target=self._run, name="audiomill-echo", daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            f.seek(self.offset)
            text = f.read()
        end = text.rfind("\n") + 1          # whole lines only
        if end:
            sys.stdout.write(text[:end])
            sys.stdout.flush()
            self.offset += len(text[:end].encode())

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join()

