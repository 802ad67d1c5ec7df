"""Sending throughput against a real SMTP sink on loopback, as ratios of references measured in the same run.

References: Postfix's smtp-source into smtp-sink (the wire's limit here), a bare aiosmtplib loop sending prebuilt
bytes (the library's floor), and mailmerge (the Python peer). Also the per-recipient CPU cost of building a message
against EmailMessage, and peak RSS at two list sizes.

Usage: .venv/bin/python bench/send.py [--n 20000] [--concurrency 1,4,16] [--mailmerge-n 1000] [--rss 10000,100000]
                                      [--repeat 3]
Needs Debian's postfix package (smtp-sink, smtp-source; the daemon is not started) and `pip install mailmerge`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mailer.config import Config, ensure_secret  # noqa: E402
from mailer.engine import SendOptions  # noqa: E402
from mailer.message import MessageTemplate, Sender  # noqa: E402
from mailer.models import Recipient, Subscriber  # noqa: E402
from mailer.render import ListContext, render_issue, substitute  # noqa: E402
from mailer.send import send_issue  # noqa: E402
from mailer.smtp import relays  # noqa: E402
from mailer.store import Store  # noqa: E402
from mailer.subscriptions import create_list  # noqa: E402
from mailer.workers import run_event_loop  # noqa: E402

ISSUE = REPO / "issues" / "sample.md"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port (it needs an unprivileged user when started as root)."""
    exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_port()
    args = [exe, "-u", "nobody"] if os.geteuid() == 0 else [exe]
    proc = subprocess.Popen([*args, f"127.0.0.1:{port}", "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait()


def rendered_sample() -> tuple[MessageTemplate, bytes]:
    issue = render_issue(ISSUE.read_text(encoding="utf-8"), str(ISSUE), ListContext("bench", "知识产权运营简报", "zh"))
    sender = Sender(
        "知识产权运营简报", "bulletin@example.org", "", "bench", "知识产权运营简报", "https://news.example.org"
    )
    template = MessageTemplate(issue, sender, secret=b"k" * 32, campaign_id=1, list_id=1, salt="bench")
    sample = template.build(Recipient(1, 1, "wang@example.org", "王小明", {}), datetime.now(UTC))
    return template, sample.data


def run_smtp_source(port: int, n: int, sessions: int, size: int) -> float:
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    started = time.perf_counter()
    subprocess.run(
        [
            exe,
            "-s",
            str(sessions),
            "-m",
            str(n),
            "-l",
            str(size),
            "-f",
            "bench@example.org",
            "-t",
            "sink@example.org",
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return n / (time.perf_counter() - started)


async def bare_aiosmtplib(port: int, n: int, sessions: int, data: bytes) -> float:
    """The library's floor: persistent sessions sending one prebuilt message over and over."""
    remaining = [n]

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="bench")
        await client.connect()
        while remaining[0] > 0:
            remaining[0] -= 1
            await client.mail("bench@example.org")
            await client.rcpt("sink@example.org")
            await client.data(data)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(sessions)))
    return n / (time.perf_counter() - started)


def prepare_db(folder: Path, n: int, port: int) -> Config:
    config = ensure_secret(Config(db_path=folder / "bench.db", smtp_port=port, base_url="https://news.example.org"))
    store = Store.open(config.db_path, must_exist=False)
    store.init()
    create_list(store, "bench", "知识产权运营简报", "知识产权运营简报 <bulletin@example.org>", "", "zh")
    for start in range(0, n, 10_000):
        store.subscribers.upsert(
            1,
            (Subscriber(email=f"reader{i}@example.org", name="王小明") for i in range(start, min(n, start + 10_000))),
            "bench",
        )
    store.close()
    return config


async def mailer_send(config: Config, sessions: int, workers: int = 1) -> tuple[float, int]:
    store = Store.open(config.db_path)
    started = time.perf_counter()
    summary = await send_issue(
        store, config, ISSUE, "bench", SendOptions(concurrency=sessions, workers=workers), relays(config)
    )
    elapsed = time.perf_counter() - started
    store.close()
    return summary.counts.get("sent", 0) / elapsed, summary.counts.get("sent", 0)


def mailer_rate(port: int, n: int, sessions: int, workers: int) -> float:
    """msg/s of `mailer send` to n fresh recipients (the whole command: render, snapshot, deliver)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = prepare_db(Path(tmp), n, port)
        rate, sent = run_event_loop(mailer_send(config, sessions, workers))
    assert sent == n, f"mailer sent {sent} of {n} (sessions {sessions}, workers {workers})"
    return rate


def mailmerge_exe() -> str | None:
    beside = Path(sys.executable).parent / "mailmerge"
    return shutil.which("mailmerge") or (str(beside) if beside.exists() else None)


def run_mailmerge(port: int, n: int, folder: Path, data: bytes) -> float:
    exe = mailmerge_exe() or "mailmerge"
    message = data.split(b"\r\n\r\n", 1)
    headers = b"TO: {{email}}\r\nFROM: bulletin@example.org\r\n" + b"\r\n".join(
        line
        for line in message[0].split(b"\r\n")
        if line.lower().startswith((b"subject", b"mime-version", b"content-type"))
    )
    (folder / "template.txt").write_bytes(headers + b"\r\n\r\n" + message[1])
    with (folder / "db.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "name"])
        writer.writerows([f"reader{i}@example.org", "王小明"] for i in range(n))
    (folder / "server.conf").write_text(f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\n")
    started = time.perf_counter()
    subprocess.run(
        [
            exe,
            "--no-dry-run",
            "--no-limit",
            "--template",
            "template.txt",
            "--database",
            "db.csv",
            "--config",
            "server.conf",
            "--output-format",
            "raw",
        ],
        cwd=folder,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return n / (time.perf_counter() - started)


def build_cost(template: MessageTemplate, k: int = 2000) -> tuple[float, float]:
    """CPU seconds per message: mailer's per-recipient build vs EmailMessage(...).as_bytes()."""
    now = datetime.now(UTC)
    started = time.process_time()
    for i in range(k):
        template.build(Recipient(i, i, f"reader{i}@example.org", "王小明", {}), now)
    ours = (time.process_time() - started) / k
    issue = template.issue
    started = time.process_time()
    k_ref = max(50, k // 10)
    for i in range(k_ref):
        msg = EmailMessage(policy=policy.SMTP)
        msg["From"] = "知识产权运营简报 <bulletin@example.org>"
        msg["To"] = f"王小明 <reader{i}@example.org>"
        msg["Subject"] = issue.subject
        msg["List-Unsubscribe"] = "<https://news.example.org/u/x>"
        msg.set_content(substitute(issue.text, {"NAME": "王小明"}))
        msg.add_alternative(substitute(issue.html, {"NAME": "王小明"}), subtype="html")
        msg.as_bytes()
    return ours, (time.process_time() - started) / k_ref


def rss_child(n: int) -> None:
    """Run in a fresh process: send to n recipients through a sink and print the peak RSS in KiB."""
    with tempfile.TemporaryDirectory() as tmp, smtp_sink() as port:
        config = prepare_db(Path(tmp), n, port)
        run_event_loop(mailer_send(config, 4))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--mailmerge-n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes for the workers column")
    parser.add_argument("--rss", default="10000,100000", help="two list sizes for the peak-RSS comparison ('' skips)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each throughput figure this many times, keep the best (shared machines are noisy)",
    )
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    template, data = rendered_sample()
    print(
        f"# mailer send benchmark, {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; sample message {len(data):,} bytes, N = {args.n:,}, best of "
        f"{args.repeat}; load average before: {os.getloadavg()[0]:.2f}"
    )
    ours, reference = build_cost(template)
    print(
        f"build per recipient: mailer {ours * 1e6:.0f} us, EmailMessage {reference * 1e6:.0f} us "
        f"-> {reference / ours:.1f}x less CPU"
    )
    print(
        f"\n| sessions | smtp-source msg/s | bare aiosmtplib msg/s | mailer msg/s | mailer/bare "
        f"| mailer/smtp-source | mailer --workers {args.workers} msg/s | workers/smtp-source |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with smtp_sink() as port:
        for sessions in (int(c) for c in args.concurrency.split(",")):
            # Interleaved rounds, so a burst of load elsewhere does not hit one column only.
            rounds = [
                (
                    run_smtp_source(port, args.n, sessions, len(data)),
                    run_event_loop(bare_aiosmtplib(port, args.n, sessions, data)),
                    mailer_rate(port, args.n, sessions, 1),
                    mailer_rate(port, args.n, max(sessions, args.workers), args.workers),
                )
                for _ in range(args.repeat)
            ]
            wire, bare, rate, multi = (max(column) for column in zip(*rounds, strict=True))
            print(
                f"| {sessions} | {wire:,.0f} | {bare:,.0f} | {rate:,.0f} | {rate / bare:.2f} | {rate / wire:.2f} "
                f"| {multi:,.0f} | {multi / wire:.2f} |",
                flush=True,
            )
        if args.mailmerge_n and not mailmerge_exe():
            print("\nmailmerge is not installed (pip install mailmerge): the Python peer was not measured")
        elif args.mailmerge_n:
            peers, rates = [], []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    peers.append(run_mailmerge(port, args.mailmerge_n, Path(tmp), data))
                rates.append(mailer_rate(port, args.mailmerge_n, 4, 1))
            peer, rate = max(peers), max(rates)
            print(
                f"\nmailmerge ({args.mailmerge_n:,} messages, one connection each): {peer:,.0f} msg/s; "
                f"mailer (4 sessions, same list): {rate:,.0f} msg/s -> {rate / peer:.1f}x"
            )
    if args.rss:
        small, large = (int(x) for x in args.rss.split(","))
        peaks = []
        for n in (small, large):
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(n)], check=True, text=True, capture_output=True
            ).stdout
            peaks.append(int(out.strip().splitlines()[-1]))
        print(
            f"\npeak RSS: {small:,} recipients {peaks[0] / 1024:.0f} MiB, {large:,} recipients "
            f"{peaks[1] / 1024:.0f} MiB -> {peaks[1] / peaks[0]:.2f}x"
        )


if __name__ == "__main__":
    main()
