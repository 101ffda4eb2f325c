"""Admission and concurrency: who may start a pod now, and the threads that run steps.

Three limits apply to every pod, taken in this order (``pod.Pod.admit``): ``spec.parallelism``
(:class:`Tokens`), this runner's own cap (:class:`PodGate`), and the machine-wide slot shared with
other kiln processes (``kiln.runners._slots``). Threads come from one process-wide pool
(:data:`WORKERS`); a DAG task that is a plain pod waits in the gate as a callable and is handed
to the thread whose pod frees a place (:data:`HANDOFF`, :func:`drive`, :func:`hand`).
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
from collections.abc import Callable


class Tokens:
    """spec.parallelism: a counting semaphore whose acquire/release run in C (queue.SimpleQueue);
    threading.Semaphore is Python code around a Condition, paid on every pod."""

    def __init__(self, n: int) -> None:
        self.q: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(n):
            self.q.put(None)

    def acquire(self, timeout: float) -> bool:
        try:
            self.q.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        self.q.put(None)


class PodGate:
    """The runner's cap on pods running at once, with one FIFO of what waits for a place: a
    parked thread (an Event) or a DAG task start (a callable, not yet on any thread).

    Why not just a semaphore: a DAG with many ready pods then parks a thread per pod on it, and
    every release wakes one of them. Measured on 2 cores, 100 `true` pods at width 10: with 20
    threads parked on 2 places the same work took 1.27x as long as with 2 threads that each take
    the next task themselves. So a DAG task that is a plain pod waits here as a callable, and
    the thread whose pod frees a place runs it next (``dag.DagRun``'s driver loop).
    """

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: collections.deque[threading.Event | Callable[[], None]] = collections.deque()
        self.lock = threading.Lock()

    def try_start(self, fn: Callable[[], None]) -> bool:
        """Take a place for ``fn`` (True: the caller runs it), or queue ``fn`` to be handed to
        the thread of the pod that next frees one (False)."""
        with self.lock:
            if self.free > 0:
                self.free -= 1
                return True
            self.waiters.append(fn)
            return False

    def acquire(self, check: Callable[[], None]) -> None:
        """Take a place, waiting on this thread; ``check`` runs every 0.2 s and may raise."""
        with self.lock:
            if self.free > 0:
                self.free -= 1
                return
            ev = threading.Event()
            self.waiters.append(ev)
        try:
            while not ev.wait(0.2):
                check()
        except BaseException:
            with self.lock:
                try:
                    self.waiters.remove(ev)
                    granted = False
                except ValueError:  # handed a place while giving up
                    granted = True
            if granted:
                hand(self.release(), inline=False)
            raise

    def release(self) -> Callable[[], None] | None:
        """Free a place. If a task start was waiting it now holds the place and is returned: the
        caller must run it (or submit it to a worker)."""
        with self.lock:
            if self.waiters:
                w = self.waiters.popleft()
                if isinstance(w, threading.Event):
                    w.set()
                    return None
                return w
            self.free += 1
            return None


class Handoff(threading.local):
    """Per thread: ``place`` is True while a DAG task started through the gate holds a place its
    pod has not taken yet; ``queue`` collects the starts handed to this thread to run next
    (None outside a driver loop)."""

    place = False
    queue: list[Callable[[], None]] | None = None


HANDOFF = Handoff()


def drive(fn: Callable[[], None]) -> None:
    """Run ``fn``, then what it handed to this thread: the first inline, the rest on workers."""
    tl = HANDOFF
    outer = tl.queue
    tl.queue = []
    try:
        while True:
            try:
                fn()
            except BaseException:  # noqa: BLE001 - callers record their own failures
                pass
            if not tl.queue:
                return
            fn, *rest = tl.queue
            tl.queue = []
            for r in rest:
                WORKERS.submit(functools.partial(drive, r))
    finally:
        tl.queue = outer


def hand(fn: Callable[[], None] | None, inline: bool) -> None:
    """A start that now holds a place: to this thread's driver loop when ``inline``, else a worker."""
    if fn is None:
        return
    q = HANDOFF.queue
    if inline and q is not None:
        q.append(fn)
    else:
        WORKERS.submit(functools.partial(drive, fn))


class Workers:
    """A process-wide pool of reusable threads that grows whenever no thread is idle.

    Why not ThreadPoolExecutor: a step that runs a steps/dag template blocks until its children
    finish, so a bounded pool deadlocks on deep nesting; why not a thread per step: starting a
    thread costs about as much as spawning `true` on a small VM. Concurrency is bounded by the
    runner's gate (PodGate), the machine-wide slots (kiln.runners._slots) and spec.parallelism,
    not by this pool.
    """

    def __init__(self) -> None:
        self.q: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.idle = 0
        self.lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        with self.lock:
            spawn = self.idle == 0
            if not spawn:
                self.idle -= 1
        self.q.put(fn)
        if spawn:
            threading.Thread(target=self._loop, name="kiln-worker", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn = self.q.get()
            try:
                fn()
            except BaseException:  # noqa: BLE001 - callers record their own failures
                pass
            with self.lock:
                self.idle += 1


WORKERS = Workers()


def run_parallel(fns: list[Callable[[], None]]) -> None:
    """Run callables concurrently and wait for all; the last runs on the calling thread."""
    if not fns:
        return
    done = threading.Semaphore(0)

    def wrap(f: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                f()
            finally:
                done.release()
        return run

    for f in fns[:-1]:
        WORKERS.submit(wrap(f))
    fns[-1]()
    for _ in fns[:-1]:
        done.acquire()


def start(fn: Callable[[], None]) -> threading.Event:
    """Run ``fn`` on a pooled thread (starting threads per run costs milliseconds under load);
    the event is set once it has returned or raised."""
    done = threading.Event()

    def body() -> None:
        try:
            fn()
        finally:
            done.set()

    WORKERS.submit(body)
    return done
