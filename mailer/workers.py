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
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from mailer.campaign import template_for_campaign
from mailer.delivery_log import CampaignLog
from mailer.engine import Engine, Lease, ProgressSink, SendOptions
from mailer.errors import MailerError
from mailer.exit_codes import ExitCode
from mailer.message import MessageSigner, MessageTemplate
from mailer.models import Campaign, DeliveryStatus
from mailer.pacing import pause
from mailer.smtp import SMTPSettings
from mailer.store import Partition, Store

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
) -> None:
    """Deliver with `options.workers` processes (one per core), each on its partition of the deliveries.

    Every process commits `sending` before each message, under this process's lease and only while this process
    lives, so the crash bound stays the total session count. Progress is read back from SQLite; a stop is passed
    on to the workers as SIGTERM; why a worker stopped comes back through a pipe."""
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
    stopping = False
    while any(proc.is_alive() for proc in procs):
        if stop.is_set() and not stopping:
            stopping = True
            for proc in procs:
                if proc.pid and proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)
        await pause(0.25, None if stopping else stop)
        seen = _report_progress(store, campaign.id, seen, sink)
    await loop.run_in_executor(None, _join, procs)
    _report_progress(store, campaign.id, seen, sink)
    stops: list[tuple[int, str]] = []
    for reader, _ in pipes:
        with contextlib.suppress(EOFError):  # closed without a word: the worker finished, or was killed
            if reader.poll():
                stops.append(reader.recv())
        reader.close()
    if stops:
        code, message = stops[0]
        error = MailerError(message)
        error.exit_code = ExitCode(code)
        raise error
    if any(proc.exitcode not in (0, ExitCode.INTERRUPTED) for proc in procs):
        raise MailerError(f"a worker process failed (exit codes {[proc.exitcode for proc in procs]})")


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
        if stop.is_set():
            raise SystemExit(ExitCode.INTERRUPTED)

    try:
        run_event_loop(main())
    except MailerError as exc:
        reports.send((int(exc.exit_code), f"worker {part[0] + 1} of {part[1]}: {exc}"))
        raise SystemExit(exc.exit_code) from None


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
