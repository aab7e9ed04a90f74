"""Run groups of work units in worker processes, one torch thread each, with one progress bar.

Why: on a small CPU machine many tiny torch ops (the downstream heads) run far faster in one thread
than in two threads that wait for each other (much worse still when other programs share the cores),
so `jobs` single-threaded workers use the cores better than one multi-threaded process. Units of a
group run in order in one worker (e.g. one task and encoder: the full training set first fills the
feature cache that the smaller fractions then read); groups run in parallel.

`fn(cfg, item)` runs in a worker and returns a dict message; it may also send progress messages
with `report(msg)`. Workers are started with forkserver (clean processes that import torch once).
"""
from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, List, Optional

from tqdm import tqdm

_QUEUE = None


class StderrProxy:
    """stderr under another identity: SpeechBrain's tqdm-aware log handler (whose output goes to each
    run's console.txt) then leaves our bar alone instead of redrawing it for every log line."""

    def write(self, text):
        return sys.__stderr__.write(text)

    def flush(self):
        sys.__stderr__.flush()

    def isatty(self):
        return sys.__stderr__.isatty()


def _init_worker(q, threads: int) -> None:
    global _QUEUE
    _QUEUE = q
    os.environ["OMP_NUM_THREADS"] = str(threads)
    from rewire_lib.training.cpu_memory import bound_kernel_cache

    bound_kernel_cache()  # before the worker's first unit builds a kernel
    import torch

    torch.set_num_threads(threads)


def report(msg: dict) -> None:
    """Send a progress message to the main process (printed there); in-process: printed at once."""
    if _QUEUE is not None:
        _QUEUE.put(msg)
    else:
        _print(msg, None)


def _print(msg: dict, bar: Optional[tqdm]) -> None:
    text = msg.get("text")
    if text:
        (bar.write if bar is not None else print)(text)
        if bar is None:
            sys.stdout.flush()


def _call(fn, cfg, group) -> List[dict]:
    """In a worker: run a group's items in order; each result is shown at once (queue) and returned."""
    import resource

    out = []
    for item in group:
        msg = fn(cfg, item)
        msg["worker_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        _QUEUE.put(dict(msg, unit_done=True))
        out.append(msg)
    return out


def run_groups(fn: Callable, cfg, groups: List[list], jobs: int, threads: int, desc: str,
               isolate: bool = False) -> List[dict]:
    """Run `fn(cfg, item)` for every item of every group; returns the messages `fn` returned.

    Each message counts one unit on the bar (its "text" is printed above the bar). With jobs <= 1 (or a
    single group) the items run in this process, unless `isolate` asks for a worker process anyway
    (work whose memory should be returned to the system when it ends, such as rewiring)."""
    total = sum(len(g) for g in groups)
    bar = tqdm(total=total, desc=desc, unit="unit", dynamic_ncols=True, file=StderrProxy())
    results: List[dict] = []
    if not isolate and (jobs <= 1 or len(groups) <= 1):
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(max(threads, 1) if jobs <= 1 else max(threads * jobs, 1))
        try:
            for group in groups:
                for item in group:
                    msg = fn(cfg, item)
                    results.append(msg)
                    _print(msg, bar)
                    bar.update(1)
        finally:
            torch.set_num_threads(old)
            bar.close()
        return results
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["rewire_study.stages", "rewire_lib.downstream", "rewire_lib.analysis.isotropy"])
    q = ctx.Queue()
    workers = max(1, min(jobs, len(groups)))
    # one worker alone gets the threads of all the jobs
    per_worker = threads if workers > 1 or jobs <= 1 else threads * jobs
    # a fresh worker per group (cheap: forked from the preloaded forkserver) returns each group's
    # memory to the system; long-lived workers grew by allocator and oneDNN shape caches
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(q, per_worker), max_tasks_per_child=1)
    try:
        futures = [pool.submit(_call, fn, cfg, g) for g in groups]
        pending = set(futures)
        while pending:
            _drain(q, bar)
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                fut.result()  # a worker that died raises here
        pool.shutdown(wait=True)
        # after the workers have exited: a worker's queue is flushed by its feeder thread at exit, so a
        # last unit's message can arrive after its future is done (the third rewiring's line went missing)
        _drain(q, bar)
        for fut in futures:  # the authoritative results (queue messages are for showing progress)
            results.extend(fut.result())
        bar.n = total
        bar.refresh()
    except BaseException:  # a failed unit, Ctrl-C or SIGTERM (rewire_study.driver): no worker outlives the study
        stop_pool(pool)
        raise
    finally:
        bar.close()
        q.close()
        q.join_thread()
    return results


def stop_pool(pool: ProcessPoolExecutor, grace: float = 5.0) -> None:
    """End a pool now: queued groups are cancelled and running workers terminated (SIGTERM, then SIGKILL
    after `grace` seconds). `shutdown(cancel_futures=True)` alone waits for the running units to finish,
    which for a downstream group can be an hour."""
    import time

    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.time() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


def _drain(q, bar: tqdm) -> None:
    while True:
        try:
            msg = q.get_nowait()
        except queue_mod.Empty:
            return
        _print(msg, bar)
        if msg.get("unit_done") and bar.n < bar.total:
            bar.update(1)
