"""Pins: a checkpoint kept from training's deletion from the moment it is complete until its row is
written.

A pin is a hard link of each of the checkpoint's files (index, data shards, `.meta`; or the weight
file) in `MODEL_DIR/.evaluator/pins/<evaluation name>/`, a directory of the evaluator's own (never
a run, never listed by `--root`): `max_to_keep` then removes training's names, not the data. A link
costs no space while training's file is there. Where one cannot be made (another file system, no
permission), the files are copied, up to `--pin-budget` bytes of copies in all; past it, the
checkpoint is not pinned (a warning says so) and is evaluated if it is still there when its turn
comes, as before. Pins survive a stop and a crash: at start, those without a row are evaluated
whatever training did meanwhile, and those with one are removed.

Pinning is called from the watcher's thread (the moment an `.index` appears) and from the loop;
a lock keeps them apart. The data goes in before the index, each file under a temporary name then
renamed, so a pin whose index is there is whole.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from typing import Any

from evaluator import checkpoints
from evaluator.checkpoints import Checkpoint

#: The evaluator's own directory inside a model directory (runs and scans skip dot-directories).
OWN_DIR = ".evaluator"
#: The file a restore does not need (the graph, written after the index): pinned when it is there.
META = ".meta"
#: Errors of os.link that say a link cannot be made here (then the files are copied).
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP)


def pin_root(model_dir: str, name: str) -> str:
    return os.path.join(model_dir, OWN_DIR, "pins", name)


def budget_bytes(budget: int | str, directory: str) -> int:
    """--pin-budget as bytes: a count, or "N%" of the free space of `directory`'s file system."""
    if isinstance(budget, int):
        return budget
    share = float(str(budget).rstrip("%")) / 100
    probe = directory
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        stat = os.statvfs(probe)
    except OSError:
        return 0
    return int(stat.f_bavail * stat.f_frsize * share)


