"""The waits of a run: a sleep that a stop ends at once, a retry time's wait that work queued meanwhile ends, the
rate limit (slots on an injected clock), a relay that restarts (tried again for a grace period), and an operator's
hold on the campaign (paused or cancelled, read from its state) that ends every wait.

Must not send or write: the engine decides what a wait's end means."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from mailer.errors import MailerError
from mailer.models import CampaignState
from mailer.smtp import RelayUnreachable

RELAY_BACKOFF_MAX = 5.0  # seconds between two tries of an unreachable relay, at most

HELD = (CampaignState.PAUSED, CampaignState.CANCELLED)


class Opening(Protocol):
    async def open(self) -> None: ...


class RelayGrace:
    """A relay that worked (the probe, earlier messages) and now cannot be reached is probably restarting: it is
    tried again with backoff for `grace` seconds, counted from the first failure since the last message that
    went through (`since`, shared by a run's sessions), before the campaign stops."""

    def __init__(self, grace: float, monotonic: Callable[[], float], note: Callable[[str], None]) -> None:
        self.grace, self.monotonic, self.note = grace, monotonic, note
        self.since: float | None = None

    async def open(self, session: Opening, halted: Callable[[], bool], interrupt: asyncio.Event) -> MailerError | None:
        """Open the session; None once it is open or the run halted, else why the campaign must stop."""
        delay = 0.5
        while not halted():
            try:
                await session.open()
                return None
            except RelayUnreachable as exc:
                now = self.monotonic()
                if self.since is None:
                    self.since = now
                    if self.grace:
                        self.note(f"{exc}; trying again for up to {self.grace:.0f}s (MAILER_RELAY_GRACE)")
                left = self.since + self.grace - now
                if left <= 0:
                    grace = self.grace
                    return RelayUnreachable(
                        f"{exc}; still after {grace:.0f}s (MAILER_RELAY_GRACE)" if grace else str(exc)
                    )
            except MailerError as exc:
                return exc
            if await pause(min(delay, left), interrupt):
                return None
            delay = min(delay * 2, RELAY_BACKOFF_MAX)
        return None


class StateSource(Protocol):
    def state(self) -> CampaignState: ...


async def pause(seconds: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep `seconds`, less if `stop` is set meanwhile (Ctrl-C acts at once); True when stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def wait_until(seconds: float, stop: asyncio.Event, poll: float, ready: Callable[[], bool]) -> bool:
    """Sleep `seconds`, less once `ready()` (asked every `poll` seconds) or when `stop` is set; True when stopped."""
    loop = asyncio.get_running_loop()  # the sleeps' own clock: an injected monotonic clock may stand still
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        if await pause(min(left, poll), stop):
            return True
        if ready():
            return False
    return False


class RateLimiter:
    """At most `rate` acquisitions per second, spread evenly (a token bucket of depth one)."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float, asyncio.Event | None], Awaitable[bool]] = pause,
    ) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self.sleep = sleep
        self.next_slot = 0.0
        self.lock = asyncio.Lock()

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for the next slot; False when `stop` was set meanwhile: at --rate 0.2 four sessions hold slots
        up to 20 s ahead, and a Ctrl-C must not wait for them."""
        if not self.interval:
            return True
        async with self.lock:
            now = self.clock()
            slot = max(self.next_slot, now)
            self.next_slot = slot + self.interval
        if slot > now:
            return not await self.sleep(slot - now, stop)
        return not (stop is not None and stop.is_set())


class Hold:
    """An operator's pause or cancel of the campaign (its `state`), as a run sees it: read every `poll` seconds and
    by each `sending` mark, so no new message leaves once it is seen. `interrupt` is set by it or by `stop`."""

    def __init__(self, log: StateSource, stop: asyncio.Event, poll: float) -> None:
        self.log, self.stop, self.poll = log, stop, poll
        self.state: CampaignState | None = None  # paused or cancelled, as last seen
        self.interrupt = asyncio.Event()

    def note(self, state: CampaignState) -> None:
        if state in HELD:
            self.state = state
            self.interrupt.set()

    async def watch(self) -> None:
        while not await pause(self.poll, self.stop):
            with contextlib.suppress(MailerError):  # a busy moment: read again next time
                self.note(self.log.state())
        self.interrupt.set()

    async def resumed(self) -> bool:
        """Wait while the campaign stays paused; True when it was resumed (False: stopped, or cancelled)."""
        while not await pause(self.poll, self.stop):
            if (state := self.log.state()) is not CampaignState.PAUSED:
                self.state = state if state in HELD else None
                self.interrupt.clear()
                return self.state is None
        return False
