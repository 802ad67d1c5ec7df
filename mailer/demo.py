"""`mailer demo`: the main job on embedded defaults, start to finish, against a capture server on 127.0.0.1.

Creates a fresh working folder, imports the sample list, sends the sample issue and returns where things are."""

from __future__ import annotations

import contextlib
import importlib.resources
import shutil
from dataclasses import dataclass
from pathlib import Path

from mailer.capture import CaptureServer
from mailer.config import Config, ensure_secret
from mailer.engine import ProgressSink, SendOptions
from mailer.models import SendSummary
from mailer.sample import render_to_dir
from mailer.send import send_issue
from mailer.smtp import relays
from mailer.store import Store
from mailer.subscriptions import ImportResult, create_list, import_csv

# Shipped inside the package (mailer/samples: the repository's issues/sample.md and subscribers/sample.csv).
SAMPLES = importlib.resources.files("mailer") / "samples"
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
    with contextlib.ExitStack() as files:
        sample_issue = files.enter_context(importlib.resources.as_file(SAMPLES / "sample.md"))
        sample_list = files.enter_context(importlib.resources.as_file(SAMPLES / "sample.csv"))
        return await _run_demo(workdir, base_url, sample_issue, sample_list, progress)


async def _run_demo(
    workdir: Path, base_url: str, sample_issue: Path, sample_list: Path, progress: ProgressSink | None
) -> DemoResult:
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
        create_list(
            store, LIST_NAME, "知识产权运营简报", "知识产权运营简报 <bulletin@example.org>", "editor@example.org", "zh"
        )
        imported = import_csv(store, LIST_NAME, sample_list)
        with CaptureServer(outbox) as server:
            config = config.with_overrides(smtp_port=server.port)
            summary = await send_issue(
                store, config, sample_issue, LIST_NAME, SendOptions(concurrency=4), relays(config), progress
            )
        rendered = render_to_dir(sample_issue, workdir / "rendered", config, store, LIST_NAME)
    finally:
        store.close()
    return DemoResult(workdir, config.db_path, outbox, imported, summary, rendered, sorted(outbox.glob("*.eml")))
