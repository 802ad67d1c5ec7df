"""What a send would do, said before it does: the dry run (one message built as the send would build it, who it
would reach) and the notes about a campaign the issue already is for its audience (its look changed since, who
joined since). Must not send or write."""

from __future__ import annotations

from mailer.audience import Audience
from mailer.campaign import PreparedIssue, sample_message
from mailer.config import Config
from mailer.message import MessageSigner
from mailer.models import Campaign, CampaignState, DeliveryStatus, SendSummary
from mailer.store import Store

DRY_RUN_SAMPLE = 5  # addresses a dry run shows of those it would send to


def dry_run(
    store: Store, config: Config, prepared: PreparedIssue, audience: Audience, signer: MessageSigner | None
) -> SendSummary:
    """Build one message as a send would (so a template or key error shows now) and count who it would reach."""
    sample_message(store, prepared, config.secret, signer, audience)
    total = store.audiences.count(audience)
    addresses = tuple(s.email for s in store.audiences.sample(audience, DRY_RUN_SAMPLE))
    notes = list(prepared.warnings)
    existing = store.campaigns.find(audience, prepared.identity, prepared.issue.content_hash)
    if existing is not None:
        notes += existing_notes(store, existing, audience, prepared.issue.content_hash, include_new=False)
    if existing is not None and existing.state is not CampaignState.SCHEDULED and not existing.cancelled:
        # A send now resumes that campaign: it mails who it has not reached yet, not the audience again.
        counts = store.deliveries.counts(existing.id)
        total, addresses = store.deliveries.waiting(existing.id), ()
        notes.append(
            f"this issue is campaign {existing.id} for this audience already ({existing.state}, "
            f"{counts.get(DeliveryStatus.SENT, 0)} sent): a send resumes it, and reaches {total} still to send"
        )
    return SendSummary(
        None, total, {"would send": total}, dry_run=True, warnings=notes, sample=addresses, audience=audience.describe()
    )


def existing_notes(
    store: Store, campaign: Campaign, audience: Audience, look_hash: str, include_new: bool
) -> list[str]:
    """What an editor should know when the issue is a campaign already: its look changed since, and (finished)
    who joined or started matching since."""
    notes = []
    if campaign.look_hash and campaign.look_hash != look_hash:
        notes.append(
            f"the look (layout, theme or list settings) changed since campaign {campaign.id} was snapshotted; it "
            "goes on as it was snapshotted (the content of the issue is the same)"
        )
    if campaign.state is CampaignState.FINISHED and not include_new:
        new = store.audiences.count(audience, campaign.id)
        if new:
            notes.append(
                f"{new} subscriber(s) joined or started matching since campaign {campaign.id} was sent; send it to "
                "exactly them with --include-new"
            )
    return notes
