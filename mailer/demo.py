"""`mailer demo`: the main job on embedded defaults, start to finish, against a capture server on 127.0.0.1.

Creates a fresh working folder, imports the sample list, sends the sample issue and returns where things are."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mailer.capture import CaptureServer
from mailer.config import Config, ensure_secret
from mailer.models import SendSummary
from mailer.send import ProgressSink, SendOptions, render_to_dir, send_issue, smtp_settings
from mailer.store import Store
from mailer.subscriptions import ImportResult, create_list, import_csv

REPO = Path(__file__).resolve().parent.parent
SAMPLE_ISSUE = REPO / "issues" / "sample.md"
SAMPLE_LIST = REPO / "subscribers" / "sample.csv"
LIST_NAME = "bulletin"


@dataclass(frozen=True)
class DemoResult:
    workdir: Path
    db_path: Path
    outbox: Path
    imported: ImportResult
    summary: SendSummary
    rendered: list[Path]
    messages: list[Path]


async def run_demo(workdir: Path, base_url: str, progress: ProgressSink | None = None) -> DemoResult:
    """Start afresh in `workdir`: database, sample list, capture server, send, rendered copies."""
    workdir = workdir.resolve()
    for stale in ("mailer.db", "mailer.db-wal", "mailer.db-shm", "outbox", "rendered"):
        path = workdir / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    outbox = workdir / "outbox"
    config = ensure_secret(Config(db_path=workdir / "mailer.db", base_url=base_url))
    store = Store.open(config.db_path, must_exist=False)
    try:
        store.init()
        create_list(store, LIST_NAME, "知识产权运营简报", "知识产权运营简报 <bulletin@example.org>",
                    "editor@example.org", "zh")
        imported = import_csv(store, LIST_NAME, SAMPLE_LIST)
        with CaptureServer(outbox) as server:
            config = config.with_overrides(smtp_port=server.port)
            summary = await send_issue(store, config, SAMPLE_ISSUE, LIST_NAME, SendOptions(concurrency=4),
                                       smtp_settings(config), progress)
        rendered = render_to_dir(SAMPLE_ISSUE, workdir / "rendered", config, store, LIST_NAME)
    finally:
        store.close()
    return DemoResult(workdir, config.db_path, outbox, imported, summary, rendered, sorted(outbox.glob("*.eml")))
