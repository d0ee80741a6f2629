"""The outside world of the demo: a helpdesk, a CRM, a carrier, and the ledger.

The ledger is a JSON Lines file that stands in for what the other side of every call
keeps: the payment provider's refunds, the mail server's sent folder, the identity
service's reset links, the model provider's bill. Tool bodies and model turns append one
line per call they make, with the process id and the idempotency key, so that the demo can
count, from outside the engine, how often each thing really happened.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["CUSTOMERS", "SHIPMENTS", "TICKETS", "append", "read_ledger"]

# The open queue. Tags are what a triage rule set on the way in.
TICKETS: list[dict[str, Any]] = [
    {
        "ticket_id": "TCK-1042",
        "from": "maya.chen@example.com",
        "subject": "Charged twice for my Pro plan this month",
        "body": "Hi, my card was charged $49.00 twice on June 1 for the Pro plan. "
        "Can you refund the extra one?",
        "tags": ["billing"],
    },
    {
        "ticket_id": "TCK-1043",
        "from": "jonas.weber@example.de",
        "subject": "Where is my order ORD-88190?",
        "body": "I ordered two security keys last week and have heard nothing since.",
        "tags": ["shipping"],
    },
    {
        "ticket_id": "TCK-1044",
        "from": "priya.natarajan@example.in",
        "subject": "Locked out after changing phones",
        "body": "My old phone had the authenticator app. I can't log in any more: "
        "please help me reset my password.",
        "tags": ["account"],
    },
]

CUSTOMERS: dict[str, dict[str, Any]] = {
    "maya.chen@example.com": {
        "customer_id": "cus_7Hq2Lm",
        "name": "Maya Chen",
        "plan": "Pro, monthly ($49.00)",
        "customer_since": "2022-03-14",
        "charges": [
            {"charge_id": "ch_3PbX81", "date": "2024-06-01", "amount_cents": 4900},
            {"charge_id": "ch_3PbX9K", "date": "2024-06-01", "amount_cents": 4900},
            {"charge_id": "ch_3OaW22", "date": "2024-05-01", "amount_cents": 4900},
        ],
    },
    "jonas.weber@example.de": {
        "customer_id": "cus_2Fw9Tr",
        "name": "Jonas Weber",
        "plan": "Team, 12 seats (EUR 240.00 a month)",
        "customer_since": "2021-11-02",
        "orders": [
            {
                "order_id": "ORD-88190",
                "items": "2 security keys, USB-C",
                "total": "EUR 118.00",
                "carrier": "DHL",
                "tracking_number": "JD014600003828",
            }
        ],
    },
    "priya.natarajan@example.in": {
        "customer_id": "cus_9Kd4Xa",
        "name": "Priya Natarajan",
        "plan": "Starter (free)",
        "customer_since": "2024-01-20",
        "two_factor": "authenticator app",
    },
}

SHIPMENTS: dict[str, dict[str, Any]] = {
    "JD014600003828": {
        "status": "in transit",
        "last_scan": "Leipzig hub, this morning",
        "estimated_delivery": "Friday",
    }
}


def append(ledger: Path, **record: Any) -> None:
    """One line per call, written at once: a SIGKILL cannot leave half of it behind."""
    line = json.dumps({"pid": os.getpid(), "at": round(time.time(), 3), **record}) + "\n"
    with ledger.open("a", encoding="utf-8") as f:
        f.write(line)


def read_ledger(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    text = ledger.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
