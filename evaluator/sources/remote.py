"""A model directory on object storage (`s3://bucket/prefix`, `gs://bucket/prefix`): a source.

What is there comes from listing the prefix's objects every --poll-interval (fsspec: s3fs, gcsfs,
imported only here; extras `evaluator[s3]`, `evaluator[gcs]`). Credentials and endpoints are each
cloud's own environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ..., GOOGLE_APPLICATION_CREDENTIALS,
STORAGE_EMULATOR_HOST). An object's ETag (S3) or generation (GCS) is its fingerprint.

A sync tool uploads the state file before the files it names, and shards one by one: a checkpoint
is complete once its index and all its shards are there with the same size and tag in two
listings in a row. A complete checkpoint is downloaded into a local staging directory
($XDG_CACHE_HOME/evaluator/staging/<run>/, the pin of a remote checkpoint: training's deletion
cannot take it), as soon as it is complete and has no row (`pin`: the listing thread stages it),
restored from there, and removed once its row is recorded (`done`). The staged copies count
against --pin-budget: past it, a checkpoint waits (a warning names the budget).

A staged copy outlives a stop and a crash: a manifest written once its download is whole (the
objects it came from) lets the next process on this machine adopt it (`pinned`), so a checkpoint
staged but not recorded is evaluated after the restart even if training deleted its objects.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from evaluator import checkpoints, log
from evaluator.checkpoints import Checkpoint, State
from evaluator.errors import (
    CheckpointDeferred,
    ConfigError,
    ModelDirError,
    SourceUnavailable,
    StateFileError,
    first_line,
)
from evaluator.options import DEFAULT_PIN_BUDGET
from evaluator.sources import Held

#: URL scheme -> (fsspec protocol, the module it needs, the extra that installs it).
SCHEMES = {"s3": ("s3", "s3fs", "s3"), "gs": ("gcs", "gcsfs", "gcs"), "gcs": ("gcs", "gcsfs", "gcs")}
_URL = re.compile(r"^(s3|gs|gcs)://([^/]*)(/.*)?$")
#: Directories --root never descends into (the evaluator's own outputs, as on disk).
OWN_OUTPUTS = ("eval", "export")
#: Seconds before a checkpoint that could not be staged (budget, a failed download) is tried again.
RETRY_STAGING = 5.0
#: In a staged copy's directory, written last: the checkpoint and the objects it was downloaded from.
MANIFEST = ".staged.json"
_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


def is_remote(location: str) -> bool:
    """Whether `location` is an object-storage URL (s3://, gs://)."""
    return _URL.match(location) is not None


def normalize(url: str) -> str:
    """The URL as rows key it: `s3://bucket/prefix`, without a trailing slash (`gcs://` as `gs://`)."""
    match = _URL.match(url)
    if match is None or not match.group(2):
        raise ConfigError(f"{url}: an object-storage location is s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]")
    prefix = "/".join(part for part in (match.group(3) or "").split("/") if part)
    scheme = "gs" if match.group(1) == "gcs" else match.group(1)  # one run, one key
    return f"{scheme}://{match.group(2)}" + (f"/{prefix}" if prefix else "")


def _split(url: str) -> tuple[str, str]:
    """(scheme, the fsspec path `bucket/prefix`)."""
    scheme, _, path = normalize(url).partition("://")
    return scheme, path


_filesystems: dict[str, Any] = {}


def filesystem(url: str) -> Any:
    """The fsspec file system for the URL's scheme; ConfigError naming the extra when it is not installed."""
    scheme, _ = _split(url)
    protocol, module, extra = SCHEMES[scheme]
    if protocol not in _filesystems:
        try:
            __import__(module)
            import fsspec
        except ImportError:
            raise ConfigError(f"{scheme}:// locations need {module}: pip install 'evaluator[{extra}]'") from None
        logging.getLogger("gcsfs").setLevel(logging.ERROR)  # "could not determine bucket type" per call
        _filesystems[protocol] = fsspec.filesystem(protocol, skip_instance_cache=True)
    return _filesystems[protocol]


def check(url: str, *, wait: bool) -> None:
    """At start: ModelDirError when the bucket does not exist (unless `wait`); SourceUnavailable
    (exit 75) when the storage can't be reached."""
    fs = filesystem(url)
    path = _split(url)[1]
    bucket = path.split("/")[0]
    try:
        there = bool(fs.find(path, maxdepth=1, withdirs=False)) or fs.exists(bucket)  # find raises when unreachable
    except Exception as err:  # noqa: BLE001 - the backends' errors have no common type
        if wait:
            return
        raise SourceUnavailable(f"cannot reach {url}: {first_line(err)} (check the endpoint and credentials: "
                                "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, "
                                "STORAGE_EMULATOR_HOST)") from None
    if not there and not wait:
        raise ModelDirError(f"bucket {bucket} of {url} does not exist (or is not readable with these credentials; "
                            "pass --wait-for-dir to wait for it)")


def _key(url: str) -> str:
    """A run's URL as one directory name (`s3://b/runs/a` -> `s3_b_runs_a`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", normalize(url))


def _home(variable: str, default: str) -> str:
    return os.environ.get(variable) or os.path.join(os.path.expanduser("~"), default)


def staging_root() -> str:
    return os.path.join(_home("XDG_CACHE_HOME", ".cache"), "evaluator", "staging")


def outputs_dir(url: str) -> str:
    """Where a remote run's outputs go by default (TensorBoard's eval/, export/best):
    $XDG_DATA_HOME/evaluator/runs/<run> (~/.local/share/...)."""
    return os.path.join(_home("XDG_DATA_HOME", os.path.join(".local", "share")), "evaluator", "runs", _key(url))


def budget_bytes(budget: int | str, directory: str) -> int:
    """--pin-budget in bytes: a byte count, or "N%" of the free space in `directory` now."""
    if isinstance(budget, int):
        return budget
    text = str(budget).strip()
    if text.endswith("%"):
        return int(shutil.disk_usage(directory).free * float(text[:-1]) / 100)
    return int(text)


class Staging:
    """The staged copies of one process, against one budget (shared by its remote runs)."""

    def __init__(self, root: str, budget: int | str) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = root
        self.budget = budget
        self.limit = budget_bytes(budget, root)
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def take(self, size: int) -> None:
        """Count `size` bytes already on disk (copies adopted from an earlier process), budget or not."""
        with self._lock:
            self.used += size

    def free(self, size: int) -> None:
        with self._lock:
            self.used = max(0, self.used - size)

    def describe(self) -> str:
        return f"--pin-budget {self.budget} ({self.limit} bytes)"


_stagings: dict[tuple[str, str], Staging] = {}


def staging(budget: int | str) -> Staging:
    root = staging_root()
    key = (root, str(budget))
    if key not in _stagings:
        _stagings[key] = Staging(root, budget)
    return _stagings[key]


@dataclass(frozen=True)
class Obj:
    """One object as a listing shows it."""

    size: int
    #: ETag (S3) or generation (GCS): what its bytes are.
    tag: str
    mtime_ns: int


def _entry(info: dict[str, Any]) -> Obj:
    tag = str(info.get("generation") or info.get("ETag") or info.get("etag") or "").strip('"')
    when = info.get("LastModified") or info.get("mtime") or info.get("updated")
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            when = None
    mtime = int(when.timestamp() * 1e9) if isinstance(when, datetime) else 0
    return Obj(size=int(info.get("size") or info.get("Size") or 0), tag=tag, mtime_ns=mtime)


class RemoteDirectory:
    """A model directory on object storage (see the module docstring)."""

    def __init__(self, location: str, *, weight_files: bool, poll_interval: float = 1.0,
                 pin_budget: int | str = DEFAULT_PIN_BUDGET) -> None:
        self.location = normalize(location)
        self.weight_files = weight_files
        self.poll_interval = poll_interval
        self.fs = filesystem(self.location)
        self._path = _split(self.location)[1]
        self.log = log.get(model_dir=self.location)
        self.staging = staging(pin_budget)
        self.stage_dir = os.path.join(self.staging.root, _key(self.location))
        self._lock = threading.Lock()
        #: The last two listings (name -> object): equal entries in both are stable.
        self._current: dict[str, Obj] | None = None
        self._previous: dict[str, Obj] = {}
        self._listed_at = -float("inf")
        #: Listings made so far (a checkpoint is stable from the second on).
        self._listings = 0
        self._reachable: bool | None = None
        self._error: str | None = None
        #: The state file's tag, and what it said (or why it can't be read).
        self._state: tuple[str, State | StateFileError] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._over_budget: set[str] = set()
        #: The checkpoints to stage (new to the backlog, no row yet), and those staged.
        self._wanted: set[str] = set()
        self._staged: dict[str, Staged] = {}
        self._pin_lock = threading.RLock()
        self._adopt_staged()

    # -- listing ----------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """List the prefix once more; returns whether the listing (or what is stable in it) changed."""
        try:
            try:
                found = self.fs.ls(self._path, detail=True, refresh=True)  # one request per 1,000 objects
            except FileNotFoundError:  # nothing under the prefix yet (or no bucket: below)
                found = []
            start = len(self._path) + 1
            listing = {info["name"][start:]: _entry(info) for info in found
                       if info.get("type") == "file" and info["name"].startswith(self._path + "/")
                       and "/" not in info["name"][start:]}
            reachable = bool(listing) or self.fs.exists(self._path.split("/")[0])
            error = None if reachable else f"bucket {self._path.split('/')[0]} does not exist"
        except Exception as err:  # noqa: BLE001 - the backends' errors have no common type
            listing, reachable, error = {}, False, first_line(err)
        with self._lock:
            if error != self._error and error is not None:
                self.log.warning("cannot list the model directory's objects; will try again", error=error,
                                 retry_in=self.poll_interval)
            elif error != self._error:
                self.log.info("model directory's objects listed again")
            self._error, self._reachable, self._listed_at = error, reachable, time.monotonic()
            if not reachable:
                return False
            before = (self._previous, self._current)
            self._previous, self._current = self._current or {}, listing
            self._listings += 1
            return before != (self._previous, self._current)

    def _listing(self) -> dict[str, Obj]:
        """The current listing; listed now when there is none yet, or when not watched and older
        than --poll-interval (`--once`: two listings a poll interval apart say what is stable)."""
        if self._current is None:
            self.refresh()
        if self._thread is None and self._reachable:
            wait = self._listed_at + self.poll_interval - time.monotonic()
            if self._listings < 2 and wait > 0:
                time.sleep(wait)
            if self._listings < 2 or wait <= 0:
                self.refresh()
        with self._lock:
            return dict(self._current or {})

    def _stable(self, names: list[str]) -> bool:
        with self._lock:
            current, previous = self._current or {}, self._previous
            return all(name in current and previous.get(name) == current[name] for name in names)

    # -- what is there now ------------------------------------------------------------------------

    def listed(self) -> State:
        listing = self._listing()
        obj = listing.get(checkpoints.STATE_FILE)
        if obj is None:
            return State()
        if self._state is not None and self._state[0] == obj.tag:
            if isinstance(self._state[1], StateFileError):
                raise self._state[1]
            return self._state[1]
        try:
            text = self.fs.cat_file(f"{self._path}/{checkpoints.STATE_FILE}").decode("utf-8")
        except FileNotFoundError:
            return State()
        except UnicodeDecodeError as err:
            raise StateFileError(f"cannot parse {self.location}/checkpoint: {err}") from None
        except Exception as err:  # noqa: BLE001
            raise StateFileError(f"cannot read {self.location}/checkpoint: {first_line(err)}") from None
        listed = checkpoints.parse_plain_state(text)
        if listed is None:
            try:
                listed = self._parse_with_tensorflow(text)
            except StateFileError as err:
                self._state = (obj.tag, err)  # not read again until it changes
                raise
        state = self._resolve(listed)
        self._state = (obj.tag, state)
        return state

    def _parse_with_tensorflow(self, text: str) -> list[str]:
        """A state file TensorFlow wrote otherwise than plainly: its own parser, on a local copy."""
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, checkpoints.STATE_FILE), "w", encoding="utf-8") as handle:
                handle.write(text)
            import tensorflow as tf
            from google.protobuf import text_format

            try:
                proto = tf.train.get_checkpoint_state(directory)
            except (ValueError, text_format.ParseError, tf.errors.OpError) as err:
                raise StateFileError(f"cannot parse {self.location}/checkpoint: {first_line(err)}") from err
        if proto is None:
            raise StateFileError(f"cannot parse {self.location}/checkpoint: not a CheckpointState text proto")
        listed = list(proto.all_model_checkpoint_paths)
        if proto.model_checkpoint_path not in listed:
            listed.append(proto.model_checkpoint_path)
        return [os.path.relpath(p, directory) if p.startswith(directory + os.sep) else p for p in listed]

    def _resolve(self, listed: list[str]) -> State:
        """The listed names: relative, this URL's own, or an absolute path of the machine that wrote
        them (a sync tool copied the directory: the name is its last part). Another URL, or a path
        up or down the tree, is ignored (the run logs it), as on disk."""
        found: dict[str, Checkpoint] = {}
        ignored: list[str] = []
        for raw in listed:
            if raw.startswith(self.location + "/"):
                name = raw[len(self.location) + 1:]
            elif raw.startswith("/"):
                name = raw.rstrip("/").rsplit("/", 1)[-1]
            else:
                name = raw  # relative; another URL or a path up or down the tree is not this directory's
            if name in ("", ".", "..") or "/" in name or "://" in raw and not raw.startswith(self.location + "/"):
                if f"{self.location}/{raw}" not in ignored:
                    ignored.append(raw if "://" in raw or raw.startswith("/") else f"{self.location}/{raw}")
                continue
            found.setdefault(name, self._checkpoint(name))
        order = {name: i for i, name in enumerate(found)}
        ordered = sorted(found.values(), key=lambda c: (c.name_step is None, c.name_step or 0, order[c.name]))
        return State(checkpoints=ordered, ignored=ignored)

    def _checkpoint(self, name: str) -> Checkpoint:
        return Checkpoint(name=name, path=f"{self.location}/{name}", name_step=checkpoints.step_from_name(name))

    def has_state_file(self) -> bool:
        return checkpoints.STATE_FILE in self._listing()

    def waiting_for(self) -> str:
        what = "a `checkpoint` state file object (tf.train.Checkpoint, CheckpointManager, tf.compat.v1 Saver)"
        return what + (" or Keras weight files (*.weights.h5, *.keras)" if self.weight_files else "")

    def found(self, families: set[str]) -> list[Checkpoint]:
        found = []
        for name in self._listing():
            if name.startswith("."):
                continue
            if self.weight_files and checkpoints.is_weight_file(name):
                found.append(self._checkpoint(name))
            elif name.endswith(checkpoints.INDEX_SUFFIX):
                prefix = name[: -len(checkpoints.INDEX_SUFFIX)]
                if checkpoints.family(prefix) in families:
                    found.append(self._checkpoint(prefix))
        return sorted(found, key=checkpoints.by_step)

    def _files(self, name: str, listing: dict[str, Obj]) -> list[str] | None:
        """The objects of checkpoint `name` when its index and every shard are there, else None."""
        if checkpoints.is_weight_file(name):
            return [name] if name in listing else None
        index = name + checkpoints.INDEX_SUFFIX
        if index not in listing:
            return None
        shards = [(n, _SHARD.search(n)) for n in listing if n.startswith(name + ".data-")]
        shards = [(n, m) for n, m in shards if m is not None and n == name + m.group(0)]
        if not shards:
            return None
        total = int(shards[0][1].group(2))
        if {int(m.group(1)) for _, m in shards if int(m.group(2)) == total} != set(range(total)):
            return None
        extra = [n for n in (name + ".meta",) if n in listing]
        return sorted(n for n, m in shards if int(m.group(2)) == total) + extra + [index]

    def started(self, ckpt: Checkpoint) -> bool:
        return checkpoints.marker(ckpt.name) in self._listing()

    def complete(self, ckpt: Checkpoint) -> bool:
        names = self._files(ckpt.name, self._listing())
        return (names is not None and self._stable(names)) or ckpt.name in self._staged

    def fingerprint(self, ckpt: Checkpoint) -> str | None:
        marker = checkpoints.marker(ckpt.name)
        obj = self._listing().get(marker)
        if obj is None and (staged := self._staged.get(ckpt.name)) is not None:
            obj = staged.objects.get(marker)  # training deleted it; the staged copy holds it
        return obj.tag[:64] if obj is not None and obj.tag else None

    def files(self, ckpt: Checkpoint) -> tuple[tuple[str, int, int], ...]:
        listing = self._listing()
        return tuple((name, listing[name].size, listing[name].mtime_ns) for name in sorted(listing)
                     if name == ckpt.name or name.startswith(ckpt.name + "."))

    # -- a change -------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return f"listing every {self.poll_interval:g} s" if self._thread is not None else "none"

    def watch(self, on_change: Callable[[], None], on_written: Callable[[Checkpoint], None]) -> None:
        """List the prefix every --poll-interval; a change to the listing (or to what in it is
        stable) calls `on_change`, and each checkpoint newly complete `on_written`."""

        def poll() -> None:
            complete: set[str] = set()
            while not self._stop.wait(self.poll_interval):
                try:
                    if self.refresh():
                        now = {c.name for c in self._markers() if self.complete(c)}
                        for name in sorted(now - complete):
                            on_written(self._checkpoint(name))
                        complete = now
                        on_change()
                    self._stage_wanted()  # after the loop heard of the change: a download takes a while
                except Exception as err:  # noqa: BLE001 - the thread must go on listing
                    self.log.warning("listing the model directory failed; will try again", error=first_line(err))

        self._listing()
        self._thread = threading.Thread(target=poll, name=f"list {self.location}", daemon=True)
        self._thread.start()

    def _markers(self) -> list[Checkpoint]:
        with self._lock:
            names = list(self._current or {})
        return [self._checkpoint(n[: -len(checkpoints.INDEX_SUFFIX)] if n.endswith(checkpoints.INDEX_SUFFIX) else n)
                for n in names if n.endswith(checkpoints.INDEX_SUFFIX) or
                (self.weight_files and checkpoints.is_weight_file(n))]

    def ensure(self) -> bool:
        if self._thread is None:
            self.refresh()
        return bool(self._reachable)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # -- a stable copy: the pins ------------------------------------------------------------------

    def pin(self, ckpt: Checkpoint) -> bool:
        """Stage `ckpt` (a checkpoint new to the backlog) once it is complete: the listing thread
        downloads it, oldest step first, so the loop is not held up by a backlog's downloads (and
        `hold` stages one not staged yet itself). Whether it is staged now."""
        with self._pin_lock:
            self._wanted.add(ckpt.name)
            return self._staged_copy(ckpt) is not None

    def done(self, ckpt: Checkpoint) -> None:
        """Its row is written: its staged copy is removed."""
        with self._pin_lock:
            self._wanted.discard(ckpt.name)
            self._over_budget.discard(ckpt.name)
            staged = self._staged.pop(ckpt.name, None)
        if staged is not None:
            shutil.rmtree(staged.directory, ignore_errors=True)
            self.staging.free(staged.size)

    def pinned(self) -> list[Checkpoint]:
        """The staged copies: this process's and those adopted from an earlier one at start."""
        with self._pin_lock:
            return sorted((self._checkpoint(name) for name in self._staged), key=checkpoints.by_step)

    def hold(self, ckpt: Checkpoint) -> Held:
        """Its staged copy (staged now if it is not yet), open; CheckpointDeferred when the budget
        is spent (it waits) or the download failed (the next look decides: changed, deleted)."""
        with self._pin_lock:
            self._wanted.add(ckpt.name)
            staged = self._staged_copy(ckpt) or self._stage(ckpt)
        try:
            files = {name: open(os.path.join(staged.directory, name), "rb") for name in staged.names}  # noqa: SIM115
        except OSError as err:  # removed under us (a cache cleaner): download it again
            self.done(ckpt)
            raise CheckpointDeferred(f"{ckpt.name}: {err}", RETRY_STAGING) from None
        return Held(path=os.path.join(staged.directory, ckpt.name), files=files)

    def _staged_copy(self, ckpt: Checkpoint) -> Staged | None:
        """The staged copy of `ckpt`, unless its objects were replaced since (training restarted
        from scratch writes the same names): then it is dropped."""
        staged = self._staged.get(ckpt.name)
        if staged is None:
            return None
        with self._lock:
            listing = self._current or {}
        if all(listing.get(name, obj) == obj for name, obj in staged.objects.items()):
            return staged  # the same objects, or deleted by training since: the copy is the pin
        self._staged.pop(ckpt.name)
        shutil.rmtree(staged.directory, ignore_errors=True)
        self.staging.free(staged.size)
        return None

    def _stage(self, ckpt: Checkpoint) -> Staged:
        """Download a complete checkpoint into the staging directory (under _pin_lock)."""
        with self._lock:
            listing = dict(self._current or {})
        names = self._files(ckpt.name, listing)
        if names is None:
            raise CheckpointDeferred(f"{ckpt.name} is not complete", RETRY_STAGING)
        size = sum(listing[n].size for n in names)
        if not self.staging.reserve(size):
            if ckpt.name not in self._over_budget:
                self._over_budget.add(ckpt.name)
                self.log.warning("not staged: the staged copies would pass the budget; it waits for space",
                                 checkpoint=ckpt.name, size=size, staged=self.staging.used,
                                 budget=self.staging.describe())
            raise CheckpointDeferred(f"{ckpt.name} waits for staging space ({self.staging.describe()})",
                                     RETRY_STAGING)
        self._over_budget.discard(ckpt.name)
        os.makedirs(self.stage_dir, exist_ok=True)
        directory = tempfile.mkdtemp(prefix=f"{ckpt.name}.", suffix=f".{os.getpid()}", dir=self.stage_dir)
        try:
            self.fs.get([f"{self._path}/{n}" for n in names], [os.path.join(directory, n) for n in names])
            for name in names:
                if os.path.getsize(os.path.join(directory, name)) != listing[name].size:
                    raise OSError(f"{name} changed while it was downloaded")
            _write_manifest(directory, ckpt.name, {n: listing[n] for n in names})
        except Exception as err:  # noqa: BLE001 - deleted meanwhile, the network: the next look decides
            shutil.rmtree(directory, ignore_errors=True)
            self.staging.free(size)
            self.log.info("could not download the checkpoint; will look again", checkpoint=ckpt.name,
                          error=first_line(err), retry_in=RETRY_STAGING)
            raise CheckpointDeferred(f"{ckpt.name}: {first_line(err)}", RETRY_STAGING) from None
        staged = self._staged[ckpt.name] = Staged(directory, names, size, {n: listing[n] for n in names})
        return staged

    def _adopt_staged(self) -> None:
        """Take over the whole staged copies an earlier process left (renamed to this process, so
        one process adopts each); remove its partial downloads and second copies."""
        adopted = []
        for entry in _left_by_the_dead(self.stage_dir):
            old = os.path.join(self.stage_dir, entry)
            found = _read_manifest(old)
            if found is None or found[0] in self._staged:
                shutil.rmtree(old, ignore_errors=True)
                continue
            name, objects = found
            new = f"{old.rsplit('.', 1)[0]}.{os.getpid()}"
            try:
                os.rename(old, new)
            except OSError:  # another process adopted it first
                continue
            size = sum(o.size for o in objects.values())
            self.staging.take(size)
            self._staged[name] = Staged(new, sorted(objects, key=lambda n: n.endswith(checkpoints.INDEX_SUFFIX)),
                                        size, objects)
            adopted.append(name)
        if adopted:
            self.log.info("staged copies adopted from an earlier process", count=len(adopted),
                          checkpoints=sorted(adopted, key=lambda n: checkpoints.by_step(self._checkpoint(n))),
                          staging=self.stage_dir)

    def _stage_wanted(self) -> None:
        """From the listing thread: stage what is wanted and has just become complete."""
        with self._pin_lock:
            wanted = [self._checkpoint(name) for name in self._wanted if name not in self._staged]
        for ckpt in sorted(wanted, key=checkpoints.by_step):
            if self._stop.is_set():
                return
            with self._pin_lock:
                if ckpt.name not in self._wanted or ckpt.name in self._staged or not self.complete(ckpt):
                    continue
                try:
                    self._stage(ckpt)
                except CheckpointDeferred:
                    continue


