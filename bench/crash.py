"""Crash safety measured: `mailer send` killed with kill -9 at random moments (with `--workers 2`, from worker
start-up on, and as one process) and resumed at once, and a sender stopped with kill -STOP past its lease while a
second send is started; every copy the capture server accepts is counted per recipient.

The promise (README, "Resume"): nobody lost, at most the total session count repeated per kill, nobody repeated
by two senders. Real processes, a real SQLite file, an SMTP server on 127.0.0.1 (nothing leaves the machine).

Usage: .venv/bin/python bench/crash.py [--n 2000] [--runs 10] [--seed 1] [--scenario workers,single,sigstop]
                                       [--stopped-for 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mailer.capture import CaptureServer  # noqa: E402
from mailer.config import Config, ensure_secret  # noqa: E402
from mailer.models import Subscriber  # noqa: E402
from mailer.store import Store  # noqa: E402
from mailer.subscriptions import create_list  # noqa: E402
from tests.test_delivery import children  # noqa: E402  (the test suite's /proc reader; needs the test extras)

ISSUE = REPO / "issues" / "sample.md"
SESSIONS = 4


def make_db(folder: Path, n: int) -> None:
    config = ensure_secret(Config(db_path=folder / "mailer.db"))
    store = Store.open(config.db_path, must_exist=False)
    store.init()
    create_list(store, "bulletin", "Bulletin", "Bulletin <bulletin@example.org>", "", "en")
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email=f"r{i:05d}@example.org") for i in range(n)], "bench")
    store.close()


def mailer(folder: Path, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full.update({"MAILER_DB": str(folder / "mailer.db"), "MAILER_RETRY_BASE": "0.2", **(env or {})})
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailer",
            "send",
            str(ISSUE),
            "--list",
            "bulletin",
            "--yes",
            "--smtp-port",
            str(port),
            "--concurrency",
            str(SESSIONS),
            *extra,
        ],
        cwd=folder,
        env=full,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def tally(server: CaptureServer, n: int) -> tuple[int, int]:
    copies = Counter(c.rcpt_tos[0] for c in server.received)
    return sum(k - 1 for k in copies.values()), n - len(copies)


def run_killed(folder: Path, server: CaptureServer, n: int, rng: random.Random, workers: int) -> str:
    extra = ("--workers", str(workers)) if workers > 1 else ()
    proc = mailer(folder, server.port, *extra)
    while not (len(children(proc.pid)) >= workers if workers > 1 else server.received):
        if proc.poll() is not None:  # from the moment the workers exist (start-up included), or the first message
            raise SystemExit(f"mailer send ended first ({proc.returncode}): {proc.communicate()[1].decode()}")
        time.sleep(0.002)
    after = rng.uniform(0.0, 2.0)
    time.sleep(after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # resumed at once, as README advises: an orphan worker would now race the resumed run
    before = len(server.received)
    resumed = mailer(folder, server.port, *extra)
    _, err = resumed.communicate(timeout=600)
    if resumed.returncode != 0:
        raise SystemExit(f"resume failed ({resumed.returncode}): {err.decode()}")
    time.sleep(0.3)
    duplicates, lost = tally(server, n)
    return (
        f"kill -9 {after:4.2f}s in, {before:5d} received by then: {duplicates:3d} duplicates, {lost} lost "
        f"(bound {SESSIONS})"
    )


def run_stopped(folder: Path, server: CaptureServer, n: int, rng: random.Random, stopped_for: float) -> str:
    env = {"MAILER_LEASE_SECONDS": "2"}
    first = mailer(folder, server.port, "--rate", "400", env=env)
    while not server.received:
        time.sleep(0.002)
    after = rng.uniform(0.2, 2.0)
    time.sleep(after)
    os.kill(first.pid, signal.SIGSTOP)
    time.sleep(stopped_for)  # past the lease
    second = mailer(folder, server.port, "--rate", "400", env=env)
    _, err = second.communicate(timeout=600)
    os.kill(first.pid, signal.SIGCONT)
    first.communicate(timeout=600)
    if first.returncode != 0:  # it lost its campaign (only if the second took it): finish the rest
        mailer(folder, server.port).communicate(timeout=600)
    time.sleep(0.3)
    duplicates, lost = tally(server, n)
    said = err.decode().strip().splitlines()[-1][:70] if err.strip() else "(nothing)"
    return (
        f"kill -STOP {after:4.2f}s in for {stopped_for:.0f} s; second send exit {second.returncode} {said!r}: "
        f"{duplicates} duplicates, {lost} lost"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", default="workers,single,sigstop")
    parser.add_argument(
        "--stopped-for",
        type=float,
        default=3.0,
        help="seconds the sigstop scenario keeps the sender stopped (its lease: 2 s)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for scenario in args.scenario.split(","):
        print(f"{scenario}: {args.runs} runs of {args.n} recipients")
        totals = [0, 0]
        for run in range(1, args.runs + 1):
            folder = Path(tempfile.mkdtemp(prefix="mailer-crash-"))
            try:
                make_db(folder, args.n)
                with CaptureServer(None) as server:
                    if scenario == "sigstop":
                        line = run_stopped(folder, server, args.n, rng, args.stopped_for)
                    else:
                        line = run_killed(folder, server, args.n, rng, 2 if scenario == "workers" else 1)
                    duplicates, lost = tally(server, args.n)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            totals[0] += duplicates
            totals[1] += lost
            print(f"  run {run:2d}: {line}", flush=True)
        print(f"  total: {totals[0]} duplicates, {totals[1]} lost in {args.runs} runs")


if __name__ == "__main__":
    main()
