"""What a webhook receives: the event as stored in the outbox, with links (`json`), or a
Slack-compatible message summarising it (`slack`: `{"text", "blocks"}`, which Slack's
incoming webhooks and most chat tools that copy them accept).

Links are added when the event is sent, from the deployment's public URL
(`OPSGATE_PUBLIC_URL`), so the process that wrote the event needs no web configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TITLES = {
    "approval.requested": "Approval requested",
    "approval.decided": "Approval decision",
    "approval.executed": "Approved action executed",
    "approval.expired": "Approval request expired",
    "token.created": "API token created",
}
_VERBS = {"approve": "approved", "reject": "rejected"}
MAX_FIELD_LENGTH = 300


def with_links(event: Mapping[str, Any], public_url: str | None) -> dict[str, Any]:
    """The event with `links` (`console`: the approval's console page when a public URL is
    configured; otherwise no links)."""
    links: dict[str, str] = {}
    approval = event.get("approval")
    if public_url and isinstance(approval, Mapping) and approval.get("id"):
        links["console"] = f"{public_url.rstrip('/')}/console/approvals/{approval['id']}"
    return {**event, "links": links}


def _escape(text: object) -> str:
    """Slack mrkdwn treats &, < and > as markup (links, mentions): show them as text."""
    value = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value if len(value) <= MAX_FIELD_LENGTH else value[: MAX_FIELD_LENGTH - 1] + "…"


def headline(event: Mapping[str, Any]) -> str:
    """One line saying what happened, e.g. "Rita Chen asks to run account.unblock on …"."""
    approval: Mapping[str, Any] = event.get("approval") or {}
    what = f"{approval.get('action')} on {approval.get('target')}"
    kind = event.get("type")
    if kind == "approval.requested":
        return f"{approval.get('requester', {}).get('name')} asks to run {what}"
    if kind == "approval.decided":
        decision: Mapping[str, Any] = approval.get("decision") or {}
        who = (decision.get("decided_by") or {}).get("name", "someone")
        verb = _VERBS.get(str(decision.get("decision")), "decided")
        return (
            f"{who} {verb} {what} ({approval.get('approvals')} of {approval.get('quorum')}"
            f" approvals; now {approval.get('status')})"
        )
    if kind == "approval.executed":
        return f"{what} {(approval.get('execution') or {}).get('status', approval.get('status'))}"
    if kind == "approval.expired":
        return f"{what} expired before it ran"
    if kind == "token.created":
        token: Mapping[str, Any] = event.get("token") or {}
        owner = (event.get("user") or {}).get("name")
        if token.get("created_via") == "cli":
            return (
                f"An API token for {owner} was created by CLI on host {token.get('host')} "
                f"by OS user {token.get('os_user')}"
            )
        return f"{owner} created an API token in the console"
    return f"{kind}: {what}"


def slack_message(event: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack message for `event` (with links): a readable summary and the console link."""
    approval: Mapping[str, Any] = event.get("approval") or {}
    title = _TITLES.get(str(event.get("type")), str(event.get("type")))
    line = headline(event)
    link = (event.get("links") or {}).get("console")
    fields = (
        []
        if not approval
        else [
            ("Action", approval.get("action")),
            ("Target", approval.get("target")),
            ("Requested by", (approval.get("requester") or {}).get("name")),
            ("Status", approval.get("status")),
            ("Approvals", f"{approval.get('approvals')} of {approval.get('quorum')}"),
            ("Reason", approval.get("reason")),
        ]
    )
    comment = (approval.get("decision") or {}).get("comment")
    if comment:
        fields.append(("Comment", comment))
    error = (approval.get("execution") or {}).get("error")
    if error:
        fields.append(("Error", error.get("message") or error.get("code")))
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"*{_escape(title)}*\n{_escape(line)}"},
        },
        *(
            [
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": f"*{name}*\n{_escape(value)}"}
                        for name, value in fields
                        if value is not None
                    ],
                }
            ]
            if fields
            else []
        ),
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"request {_escape(event.get('request_id'))}"}],
        },
    ]
    if link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in opsgate"},
                        "url": link,
                    }
                ],
            }
        )
    text = f"{title}: {line}" + (f" {link}" if link else "")
    return {"text": text, "blocks": blocks}
