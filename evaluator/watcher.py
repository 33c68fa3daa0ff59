"""File-system events on the model directory -> a call to `on_change`. No TensorFlow, no evaluation.

TensorFlow writes the `checkpoint` state file to a temporary name and renames it into place, so
the event that matters is a move whose destination is `checkpoint`; creations, modifications and
close-after-write of the file count too (other writers). Opens and reads don't: the evaluator's
own reads of the file must not wake it. `--poll` uses watchdog's polling observer instead of
inotify, for network file systems where events don't arrive.
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

from evaluator.checkpoints import STATE_FILE

_log = structlog.get_logger("evaluator.watcher")

_RELEVANT = {EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_DELETED, EVENT_TYPE_CLOSED}
_EVENT_FILTER = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
    DirDeletedEvent, DirMovedEvent,
]


class _StateFileHandler(FileSystemEventHandler):
    """Calls `on_change` for events on `<model_dir>/checkpoint` and on the directory itself."""

    def __init__(self, model_dir: str, on_change: Callable[[], None]) -> None:
        self._dir = model_dir
        self._state_file = os.path.join(model_dir, STATE_FILE)
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _RELEVANT:
            return
        paths = {os.fsdecode(event.src_path), os.fsdecode(event.dest_path or "")}
        if self._state_file in paths or (event.is_directory and self._dir in paths):
            try:
                self._on_change()
            except Exception:  # an exception here would end watchdog's thread, and every later event
                _log.exception("state file change handler failed")


class Watcher:
    """Watches one model directory; survives the directory being deleted and created again."""

    def __init__(self, model_dir: str, on_change: Callable[[], None], *,
                 poll: bool = False, poll_interval: float = 1.0) -> None:
        self._dir = model_dir
        self._handler = _StateFileHandler(model_dir, on_change)
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
