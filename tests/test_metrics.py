"""Prometheus exposition and reply grouping: escaping that keeps hostile text inside its label."""

from __future__ import annotations

import pytest

from mailer.metrics import Family, exposition, reply_group


def test_exposition_format() -> None:
    text = exposition(
        [
            Family(
                "mailer_deliveries",
                "gauge",
                "Deliveries by status.",
                [({"status": "sent", "campaign": "1"}, 20), ({"status": "failed", "campaign": "1"}, 0)],
            ),
            Family("mailer_signups_total", "counter", "Sign-up requests.\nAll of them.", [({}, 3.5)]),
        ]
    )
    assert text == (
        "# HELP mailer_deliveries Deliveries by status.\n"
        "# TYPE mailer_deliveries gauge\n"
        'mailer_deliveries{campaign="1",status="sent"} 20\n'
        'mailer_deliveries{campaign="1",status="failed"} 0\n'
        "# HELP mailer_signups_total Sign-up requests.\\nAll of them.\n"
        "# TYPE mailer_signups_total counter\n"
        "mailer_signups_total 3.5\n"
    )


def test_hostile_label_values_stay_in_their_label() -> None:
    text = exposition([Family("mailer_replies", "counter", "x", [({"reply": 'a"} 1\nevil_metric 9\\'}, 1)])])
    assert text.splitlines()[2] == 'mailer_replies{reply="a\\"} 1\\nevil_metric 9\\\\"} 1'
    assert "\nevil_metric" not in text


@pytest.mark.parametrize("bad", [{"bad-name": "x"}, {"__reserved": "x"}])
def test_bad_label_names_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        exposition([Family("m", "gauge", "x", [(bad, 1)])])


def test_bad_metric_names_are_refused() -> None:
    with pytest.raises(ValueError):
        Family("1bad", "gauge", "x")


def test_replies_group_across_addresses_ids_and_ips() -> None:
    a = reply_group(451, "451 4.7.1 <wang@qq.com>: Try again later (queue 0A1B2C3D4E) from 203.0.113.5")
    b = reply_group(451, "4.7.1 <li@qq.com>: try again  later (queue 9F8E7D6C5B) from 198.51.100.7")
    assert a == b == "451 4.7.1 <address>: try again later (queue id) from ip"
    assert reply_group(250, "") == "250"
    assert reply_group(None, "") == "(no reply)"
    assert reply_group(550, "5.1.1 user unknown: see https://help.example/550?x=1") == "550 5.1.1 user unknown: see url"


@pytest.mark.parametrize(
    "variants",
    [
        [  # Gmail puts a per-message id (hex, a dot and a number) before "- gsmtp"
            "5.7.1 [203.0.113.9] Our system has detected an unusual rate of unsolicited mail. 5a7b3c2d1e0f.12 - gsmtp",
            "5.7.1 [198.51.100.2] Our system has detected an unusual rate of unsolicited mail. 0e9d8c7b6a5f.7 - gsmtp",
        ],
        [
            "5.1.1 The email account that you tried to reach does not exist. "
            "https://support.google.com/mail/?p=NoSuchUser 0a1b2c3d4e5fsi1234 - gsmtp",
            "5.1.1 The email account that you tried to reach does not exist. "
            "https://support.google.com/mail/?p=NoSuchUser f1e2d3c4b5a6si98 - gsmtp",
        ],
        ["2.0.0 Ok: queued as 4Fz1Xk2qWbz9vG3", "2.0.0 Ok: queued as 4Gq7Lm0pRtz2wH8"],
        ["2.0.0 Ok: queued as 00051", "2.0.0 Ok: queued as 01377"],
    ],
)
def test_replies_that_differ_only_by_a_per_message_id_group_together(variants: list[str]) -> None:
    assert len({reply_group(550, text) for text in variants}) == 1


def test_words_and_status_codes_are_not_taken_for_ids() -> None:
    assert reply_group(550, "5.7.1 Message rejected as spam by Content Filter") == (
        "550 5.7.1 message rejected as spam by content filter"
    )
    assert reply_group(452, "4.5.3 Too many recipients (RFC5321)") == "452 4.5.3 too many recipients (rfc5321)"
