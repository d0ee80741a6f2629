"""Interfaces layer: the ``tether`` CLI (later the HTTP control plane and MCP server).

Interfaces read and act on runs through the App's public query and command API only
(``list_runs``, ``get_run``, ``get_journal``, ``signal``, ``cancel``), never through the
store or SQL, so every interface sees exactly what a user's own code would.
"""

from __future__ import annotations

__all__: list[str] = []
