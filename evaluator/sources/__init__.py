"""Where checkpoints come from, behind the one small interface the service needs: what is there now
(listed in the state file, found beside it; complete or not; each one's fingerprint), a way to hear
of a change, and a local, stable copy of one checkpoint to restore from.

A local directory (`local.py`: inotify or polling, the state file, a scan, hard-to-lose open
descriptors) is the first source; `artifacts.py` lists exported models (numbered SavedModel
versions, frozen `.pb` files) as checkpoints; `remote.py` a prefix on object storage (s3://, gs://),
listed every poll interval and staged locally. `open_source` picks one, and nothing above this
package changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from evaluator.checkpoints import Checkpoint, State


@dataclass
class Held:
    """One checkpoint as it is restored: `path`, a local prefix (or weight file) that stays readable
    while held, and its files, open (what the best kept is copied from, even if training deleted
    them meanwhile)."""

    path: str
    files: dict[str, IO[bytes]] = field(default_factory=dict)

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files = {}


class Source(Protocol):
    """The checkpoints of one run (one model directory)."""

    #: The run's location as its rows name it (a local directory: absolute, symlinks resolved; object
    #: storage: the URL, without a trailing slash).
    location: str

    # -- what is there now ------------------------------------------------------------------------

    def listed(self) -> State:
        """The checkpoints the state file lists (StateFileError when it can't be read)."""
        ...

    def has_state_file(self) -> bool: ...

    def waiting_for(self) -> str:
        """What would count as a checkpoint here (said once while there is none)."""
        ...

    def found(self, families: set[str]) -> list[Checkpoint]:
        """The checkpoints there beside those listed: of the listed `families`, and weight files."""
        ...

    def started(self, ckpt: Checkpoint) -> bool:
        """Whether its marker (an `.index`, or the weight file) is there: being written, or written."""
        ...

    def complete(self, ckpt: Checkpoint) -> bool:
        """Whether it can be read: its index and data are there."""
        ...

    def fingerprint(self, ckpt: Checkpoint) -> str | None:
        """What its bytes are (None: not there): training restarted from scratch reuses names, not these."""
        ...

    def files(self, ckpt: Checkpoint) -> tuple[tuple[str, int, int], ...]:
        """(file, size, mtime) of each of its files: what changes while it is still being written."""
        ...

    # -- a change -------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """How changes are noticed (said in the log)."""
        ...

    def watch(self, on_change: Callable[[], None], on_written: Callable[[Checkpoint], None]) -> None:
        """Call `on_change` when the state file (or the location itself) changes, `on_written` when a
        checkpoint's marker appears; from another thread."""
        ...

    def ensure(self) -> bool:
        """Whether the location is there (watched, when watching): it may appear, go and come back."""
        ...

    def stop(self) -> None: ...

    # -- a stable copy ----------------------------------------------------------------------------

    def hold(self, ckpt: Checkpoint) -> Held:
        """A local, stable view of `ckpt` to restore from and keep; the caller closes it. May raise
        CheckpointDeferred: no copy now (a remote source's staging), it stays pending (`retry_in`)."""
        ...

    # -- pins (sources/pins.py) -------------------------------------------------------------------

    def pin(self, ckpt: Checkpoint) -> bool:
        """Keep `ckpt` from deletion if it is complete; whether it is pinned now."""
        ...

    def done(self, ckpt: Checkpoint) -> None:
        """Its row is written: let go of its pin."""
        ...

    def pinned(self) -> list[Checkpoint]:
        """The checkpoints pinned (by this process or one before it)."""
        ...


def is_remote(location: str) -> bool:
    """Whether a location is on object storage (s3://, gs://) rather than a local path."""
    from evaluator.sources.remote import is_remote as remote

    return remote(location)


def normalize(location: str) -> str:
    """A location as its rows name it: a URL without a trailing slash, or an absolute local path."""
    if is_remote(location):
        from evaluator.sources.remote import normalize as normalize_url

        return normalize_url(location)
    from evaluator.checkpoints import normalize_model_dir

    return normalize_model_dir(location)


def open_source(location: str, *, weight_files: bool, poll: bool = False, poll_interval: float = 1.0,
                artifact: str | None = None, pins: Any = None, pin_budget: int | str = "10%") -> Source:
    """The source for a run's location: a local directory of checkpoints (pinned in `pins`, a
    sources.pins.Pins, when given), or of exported models (`artifact`: "savedmodel" versions,
    "frozen-graph" files; sources/artifacts.py), or a prefix on object storage (sources/remote.py:
    its pins are staged downloads, within `pin_budget`)."""
    if is_remote(location):
        from evaluator.sources.remote import RemoteDirectory

        return RemoteDirectory(location, weight_files=weight_files, poll_interval=poll_interval, pin_budget=pin_budget)
    if artifact is not None:
        from evaluator.sources.artifacts import ArtifactDirectory

        return ArtifactDirectory(location, artifact, poll=poll, poll_interval=poll_interval)
    from evaluator.sources.local import LocalDirectory

    return LocalDirectory(location, weight_files=weight_files, poll=poll, poll_interval=poll_interval, pins=pins)


def watch_root(root: str, on_change: Callable[[], None], *, weight_files: bool) -> Any:
    """Start watching `root` for new runs (`on_change` from another thread); the watcher (with stop()),
    or None when it cannot be watched now (not there yet)."""
    if is_remote(root):
        return None  # listed at each --rescan tick
    from evaluator.sources.local import RootWatcher

    watcher = RootWatcher(root, on_change, weight_files=weight_files)
    return watcher if watcher.start() else None


def discover(root: str, depth: int, weight_files: bool) -> list[str]:
    """The runs below `root` (`--root`): the locations that hold checkpoints (SourceUnavailable when
    a remote root can't be listed now)."""
    if is_remote(root):
        from evaluator.sources.remote import discover as discover_remote

        return discover_remote(root, depth, weight_files)
    from evaluator.sources.local import discover as discover_local

    return discover_local(root, depth, weight_files)