@dataclass
class Staged:
    """A checkpoint's staged copy."""

    directory: str
    names: list[str]
    size: int
    #: The objects it was downloaded from (what says whether it is still theirs).
    objects: dict[str, Obj]


def _write_manifest(directory: str, name: str, objects: dict[str, Obj]) -> None:
    """The staged copy is whole: say of which checkpoint and objects (written last, atomically)."""
    temporary = os.path.join(directory, MANIFEST + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"checkpoint": name, "objects": {n: [o.size, o.tag, o.mtime_ns] for n, o in objects.items()}},
                  handle)
    os.replace(temporary, os.path.join(directory, MANIFEST))


def _read_manifest(directory: str) -> tuple[str, dict[str, Obj]] | None:
    """The checkpoint and objects of a whole staged copy; None for a download cut short or damaged."""
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as handle:
            data = json.load(handle)
        objects = {str(n): Obj(size=int(v[0]), tag=str(v[1]), mtime_ns=int(v[2])) for n, v in data["objects"].items()}
        name = str(data["checkpoint"])
        whole = all(os.path.getsize(os.path.join(directory, n)) == o.size for n, o in objects.items())
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return (name, objects) if whole and objects else None


def _left_by_the_dead(directory: str) -> list[str]:
    """The staged copies in `directory` whose process is gone (stopped, or killed before it could
    remove them); those of a live process (another evaluator on this machine) are its own."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for entry in entries:
        pid = entry.rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            found.append(entry)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discover(root: str, depth: int, weight_files: bool) -> list[str]:
    """The runs below a remote `root` (itself included) to `depth` levels: the prefixes holding a
    `checkpoint` object (or weight files). SourceUnavailable when it can't be listed now."""
    root = normalize(root)
    fs = filesystem(root)
    scheme, path = _split(root)
    try:
        fs.invalidate_cache()
        names = fs.find(path, maxdepth=depth + 1, withdirs=False)
    except FileNotFoundError:
        return []
    except Exception as err:  # noqa: BLE001
        raise SourceUnavailable(f"cannot list {root}: {first_line(err)}") from None
    found = set()
    for name in names:
        directory, _, base = name.rpartition("/")
        relative = directory[len(path):].strip("/").split("/") if directory != path else []
        if directory != path and not directory.startswith(path + "/"):
            continue
        if any(part.startswith(OWN_OUTPUTS) or part.startswith(".") for part in relative):
            continue
        if base == checkpoints.STATE_FILE or (weight_files and checkpoints.is_weight_file(base)):
            found.add(f"{scheme}://{directory}")
    return sorted(found)
