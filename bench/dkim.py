"""Per-message cost of DKIM signing the sample issue, against the cost of building the message itself.

Measures, per recipient of the sample issue (2048-bit RSA key, relaxed/relaxed, rsa-sha256):
  build            MessageTemplate.build without a signer (the reference)
  build + sign     the same with mailer's Signer, as `mailer send` does with MAILER_DKIM_* set
  sign             Signer.sign alone, and its RSA operation alone (OpenSSL via cryptography: the floor)
  dkimpy           dkim.sign() on the same bytes (pure-Python RSA), the library mailer's signatures are checked against
Then the same issue with a 1 MB PDF attached, against without it:
  build, build + sign   as above: the PDF is encoded in the skeleton, and its canonical form made once per campaign
  whole-message sign    Signer.sign on the finished message: canonicalising it all again, as it did before
  sha256 floor          hashlib.sha256 over the bytes every message shares (the PDF, the closing boundaries)
Every signature made here is verified with dkimpy (and the PDF parsed back) before the numbers are printed.

Usage: .venv/bin/python bench/dkim.py [--n 2000] [--dkimpy-n 200] [--attachment-n 500] [--pdf-size 1048576]
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
# This file is bench/dkim.py: with bench/ first on sys.path, `import dkim` would import this script, not dkimpy.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

import dkim as dkimpy  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="messages per round")
    parser.add_argument("--dkimpy-n", type=int, default=200, help="messages per round for dkimpy (slow)")
    parser.add_argument("--attachment-n", type=int, default=500, help="messages per round with the PDF")
    parser.add_argument("--pdf-size", type=int, default=2**20, help="bytes of the PDF (at least)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        key = generate_key("bench", "example.org", Path(tmp))
        signer = Signer.from_file(key.path, "bench", "example.org")
    ctx = ListContext("bulletin", "知识产权运营简报", "zh")
    issue = render_issue(ISSUE.read_text(encoding="utf-8"), str(ISSUE), ctx)
    sender = Sender(
        "知识产权运营简报",
        "bulletin@example.org",
        "editor@example.org",
        "bulletin",
        "知识产权运营简报",
        "https://news.example.org",
    )
    common = {"secret": b"k" * 32, "campaign_id": 1, "list_id": 1, "salt": "bench"}
    plain = MessageTemplate(issue, sender, **common)  # type: ignore[arg-type]
    signed = MessageTemplate(issue, sender, signer=signer, **common)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    recipients = [Recipient(i, i, f"reader{i:05d}@example.org", f"读者{i}", {}) for i in range(args.n)]
    sample = plain.build(recipients[0], now).data
    header_bytes = sample.split(b"\r\n\r\n", 1)[0]

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return f"v=DKIM1; k=rsa; p={signer.public_key}".encode()

    for message in (signed.build(recipients[1], now).data, dkimpy_signed(sample, signer)):
        if not dkimpy.verify(message, dnsfunc=lookup):
            raise SystemExit("a signature did not verify; numbers withheld")

    build = per_call_us(lambda i: plain.build(recipients[i], now), args.n)
    build_sign = per_call_us(lambda i: signed.build(recipients[i], now), args.n)
    sign = per_call_us(lambda i: signer.sign(sample, 1_700_000_000 + i), args.n)
    rsa = per_call_us(lambda i: signer.key.sign(header_bytes, padding.PKCS1v15(), hashes.SHA256()), args.n)
    reference = per_call_us(lambda i: dkimpy_signed(sample, signer), args.dkimpy_n, rounds=3)

    print(
        f"sample issue: {len(sample):,} bytes a message; {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}"
    )
    print(f"{'build (no DKIM)':<28}{build:>9.0f} us")
    print(f"{'build + sign':<28}{build_sign:>9.0f} us   (x{build_sign / build:.1f} the build alone)")
    print(f"{'  sign (mailer Signer)':<28}{sign:>9.0f} us")
    print(f"{'    of which RSA (OpenSSL)':<28}{rsa:>9.0f} us")
    print(f"{'  dkimpy dkim.sign()':<28}{reference:>9.0f} us   (x{reference / sign:.0f} mailer's Signer)")
    print(f"one core signs ~{1e6 / sign:,.0f} messages/s; all signatures verified with dkimpy")
    print()
    attachment_case(issue, sender, signer, common, recipients[: args.attachment_n], args.pdf_size, lookup)


def pdf_of(size: int) -> bytes:
    """A real PDF of about `size` bytes: a page of noise (which the JPEG inside the PDF cannot shrink much)."""
    side = 256
    while True:
        image = Image.frombytes("L", (side, side), random.Random(side).randbytes(side * side))
        out = io.BytesIO()
        image.save(out, format="PDF")
        if out.tell() >= size:
            return out.getvalue()
        side = int(side * 1.1)


def attachment_case(  # type: ignore[no-untyped-def]
    issue, sender: Sender, signer: Signer, common, recipients: list[Recipient], size: int, lookup
) -> None:
    """Per recipient, the issue with a PDF attached against without it: build, build + sign, the whole-message
    sign the campaign's fixed tail avoids, and the SHA-256 floor that remains."""
    pdf = pdf_of(size)
    attached = replace(issue, attachments=(Attachment("简报第10期.pdf", "application/pdf", pdf),))
    now = datetime.now(UTC)
    rows, sizes = {}, {}
    for with_pdf in (False, True):
        plain = MessageTemplate(attached if with_pdf else issue, sender, **common)
        signed = MessageTemplate(attached if with_pdf else issue, sender, signer=signer, **common)
        data = signed.build(recipients[1], now).data
        sizes[with_pdf] = len(data)
        if not dkimpy.verify(data, dnsfunc=lookup):
            raise SystemExit("a signature did not verify; numbers withheld")
        parts = list(message_from_bytes(data, policy=policy.default).iter_attachments())  # type: ignore[attr-defined]
        if with_pdf and [p.get_payload(decode=True) for p in parts] != [pdf]:
            raise SystemExit("the attachment did not parse back to its bytes; numbers withheld")
        sample, n = plain.build(recipients[0], now).data, len(recipients)
        rows[with_pdf] = (
            per_call_us(lambda i, t=plain: t.build(recipients[i], now), n),  # type: ignore[misc]
            per_call_us(lambda i, t=signed: t.build(recipients[i], now), n),  # type: ignore[misc]
            per_call_us(lambda i, d=sample: signer.sign(d, 1_700_000_000 + i), n),  # type: ignore[misc]
            per_call_us(lambda i, t=plain: hashlib.sha256(t.closing).digest(), n),  # type: ignore[misc]
        )
    print(f"with a {len(pdf):,}-byte PDF: messages of {sizes[True]:,} bytes, against {sizes[False]:,} (signed)")
    print(f"{'per recipient, us':<28}{'without':>9}{'with PDF':>10}{'added':>9}")
    for label, column in (("build (no DKIM)", 0), ("build + sign", 1), ("whole-message sign", 2), ("sha256 floor", 3)):
        without, with_attachment = rows[False][column], rows[True][column]
        print(f"{label:<28}{without:>9.0f}{with_attachment:>10.0f}{with_attachment - without:>9.0f}")
    print("all signatures verified with dkimpy; the PDF parsed back to its bytes")


def dkimpy_signed(message: bytes, signer: Signer) -> bytes:
    header = dkimpy.sign(
        message,
        signer.selector.encode(),
        signer.domain.encode(),
        signer.private_key_pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[
            b"from",
            b"to",
            b"subject",
            b"date",
            b"message-id",
            b"list-unsubscribe",
            b"list-unsubscribe-post",
            b"list-id",
            b"mime-version",
            b"content-type",
        ],
    )
    return bytes(header) + message


if __name__ == "__main__":
    main()
