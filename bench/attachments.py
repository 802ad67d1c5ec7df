"""Per-recipient cost of an attachment: building and DKIM-signing the sample issue with a 1 MB PDF, against without.

Measures, per recipient of the sample issue (2048-bit RSA key, relaxed/relaxed, rsa-sha256):
  build            MessageTemplate.build without a signer: the attachment is encoded in the skeleton, copied here
  build + sign     the same with mailer's Signer, as `mailer send` does with MAILER_DKIM_* set: the attachment's
                   canonical form is made once per campaign, and per message only the body hash reads it
  whole sign       Signer.sign on the finished message: what signing would cost if it canonicalised it all again
  sha256 floor     hashlib.sha256 over the bytes that are the same in every message (attachment, boundaries)
Every signed message is verified with dkimpy, and its attachment parsed back to the same bytes, before the numbers
are printed.

Usage: .venv/bin/python bench/attachments.py [--n 500] [--size 1048576]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# With bench/ first on sys.path, `import dkim` would import bench/dkim.py, not dkimpy.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

import dkim as dkimpy  # noqa: E402
from PIL import Image  # noqa: E402

from mailer.attachments import Attachment  # noqa: E402
from mailer.dkim import Signer, generate_key  # noqa: E402
from mailer.message import MessageTemplate, Sender  # noqa: E402
from mailer.models import Recipient  # noqa: E402
from mailer.render import ListContext, render_issue  # noqa: E402

ISSUE = REPO / "issues" / "sample.md"


def per_call_us(fn: Callable[[int], object], n: int, rounds: int = 5) -> float:
    """Median over `rounds` of the mean time per call, in microseconds."""
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        results.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(results)


def pdf_of(size: int) -> bytes:
    """A real PDF of about `size` bytes: pages of noise (which JPEG inside the PDF cannot shrink much)."""
    side = 256
    while True:
        image = Image.frombytes("L", (side, side), random.Random(side).randbytes(side * side))
        out = io.BytesIO()
        image.save(out, format="PDF")
        if out.tell() >= size:
            return out.getvalue()
        side = int(side * 1.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="messages per round")
    parser.add_argument("--size", type=int, default=2**20, help="bytes of the PDF (at least)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        key = generate_key("bench", "example.org", Path(tmp))
        signer = Signer.from_file(key.path, "bench", "example.org")
    issue = render_issue(
        ISSUE.read_text(encoding="utf-8"), str(ISSUE), ListContext("bulletin", "知识产权运营简报", "zh")
    )
    pdf = pdf_of(args.size)
    with_pdf = replace(issue, attachments=(Attachment("简报第10期.pdf", "application/pdf", pdf),))
    sender = Sender(
        "简报", "bulletin@example.org", "editor@example.org", "bulletin", "知识产权运营简报", "https://x.org"
    )
    common = {"secret": b"k" * 32, "campaign_id": 1, "list_id": 1, "salt": "bench"}
    templates = {
        (attached, signed): MessageTemplate(
            with_pdf if attached else issue,
            sender,
            signer=signer if signed else None,
            **common,  # type: ignore[arg-type]
        )
        for attached in (False, True)
        for signed in (False, True)
    }
    now = datetime.now(UTC)
    recipients = [Recipient(i, i, f"reader{i:05d}@example.org", f"读者{i}", {}) for i in range(args.n)]

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return f"v=DKIM1; k=rsa; p={signer.public_key}".encode()

    sizes = {}
    for attached in (False, True):
        data = templates[attached, True].build(recipients[1], now).data
        sizes[attached] = len(data)
        if not dkimpy.verify(data, dnsfunc=lookup):
            raise SystemExit("a signature did not verify; numbers withheld")
        if attached:
            [part] = message_from_bytes(data, policy=policy.default).iter_attachments()
            if part.get_payload(decode=True) != pdf:
                raise SystemExit("the attachment did not parse back to its bytes; numbers withheld")

    rows = {}
    for attached in (False, True):
        plain, signed = templates[attached, False], templates[attached, True]
        sample = plain.build(recipients[0], now).data
        rows[attached] = (
            per_call_us(lambda i, t=plain: t.build(recipients[i], now), args.n),  # type: ignore[misc]
            per_call_us(lambda i, t=signed: t.build(recipients[i], now), args.n),  # type: ignore[misc]
            per_call_us(lambda i, s=sample: signer.sign(s, 1_700_000_000 + i), args.n),  # type: ignore[misc]
            per_call_us(lambda i, t=plain: hashlib.sha256(t.closing).digest(), args.n),  # type: ignore[misc]
        )

    print(
        f"sample issue, {platform.python_implementation()} {platform.python_version()}, {platform.machine()}; "
        f"PDF {len(pdf):,} bytes; messages {sizes[False]:,} and {sizes[True]:,} bytes (signed)"
    )
    print(f"{'per recipient, us':<24}{'without':>10}{'with PDF':>10}{'added':>10}")
    for label, column in (("build (no DKIM)", 0), ("build + sign", 1), ("whole-message sign", 2), ("sha256 floor", 3)):
        without, with_attachment = rows[False][column], rows[True][column]
        print(f"{label:<24}{without:>10.0f}{with_attachment:>10.0f}{with_attachment - without:>10.0f}")
    print("all signatures verified with dkimpy; the attachment parsed back to its bytes")


if __name__ == "__main__":
    main()
