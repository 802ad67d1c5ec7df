"""Processes, signals and event loops: the worker processes of `mailer send --workers N` (each the worker's own
main, with its own event loop, database connection and sessions), the event loop every command runs on (uvloop
when installed), and Ctrl-C / SIGTERM turned into a stop the engine hears.

Keeps every crash-safety property of the engine across processes: a worker gets its parent's pid from the parent
(never reads it late), dies with it (PR_SET_PDEATHSIG), and checks it with the lease before each `sending` mark.
Must not print (the CLI does) or decide outcomes (the engine does)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from mailer.campaign import template_for_campaign
from mailer.delivery_log import CampaignLog
from mailer.engine import Engine, Lease, ProgressSink, SendOptions
from mailer.errors import MailerError, SMTPUnavailable
from mailer.exit_codes import ExitCode
from mailer.message import MessageSigner, MessageTemplate
from mailer.models import Campaign, DeliveryStatus
from mailer.pacing import pause
from mailer.policy import CampaignPaused
from mailer.smtp import SMTPSettings
from mailer.store import DatabaseError, Partition, Store, StoreBusy, StoreWriteError, describe_database_error
from mailer.store.leases import LeaseLost

T = TypeVar("T")


def run(
    coro: Coroutine[Any, Any, T], stop: asyncio.Event | None = None, on_stop: Callable[[], None] | None = None
) -> T:
    """Run a coroutine on a fresh event loop; with `stop`, SIGINT and SIGTERM set it (after `on_stop`, the first
    time) so in-flight work finishes before the command returns."""

    def stopping() -> None:
        if stop is not None and not stop.is_set():
            if on_stop is not None:
                on_stop()
            stop.set()

    async def main() -> T:
        loop = asyncio.get_running_loop()
        if stop is not None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stopping)
        return await coro

    return run_event_loop(main())


async def run_workers(
    store: Store,
    campaign: Campaign,
    template: MessageTemplate,
    relays: Sequence[SMTPSettings],
    options: SendOptions,
    sink: ProgressSink,
    stop: asyncio.Event,
    owner: str,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Deliver with `options.workers` processes (one per core), each on its partition of the deliveries.

    Every process commits `sending` before each message, under this process's lease and only while this process
    lives, so the crash bound stays the total session count. Progress is read back from SQLite; a stop is passed
    on to the workers as SIGCONT and SIGTERM, and a worker still alive `options.stop_grace` seconds later is
    killed; why a worker stopped comes back through a pipe, or is read from its exit code."""
    n = options.workers
    shares = [max(1, options.concurrency // n + (1 if k < options.concurrency % n else 0)) for k in range(n)]
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(n)]  # (reader, writer): why worker k stopped, if it did
    procs = [
        context.Process(
            target=_worker_process,
            args=(
                os.getpid(),
                owner,
                pipes[k][1],
                store.path,
                campaign.id,
                (k, n),
                list(relays),
                replace(options, concurrency=shares[k], workers=1, rate=options.rate / n if options.rate else None),
                template.sender.base_url,
                template.secret,
                template.signer,
            ),
            daemon=False,
        )
        for k in range(n)
    ]
    for proc in procs:
        proc.start()
    for _, writer in pipes:
        writer.close()
    seen = store.deliveries.counts(campaign.id)
    loop = asyncio.get_running_loop()
    stopped_at: float | None = None  # when this process passed its stop on to the workers
    killed: list[int] = []  # workers that outlived the grace after the stop (stopped with kill -STOP, hung)
    while any(proc.is_alive() for proc in procs):
        if stop.is_set() and stopped_at is None:
            stopped_at = monotonic()
            # SIGCONT first: a worker stopped with kill -STOP would keep SIGTERM pending and never exit.
            _signal_alive(procs, signal.SIGCONT, signal.SIGTERM)
        if stopped_at is not None and not killed and monotonic() - stopped_at >= options.stop_grace:
            killed = [k for k, proc in enumerate(procs) if proc.is_alive()]
            _signal_alive(procs, signal.SIGKILL)
        await pause(0.25, None if stopped_at is not None else stop)
        seen = _report_progress(store, campaign.id, seen, sink)
    await loop.run_in_executor(None, _join, procs)
    _report_progress(store, campaign.id, seen, sink)
    reports: list[tuple[str, int, str]] = []
    for reader, _ in pipes:
        with contextlib.suppress(EOFError, OSError):  # closed without a word: the worker finished, or was killed
            if reader.poll():
                reports.append(reader.recv())
        reader.close()
    if reports:
        kind, code, message = reports[0]
        error = _ERRORS.get(kind, MailerError)(message)
        error.exit_code = ExitCode(code)
        raise error
    problem = _worker_exits(procs, stopped=stopped_at is not None, killed=killed, grace=options.stop_grace)
    if problem is not None:
        raise problem


# What a worker's stop is rebuilt as in the parent, so the stop line gives the same advice as in one process.
_ERRORS: dict[str, type[MailerError]] = {
    cls.__name__: cls for cls in (StoreWriteError, StoreBusy, LeaseLost, CampaignPaused, SMTPUnavailable)
}


class WorkerStopped(MailerError):
    """A worker ended without finishing its share and without saying why: interrupted, killed or crashed."""


def _worker_exits(
    procs: Sequence[BaseProcess], *, stopped: bool, killed: list[int], grace: float
) -> MailerError | None:
    """Why the workers' share is not done, from their exit codes; None when each finished (or was interrupted by
    this process's own stop, which the summary reports as an interruption)."""
    n = len(procs)
    ours = (0, ExitCode.INTERRUPTED, -signal.SIGTERM, -signal.SIGINT)
    if killed:
        names = ", ".join(f"{k + 1}" for k in killed)
        error = WorkerStopped(
            f"interrupted; worker {names} of {n} did not stop within {grace:.0f}s of the stop (stopped with kill "
            "-STOP? hung?) and was killed; its message in flight, if any, is in doubt and sent again on resume"
        )
        error.exit_code = ExitCode.INTERRUPTED
        return error
    for k, proc in enumerate(procs):
        code = proc.exitcode
        if code in ours and (stopped or code == 0):
            continue
        if code in (ExitCode.INTERRUPTED, -signal.SIGTERM, -signal.SIGINT):
            error = WorkerStopped(f"worker {k + 1} of {n} was interrupted (a signal sent to it alone)")
            error.exit_code = ExitCode.INTERRUPTED
            return error
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"failed with exit code {code}"
        return WorkerStopped(f"worker {k + 1} of {n} {how}")
    return None


def _signal_alive(procs: Sequence[BaseProcess], *signals: int) -> None:
    for proc in procs:
        for sig in signals:
            if proc.pid and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)