class Pins:
    """The pins of one model directory under one evaluation name."""

    def __init__(self, model_dir: str, name: str, budget: int | str, log: Any) -> None:
        self.model_dir = model_dir
        self.root = pin_root(model_dir, name)
        self.budget = budget_bytes(budget, model_dir)
        self.log = log
        self._lock = threading.Lock()
        #: The copies pinned (files a link could not be made for): path -> bytes.
        self._copies: dict[str, int] = {}
        #: The checkpoints this process pinned (what a start that fails lets go of: `release_made`).
        self.made: dict[str, Checkpoint] = {}
        self._said_budget = False
        self._said_unwritable = False
        self.enabled = True

    # -- pinning --------------------------------------------------------------------------------

    def pin(self, ckpt: Checkpoint) -> bool:
        """Pin `ckpt` if it is complete and not pinned yet; whether it is pinned now."""
        if not self.enabled:
            return False
        with self._lock:
            if self._whole(ckpt) and self._same(ckpt):
                self._add_optional(ckpt)  # a `.meta` written after the index (what --meta-graph checks)
                return True
            if not checkpoints.exists(ckpt.path):
                whole = self._whole(ckpt)
                if not whole:
                    self.log.debug("checkpoint gone before it could be pinned", checkpoint=ckpt.name)
                return whole
            try:
                return self._pin(ckpt)
            except OSError as err:
                if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and not os.path.isdir(self.root):
                    self.enabled = False
                    self.log.warning("cannot pin checkpoints (the model directory is not writable); a checkpoint "
                                     "training deletes before its turn is recorded missing", error=str(err))
                else:
                    self.log.warning("cannot pin the checkpoint", checkpoint=ckpt.name, error=str(err))
                return False

    def _pin(self, ckpt: Checkpoint) -> bool:
        """Its data shards, then its index (what makes a pin whole), then its `.meta` if there."""
        sources = checkpoints.files(ckpt.path)
        needed = sorted((p for p in sources if not p.endswith(META)), key=lambda p: p.endswith(checkpoints.INDEX_SUFFIX))
        if not needed:
            return False
        checkpoints.make_dirs(os.path.dirname(self.path(ckpt)), self.model_dir)
        copies: dict[str, int] = {}
        for source in needed:
            placed = self._place(ckpt, source, copies)
            if placed is None:  # deleted while pinned, or past the budget: what is there is not whole
                self.log.debug("checkpoint not pinned", checkpoint=ckpt.name, file=os.path.basename(source))
                self._unpin(ckpt)
                return False
        self._copies.update(copies)
        self.made[ckpt.name] = ckpt
        self._add_optional(ckpt)
        return True

    def _add_optional(self, ckpt: Checkpoint) -> None:
        """The files a restore does not need (`.meta`), where the pin lacks them: best effort."""
        if ckpt.is_weight_file:
            return
        meta = ckpt.path + META
        if os.path.exists(meta) and not os.path.exists(self.path(ckpt) + META):
            copies: dict[str, int] = {}
            if self._place(ckpt, meta, copies):
                self._copies.update(copies)

    def _place(self, ckpt: Checkpoint, source: str, copies: dict[str, int]) -> str | None:
        """One file into the pin (a link, else a copy within the budget); its path, or None."""
        target = os.path.join(os.path.dirname(self.path(ckpt)), os.path.basename(source))
        temporary = os.path.join(os.path.dirname(target), f".{os.path.basename(source)}.pin-{os.getpid()}")
        _remove(temporary)
        try:
            if not _link(source, temporary):
                size = os.path.getsize(source)
                if sum(self._copies.values()) + sum(copies.values()) + size > self.budget:
                    self._over_budget(ckpt)
                    return None
                shutil.copyfile(source, temporary)
                copies[target] = size
            os.replace(temporary, target)
        except FileNotFoundError:
            _remove(temporary)
            copies.pop(target, None)
            return None
        return target

    def _over_budget(self, ckpt: Checkpoint) -> None:
        if not self._said_budget:
            self._said_budget = True
            self.log.warning("pin budget reached: checkpoints that cannot be hard-linked are not copied until "
                             "pinned ones are evaluated (--pin-budget)", budget_bytes=self.budget,
                             checkpoint=ckpt.name)

    # -- what is pinned -------------------------------------------------------------------------

    def path(self, ckpt: Checkpoint) -> str:
        """Where `ckpt`'s pin is (its prefix, or its weight file)."""
        return os.path.join(self.root, ckpt.name)

    def held_path(self, ckpt: Checkpoint) -> str | None:
        """The pin's path if `ckpt` is pinned whole, else None."""
        return self.path(ckpt) if self._whole(ckpt) else None

    def _whole(self, ckpt: Checkpoint) -> bool:
        return checkpoints.exists(self.path(ckpt))

    def _same(self, ckpt: Checkpoint) -> bool:
        """Whether the pin is of the checkpoint's files as they are now (or training's are gone)."""
        original = checkpoints.marker(ckpt.path)
        try:
            return os.path.samefile(original, checkpoints.marker(self.path(ckpt)))
        except FileNotFoundError:
            return not os.path.exists(original)
        except OSError:
            return True

    def pinned(self) -> list[str]:
        """The names of the checkpoints pinned whole (prefixes, or weight files)."""
        try:
            entries = os.listdir(self.root)
        except OSError:
            return []
        names = set()
        for entry in entries:
            if entry.startswith("."):
                continue
            if entry.endswith(checkpoints.INDEX_SUFFIX):
                names.add(entry[: -len(checkpoints.INDEX_SUFFIX)])
            elif checkpoints.is_weight_file(entry):
                names.add(entry)
        return sorted(names)

    # -- letting go -----------------------------------------------------------------------------

    def release(self, ckpt: Checkpoint) -> None:
        """Its row is written: the pin goes (and the copies' bytes with it)."""
        with self._lock:
            self._unpin(ckpt)

    def release_made(self) -> None:
        """Let go of what this process pinned (a start that failed: bad input leaves nothing behind);
        pins an earlier process left stay for the next start."""
        with self._lock:
            for ckpt in list(self.made.values()):
                self._unpin(ckpt)
            for directory in (self.root, os.path.dirname(self.root), os.path.join(self.model_dir, OWN_DIR)):
                try:
                    os.rmdir(directory)  # only if empty: nothing of ours left behind
                except OSError:
                    break

    def _unpin(self, ckpt: Checkpoint) -> None:
        """The index first (a pin without it is not whole), then the rest."""
        self.made.pop(ckpt.name, None)
        files = sorted(checkpoints.files(self.path(ckpt)), key=lambda path: not path.endswith(checkpoints.INDEX_SUFFIX))
        for path in files:
            _remove(path)
            self._copies.pop(path, None)


def _link(source: str, target: str) -> bool:
    """Hard-link `source` as `target`; False where links cannot be made here (then copy)."""
    try:
        os.link(source, target)
        return True
    except OSError as err:
        if err.errno in _NO_LINK:
            return False
        raise


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
