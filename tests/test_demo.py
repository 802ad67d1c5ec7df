"""`mailer demo`: the main job on embedded defaults, as a user runs it, and the wire checks on what it sent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import CHECK_EML


def test_demo_sends_20_messages_that_pass_the_wire_checks(tmp_path: Path, run_cli) -> None:
    result = run_cli("demo", "--dir", "D")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    rows = [line for line in result.stdout.splitlines() if "@example." in line and "│" in line]
    assert len(rows) == 20
    assert all(re.search(r"│ sent\s+│ 250\s+│ <mailer\.", row) for row in rows), result.stdout
    assert "20 sent" in result.stdout
    outbox = tmp_path / "D" / "outbox"
    messages = sorted(outbox.glob("*.eml"))
    assert len(messages) == 20
    assert (tmp_path / "D" / "rendered" / "sample.html").is_file()
    assert not (tmp_path / "mailer.db").exists()  # the demo keeps to its own folder

    checked = subprocess.run(
        [sys.executable, str(CHECK_EML), *map(str, messages)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout
    assert "20 messages, 0 failures" in checked.stdout

    again = run_cli("demo", "--dir", "D")

    assert again.returncode == 0, again.stdout + again.stderr
    assert "20 sent" in again.stdout
    assert len(list(outbox.glob("*.eml"))) == 20  # started afresh, not 40
