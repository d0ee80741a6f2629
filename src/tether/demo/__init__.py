"""``tether demo``: an operations agent survives a SIGKILL of the process running it.

An ``Agent`` with a ``ScriptedModel`` (no network, no keys) works a queue of support tickets:
it looks up customers, refunds a duplicate charge, checks a shipment, creates a password
reset link and answers every ticket by email. A worker *process* runs it; once the refund is
in the effect log and the model is drafting the replies, the demo kills that process with
SIGKILL. A second worker process resumes the run from the journal (the model is not asked
again for the answers it gave), finishes it, and the demo proves from the side-effect
ledger and the effect log that no refund and no email happened twice.

``make demo`` runs it against a fresh ``demo.db``. The worker processes are
``python -m tether.demo --worker DATABASE_URL LEDGER``.

- ``_world``: the tickets, customers, shipments, and the ledger file.
- ``_ops``: the App, its tools, the agent, and the model's script.
- ``_run``: the narrated demo (spawn, kill, resume, prove).
- ``_show``: what it prints.
"""

from __future__ import annotations

from ._ops import build_app
from ._run import run

__all__ = ["build_app", "run"]
