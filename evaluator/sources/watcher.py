"""File-system events on the model directory -> calls to the service. No TensorFlow, no evaluation.

TensorFlow writes the `checkpoint` state file to a temporary name and renames it into place, so
the event that matters is a move whose destination is `checkpoint`; creations, modifications and
close-after-write of the file count too (other writers). Opens and reads don't: the evaluator's
own reads of the file must not wake it. A checkpoint's `.index` appearing is reported too: it is
proof the checkpoint was written even if `max_to_keep` deletes it before the state file is read.
`--poll` uses watchdog's polling observer instead of inotify, for network file systems where
events don't arrive.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import structlog
from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from evaluator.checkpoints import INDEX_SUFFIX, STATE_FILE, is_weight_file

_log = structlog.get_logger("evaluator.watcher")

#: How long watchdog's inotify emitter holds a rename's first half (IN_MOVED_FROM) to pair it with
#: its second. Its default, 0.5 s, is slept through whole, even once the pair has formed: when the two
#: halves of a rename (TensorFlow writes every file so) come in two reads, every event behind them
#: waits half a second, and a checkpoint that lives less (a trainer saving every step, keeping two)
#: is deleted before its index event arrives to pin it. The halves come microseconds apart.
MOVE_PAIRING_SECONDS = 0.02


def _shorten_move_pairing() -> None:
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
    except ImportError:  # not Linux, or a watchdog that pairs moves otherwise
        return
    InotifyMoveEventGrouper.delay = MOVE_PAIRING_SECONDS


_shorten_move_pairing()

_RELEVANT = {EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_DELETED, EVENT_TYPE_CLOSED}
_EVENT_FILTER = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
    DirDeletedEvent, DirMovedEvent,
]


class _ModelDirHandler(FileSystemEventHandler):
    """Calls `on_change` for events on `<model_dir>/checkpoint` or on the directory itself, and
    `on_written(prefix)` when a checkpoint's `.index` appears (it is written just before the state file),
    and, with `weight_files`, `on_written(path)` when a Keras weight file is closed after writing or
    moved into place."""

    def __init__(self, model_dir: str, on_change: Callable[[], None],
                 on_written: Callable[[str], None] | None, weight_files: bool = False, poll: bool = False) -> None:
        self._dir = model_dir
        self._state_file = os.path.join(model_dir, STATE_FILE)
        self._on_change = on_change
        self._on_written = on_written
        self._weight_files = weight_files
        # A weight file is complete once closed after writing, or renamed into place; polling sees
        # neither, only its creation (a read too early is retried while it grows).
        self._weight_file_events = ((EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED) if poll
                                    else (EVENT_TYPE_CLOSED, EVENT_TYPE_MOVED))

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # an exception here would end watchdog's thread, and every later event
            _log.exception("file event handler failed", fs_event=repr(event))

    def _dispatch(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path or "")
        if event.is_directory:
            # The directory itself deleted or moved away; its "modified" events (every file
            # created in it) say nothing.
            if event.event_type in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED) and src == self._dir:
                self._on_change()
            return
        if event.event_type not in _RELEVANT:
            return
        if self._state_file in (src, dest):
            self._on_change()
            return
        written = dest if event.event_type == EVENT_TYPE_MOVED else src
        if self._on_written is None or os.path.dirname(written) != self._dir:
            return
        if event.event_type in (EVENT_TYPE_CREATED, EVENT_TYPE_MOVED) and written.endswith(INDEX_SUFFIX):
            self._on_written(written[: -len(INDEX_SUFFIX)])
        elif (self._weight_files and is_weight_file(written) and not os.path.basename(written).startswith(".")
              and event.event_type in self._weight_file_events):
            self._on_written(written)


class Watcher:
    """Watches one model directory; survives the directory being deleted and created again."""

    def __init__(self, model_dir: str, on_change: Callable[[], None], *,
                 on_written: Callable[[str], None] | None = None, weight_files: bool = False,
                 poll: bool = False, poll_interval: float = 1.0) -> None:
        self._dir = model_dir
        self._handler = _ModelDirHandler(model_dir, on_change, on_written, weight_files, poll)
        self._observer: BaseObserver = PollingObserver(timeout=poll_interval) if poll else Observer()
        self._watch: ObservedWatch | None = None
        self._identity: tuple[int, int] | None = None

    @property
    def kind(self) -> str:
        return type(self._observer).__name__

    def start(self) -> bool:
        """Start the observer thread; returns whether the directory is being watched yet."""
        self._observer.daemon = True
        self._observer.start()
        return self.ensure()

    def ensure(self) -> bool:
        """(Re)arm the watch if the directory appeared or was replaced; returns whether it is watched."""
        identity = _identity(self._dir)
        if self._watch is not None and identity == self._identity:
            return True
        self._disarm()
        if identity is None:
            return False
        try:
            self._watch = self._observer.schedule(
                self._handler, self._dir, recursive=False, event_filter=_EVENT_FILTER
            )
        except OSError as err:  # vanished again, or out of inotify watches
            _log.warning("cannot watch the model directory", model_dir=self._dir, error=str(err))
            return False
        self._identity = identity
        return True

    def stop(self) -> None:
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)

    def _disarm(self) -> None:
        if self._watch is not None:
            try:
                self._observer.unschedule(self._watch)
            except (KeyError, OSError):  # the emitter already went with the directory
                pass
        self._watch = None
        self._identity = None


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the directory, or None if it is not there."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    if not os.path.isdir(path):
        return None
    return stat.st_dev, stat.st_ino
