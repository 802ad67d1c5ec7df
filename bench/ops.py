"""The ops console and `mailer log` at a million deliveries: a synthetic campaign (tests/synthetic.py) written to a
real SQLite file, the console served by uvicorn on 127.0.0.1 and read with httpx (signed in, as a browser is), and
`mailer log` run as a process with its peak memory.

The promise (issue 14): the campaign page and a filtered deliveries page answer in well under a second; the log's
table, --csv and --json answer in seconds with flat memory. Each page is timed `--repeat` times (median, worst).

Usage: .venv/bin/python bench/ops.py [--n 1000000] [--db PATH (kept, and reused when it exists)] [--repeat 5]
       .venv/bin/python bench/ops.py --screenshots docs/   # the README's screenshots, from a small database
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from mailer.config import Config, ensure_secret  # noqa: E402
from mailer.store import Store  # noqa: E402
from mailer.web import create_app  # noqa: E402
from tests.conftest import LiveWeb  # noqa: E402
from tests.synthetic import fill_campaign  # noqa: E402

PASSWORD = "bench-password"


def build(db: Path, n: int) -> int:
    with Store.open(db, must_exist=False) as store:
        store.init()
        found = store.conn.execute("SELECT id FROM campaigns ORDER BY id DESC LIMIT 1").fetchone()
        if found:
            return int(found[0])
        started = time.monotonic()
        campaign = fill_campaign(store, "big", n)
        store.conn.execute("ANALYZE")
        print(f"built {n} deliveries in {time.monotonic() - started:.0f}s ({db.stat().st_size / 1e6:.0f} MB)")
        return campaign


def sign_in(client: httpx.Client) -> None:
    form = client.get("/ops/login")
    token = re.search(r'name="form_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    assert client.post("/ops/login", data={"user": "ops", "password": PASSWORD, "form_token": token}).status_code == 303


def time_pages(config: Config, campaign: int, repeat: int) -> None:
    pages = [
        ("campaigns list", "/ops/"),
        ("campaign page", f"/ops/campaigns/{campaign}"),
        ("campaign page, status=failed", f"/ops/campaigns/{campaign}?status=failed"),
        ("campaign page, domain=qq.com", f"/ops/campaigns/{campaign}?domain=qq.com"),
        ("campaign page, domain+status=deferred", f"/ops/campaigns/{campaign}?domain=gmail.com&status=deferred"),
        ("campaign page, 2nd page of a domain", f"/ops/campaigns/{campaign}?domain=163.com&before=500000"),
        ("API deliveries, domain+status", f"/ops/api/campaigns/{campaign}/deliveries?domain=qq.com&status=failed"),
        ("API campaign (the page's poll)", f"/ops/api/campaigns/{campaign}"),
        ("person page", "/ops/people?q=user123456@qq.com"),
        ("person search, prefix", "/ops/people?q=user12345"),
        ("metrics", "/ops/metrics"),
    ]
    with (
        LiveWeb(lambda url: create_app(config.with_overrides(base_url=url))) as live,
        httpx.Client(base_url=live.url, timeout=120) as client,
    ):
        sign_in(client)
        print(f"{'page':42} {'median':>8} {'worst':>8}  bytes")
        for name, path in pages:
            times, size = [], 0
            for _ in range(repeat):
                started = time.perf_counter()
                answer = client.get(path)
                times.append(time.perf_counter() - started)
                assert answer.status_code == 200, (path, answer.status_code)
                size = len(answer.content)
            print(f"{name:42} {statistics.median(times) * 1000:7.0f}ms {max(times) * 1000:7.0f}ms  {size}")
        started = time.perf_counter()
        with client.stream("GET", f"/ops/api/campaigns/{campaign}/deliveries?format=csv") as answer:
            size = sum(len(chunk) for chunk in answer.iter_bytes())
        print(
            f"{'CSV export, all deliveries (streamed)':42} {time.perf_counter() - started:7.1f}s  {size / 1e6:.0f} MB"
        )


def time_log(db: Path, campaign: int) -> None:
    """Each form of `mailer log` as a process of its own, its output read through a pipe and thrown away; the peak
    RSS is GNU time's (the child's own: RUSAGE_CHILDREN would count the pages a fork shares with this process)."""
    for args in ([], ["--status", "failed"], ["--csv"], ["--json"]):
        command = [sys.executable, "-m", "mailer", "--db", str(db), "log", str(campaign), *args]
        started = time.monotonic()
        with subprocess.Popen(
            ["/usr/bin/time", "-f", "peak %M KB", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
        ) as child:
            size, last = 0, b""
            assert child.stdout is not None and child.stderr is not None
            for chunk in iter(lambda: child.stdout.read(1 << 16), b""):  # type: ignore[union-attr]
                size += len(chunk)
                last = (last + chunk)[-400:]
            peak = child.stderr.read().decode().strip().splitlines()[-1]
        elapsed = time.monotonic() - started
        line = last.decode(errors="replace").strip().splitlines()[-1][:80]
        print(
            f"mailer log {campaign} {' '.join(args):16} {elapsed:5.1f}s  {peak:>14}  {size / 1e6:6.1f} MB out  {line}"
        )


def screenshots(folder: Path) -> None:
    """The README's two pictures: the campaigns page and one campaign, from a small database with three campaigns
    (one still sending, one paused) whose pace varies like a real send's."""
    from playwright.sync_api import sync_playwright

    from mailer.preview import CHROMIUM_ARGS

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mailer.db"
        with Store.open(db, must_exist=False) as store:
            store.init()
            fill_campaign(store, "weekly", 8000, seed=1, start=datetime(2026, 11, 16, 9, 0, tzinfo=UTC))
            store.conn.execute(
                "UPDATE deliveries SET status = 'sent', attempts = attempts + 1, smtp_code = 250, "
                "smtp_reply = '2.0.0 Ok: queued' WHERE status IN ('queued', 'deferred')"
            )
            store.conn.execute(
                "UPDATE campaigns SET state = 'finished', finished = created, subject = 'Weekly Notes #47'"
            )
            # A slow patch in the middle (a receiver throttling), as real sends have.
            second = fill_campaign(
                store,
                "weekly",
                26000,
                seed=2,
                start=datetime(2026, 11, 30, 8, 0, tzinfo=UTC),
                pace=lambda i: 60.0 + (240.0 if 9000 < i < 13000 else 0.0) + 30.0 * math.sin(i / 900),
            )
            third = fill_campaign(store, "bulletin", 3000, seed=3, start=datetime(2026, 12, 1, 7, 30, tzinfo=UTC))
            store.conn.execute("UPDATE campaigns SET subject = 'Weekly Notes #48' WHERE id = ?", (second,))
            store.conn.execute(
                "UPDATE campaigns SET state = 'paused', subject = '知识产权运营简报 第12期' WHERE id = ?", (third,)
            )
            store.audit.record("ops (10.0.0.7)", "pause", campaign_id=third, detail=f"campaign {third} paused")
        config = ensure_secret(Config(db_path=db, ops_password=PASSWORD))
        with LiveWeb(lambda url: create_app(config.with_overrides(base_url=url))) as live, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{live.url}/ops/login?lang=en")
            page.get_by_label("User").fill("ops")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{live.url}/ops/")
            page.screenshot(path=str(folder / "ops-campaigns.png"))
            page.goto(f"{live.url}/ops/campaigns/{second}")
            page.screenshot(
                path=str(folder / "ops-campaign.png"),
                clip={"x": 0, "y": 0, "width": 1280, "height": 1500},
                full_page=True,
            )
            browser.close()
    print(f"wrote {folder / 'ops-campaigns.png'} and {folder / 'ops-campaign.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--screenshots", type=Path)
    args = parser.parse_args()
    if args.screenshots:
        screenshots(args.screenshots)
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "mailer.db"
        campaign = build(db, args.n)
        config = ensure_secret(Config(db_path=db, ops_password=PASSWORD))
        with Store.open(db) as store:
            total = store.reports.total(campaign)
        print(f"campaign {campaign}: {total} deliveries ({math.log10(max(total, 1)):.0f} digits); database {db}")
        time_pages(config, campaign, args.repeat)
        time_log(db, campaign)


if __name__ == "__main__":
    main()
