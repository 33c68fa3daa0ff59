"""The previous release, measured beside this version in the same run (stages latency + idle,
report, catchup): its source checked out as a git worktree and run with this interpreter and
PYTHONPATH=its tree, from a working directory outside the checkout."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT

#: The release before `report` read a few index entries per evaluation (git commit), and where it is
#: checked out to be measured side by side (a `git worktree`, made when missing).
PREVIOUS_RELEASE = "6b3f6e2"
PREVIOUS_TREE = Path("/tmp/prev-release")
#: Its schema revision (the databases it reads are built at this one, then upgraded for this version).
PREVIOUS_REVISION = "0006"


@functools.cache
def previous_release() -> dict[str, Any]:
    """The previous release's tree, checked to be what `PYTHONPATH=tree python` imports (evaluator and
    its migrations): {"path", "commit", "evaluator", "migrations"}, or {"error"} when it can't be had.
    Made and checked once per run; the stages share it."""
    tree = PREVIOUS_TREE
    try:
        if not (tree / "evaluator").is_dir():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=True, capture_output=True)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), PREVIOUS_RELEASE],
                           check=True, capture_output=True, text=True)
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], check=True, capture_output=True,
                                text=True).stdout.strip()
        if not commit.startswith(PREVIOUS_RELEASE):
            return {"error": f"{tree} is at {commit}, not {PREVIOUS_RELEASE}"}
        # From a source tree its migrations are ../migrations; without this link, evaluator.migrations
        # would be found through this checkout's editable install: the new migrations.
        link = tree / "evaluator" / "migrations"
        if not link.exists():
            link.symlink_to(Path("..") / "migrations")
        code = "import evaluator, evaluator.migrations as m; print(evaluator.__file__); print(list(m.__path__)[0])"
        where = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                               cwd=tree.parent, env={**os.environ, "PYTHONPATH": str(tree)}).stdout.split()
    except (OSError, subprocess.CalledProcessError) as err:
        said = (getattr(err, "stderr", None) or "").strip().splitlines()  # git's own words, when it said any
        return {"error": said[-1] if said else str(err)}
    if not (where[0].startswith(str(tree) + os.sep) and os.path.realpath(where[1]) == str((tree / "migrations").resolve())):
        return {"error": f"PYTHONPATH={tree} imports {where}, not that tree"}
    return {"path": str(tree), "commit": commit, "evaluator": where[0], "migrations": where[1]}


def not_measured(previous: dict[str, Any]) -> str:
    """A table cell for a previous release that could not be had."""
    return f"previous release: not measured ({' '.join(previous.get('error', '').split())[:80]})"
