"""Interfaces layer: the ``tether`` CLI, the HTTP control plane and web UI.

Interfaces read and act on runs through the App's public query and command API only
(``list_runs``, ``get_run``, ``get_journal``, ``signal``, ``cancel``), never through the
store or SQL, so every interface sees exactly what a user's own code would.

The lineage functions are public, for programs that compare runs themselves:
:func:`fork_tree` (the branch tree of forks around a run) and :func:`diff_runs` (where two
runs' journals diverge and what differs after it), with their JSON views.
"""

from __future__ import annotations

from ._lineage import (
    Change,
    Diff,
    Tree,
    TreeNode,
    diff_journals,
    diff_runs,
    diff_view,
    entry_summary,
    fork_tree,
    tree_view,
)

__all__ = [
    "Change",
    "Diff",
    "Tree",
    "TreeNode",
    "diff_journals",
    "diff_runs",
    "diff_view",
    "entry_summary",
    "fork_tree",
    "tree_view",
]