def _report_progress(store: Store, campaign_id: int, seen: dict[str, int], sink: ProgressSink) -> dict[str, int]:
    counts = store.deliveries.counts(campaign_id)
    for status in (DeliveryStatus.SENT, DeliveryStatus.DEFERRED, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED):
        for _ in range(max(0, counts.get(status, 0) - seen.get(status, 0))):
            sink.advance(status, "")
    return counts


def _worker_process(
    parent_pid: int,
    owner: str,
    reports: Connection,
    db_path: Path,
    campaign_id: int,
    part: Partition,
    relays: list[SMTPSettings],
    options: SendOptions,
    base_url: str,
    secret: bytes,
    signer: MessageSigner | None = None,
) -> None:
    """Entry point of one worker process: its own event loop, SQLite connection and SMTP sessions, sending
    under its parent's lease (`owner`) only while `parent_pid` is its parent."""
    _die_with_parent(parent_pid)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            with Store.open(db_path) as store:
                campaign = store.campaigns.get(campaign_id)
                template = template_for_campaign(store, campaign, base_url, secret, signer)
                await Engine(
                    CampaignLog(store, campaign.id),
                    template,
                    campaign,
                    relays,
                    options,
                    None,
                    stop,
                    part=part,
                    lease=Lease(owner, parent_pid),
                ).run()
        finally:
            # From here on a stop changes nothing, and the loop is about to take its handlers away: a SIGTERM the
            # parent passes on now (Ctrl-C reached us both) must not end this process as "killed by SIGTERM".
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if stop.is_set():
            raise SystemExit(ExitCode.INTERRUPTED)

    name = f"worker {part[0] + 1} of {part[1]}"
    try:
        run_event_loop(main())
    except MailerError as exc:
        # One line through the pipe, never a traceback on the terminal: the parent prints the stop line.
        reports.send((type(exc).__name__, int(exc.exit_code), f"{name}: {exc}"))
        raise SystemExit(exc.exit_code) from None
    except DatabaseError as exc:
        reports.send(("MailerError", int(ExitCode.ERROR), f"{name}: {describe_database_error(db_path, exc)}"))
        raise SystemExit(ExitCode.ERROR) from None
    except Exception as exc:  # a bug: still one line, and the exit code says the worker failed
        reports.send(("MailerError", int(ExitCode.ERROR), f"{name}: unexpected {type(exc).__name__}: {exc}"))
        raise SystemExit(ExitCode.ERROR) from None


def _die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive its parent: after a kill -9 of `mailer send`, a resumed run takes the lease
    over, and an orphan still sending would mail the list twice. PR_SET_PDEATHSIG has Linux SIGKILL us when
    the parent dies from now on; one that died before, during this process's second or so of start-up, is seen
    by comparing with the pid the parent passed (os.getppid() read here would already be init's or a
    subreaper's). The engine checks the parent again before each message (Lease.orphaned)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(int(ExitCode.INTERRUPTED))


def run_event_loop(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed (about a third less CPU per message on this workload)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _join(procs: Sequence[BaseProcess]) -> None:
    for proc in procs:
        proc.join()
