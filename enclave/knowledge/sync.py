"""`enclave sync`: keep a collection in step with a folder or an S3-compatible bucket, once or watching for changes.

A Source lists its files with a version tag each (size and mtime of a file, ETag and size of an object) and reads
one. `sync_once` downloads only files whose tag changed since the last run (a JSON state file per collection and
source under <data_dir>/sync), ingests them (the store itself skips content it already holds), and removes the
documents of this source whose file is gone. `watch` runs it again on every change (inotify) or every interval.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from enclave.core.errors import NotFound
from enclave.core.files import atomic_write
from enclave.knowledge.loaders import kind_of
from enclave.knowledge.store import IngestReport, KnowledgeBase, doc_id_of

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (what, done, total), as KnowledgeBase.ingest_paths reports


class SyncError(Exception):
    """The source cannot be listed (a missing folder, an unknown bucket, an unreachable endpoint, no credentials):
    nothing in the collection is touched."""


@dataclass(frozen=True)
class Entry:
    uri: str  # the document's uri in the collection
    tag: str  # changes whenever the file does
    size: int


@dataclass
class Listing:
    entries: list[Entry] = field(default_factory=list)
    # Parts of the source that could not be listed (uri prefix, reason): their documents are kept.
    unreadable: list[tuple[str, str]] = field(default_factory=list)


class Source(Protocol):
    @property
    def prefix(self) -> str:
        """Every uri of this source starts with it, and every document whose uri does is this source's."""
        ...

    @property
    def key(self) -> str:
        """What names this source in its state file (the endpoint too for a bucket)."""
        ...

    def listing(self) -> Listing: ...

    def read(self, entry: Entry, limit: int) -> bytes:
        """The file's bytes, never more than limit + 1 of them (so an oversized file is refused, not held)."""
        ...


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


class FolderSource:
    """A folder and its subfolders (names starting with '.' left out); a file's uri is its absolute path, as
    `enclave ingest` writes it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def prefix(self) -> str:
        return str(self.root).rstrip("/") + "/"

    @property
    def key(self) -> str:
        return f"folder:{self.root}"

    def listing(self) -> Listing:
        if not self.root.is_dir():
            raise SyncError(f"{self.root}: no such folder (is the share mounted?)")
        out = Listing()

        def unreadable(exc: OSError) -> None:
            out.unreadable.append((str(exc.filename).rstrip("/") + "/", f"{exc.filename}: {exc.strerror}"))

        for folder, dirs, files in os.walk(self.root, onerror=unreadable):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:  # gone since the folder was read
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.entries.append(Entry(path, f"{st.st_size}:{st.st_mtime_ns}", st.st_size))
        return out

    def read(self, entry: Entry, limit: int) -> bytes:
        with open(entry.uri, "rb") as f:
            return f.read(limit + 1)


def s3_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client with the standard credentials chain (AWS_ACCESS_KEY_ID…, AWS_PROFILE, the shared files).
    With an endpoint (an S3-compatible store: MinIO, Ceph, …) it addresses buckets by path, as those expect."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    config = Config(
        s3={"addressing_style": "path" if endpoint else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region or None, config=config)


class S3Source:
    """The objects under s3://bucket/prefix (the prefix names a folder: `docs` means `docs/`); an object's uri is
    s3://bucket/key. Listing is paginated (page_size keys a request), so a bucket of any size is listed."""

    def __init__(self, bucket: str, prefix: str, client: Any, endpoint: str = "", page_size: int = 1000) -> None:
        self.bucket = bucket
        self.page_size = page_size
        self.key_prefix = prefix.lstrip("/")
        if self.key_prefix and not self.key_prefix.endswith("/"):
            self.key_prefix += "/"
        self.client = client
        self.endpoint = endpoint or str(getattr(client.meta, "endpoint_url", "") or "")

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None, region: str | None = None) -> S3Source:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise SyncError(f"{url}: no bucket named (s3://bucket/prefix)")
        return cls(bucket, prefix, s3_client(endpoint_url, region))

    @property
    def prefix(self) -> str:
        return f"s3://{self.bucket}/{self.key_prefix}"

    @property
    def key(self) -> str:
        return f"s3:{self.endpoint}:{self.bucket}/{self.key_prefix}"

    def listing(self) -> Listing:
        out = Listing()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key_prefix, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = str(obj["Key"])
                    if key.endswith("/") or _hidden(key[len(self.key_prefix) :]):
                        continue
                    etag = str(obj.get("ETag", "")).strip('"')
                    out.entries.append(Entry(f"s3://{self.bucket}/{key}", f"{etag}:{obj['Size']}", int(obj["Size"])))
        except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentialsError…
            raise SyncError(f"{self.prefix}: cannot list the bucket: {_s3_reason(exc)}") from exc
        return out

    def read(self, entry: Entry, limit: int) -> bytes:
        key = entry.uri.removeprefix(f"s3://{self.bucket}/")
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except Exception as exc:
            raise OSError(_s3_reason(exc)) from exc
        try:
            return bytes(body.read(limit + 1))
        finally:
            body.close()


def _s3_reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return f"{err.get('Code', '')}: {err.get('Message', '')}".strip(": ")
    return f"{type(exc).__name__}: {exc}"


def open_source(text: str, endpoint_url: str | None = None, region: str | None = None) -> Source:
    """`s3://bucket/prefix` or a folder's path."""
    if text.startswith("s3://"):
        return S3Source.from_url(text, endpoint_url, region)
    if "://" in text:
        raise SyncError(f"{text}: not a folder or an s3:// URL")
    return FolderSource(Path(text))


# -- state -----------------------------------------------------------------------------------------
class SyncState:
    """What the last run saw of each file: its tag, and why it was skipped if it was. A file whose tag is the
    same is not downloaded again. Lost or corrupt, it costs one download of each file, nothing more."""

    def __init__(self, path: Path | None, source: Source, collection: str) -> None:
        self.path = path
        self.header = {"source": source.key, "collection": collection}
        self.files: dict[str, list[Any]] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                if {k: data.get(k) for k in self.header} == self.header:
                    self.files = {str(k): list(v) for k, v in data["files"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("sync state %s unreadable (%s): every file is checked again", path, exc)
        self._saved = dict(self.files)

    @staticmethod
    def path_for(state_dir: Path, source: Source, collection: str) -> Path:
        return state_dir / f"{collection}-{hashlib.sha256(source.key.encode()).hexdigest()[:16]}.json"

    def save(self) -> None:
        if self.path is None or self.files == self._saved:
            return
        atomic_write(self.path, json.dumps({**self.header, "files": self.files}, sort_keys=True))
        self._saved = dict(self.files)


# -- one pass ----------------------------------------------------------------------------------------
def sync_once(
    kb: KnowledgeBase,
    source: Source,
    collection: str,
    progress: Progress | None = None,
    state_dir: Path | None = None,
    *,
    stop: threading.Event | None = None,
    allow_empty: bool = False,
) -> IngestReport:
    """One pass: new and changed files ingested, unchanged ones counted without a download, documents of this
    source whose file is gone removed. One bad file is a skip with its reason; a source that cannot be listed is
    a SyncError. An empty listing never empties the collection unless allow_empty (an unmounted share lists
    nothing). With `stop` set the pass ends after the current file, keeping what it did."""
    kb.check_collection(collection)
    listing = source.listing()
    state = SyncState(SyncState.path_for(state_dir, source, collection) if state_dir else None, source, collection)
    docs = kb.list_documents(collection) if collection in kb.collection_names() else []
    gone = _gone(docs, source, listing)
    if gone and not listing.entries and not allow_empty:
        raise SyncError(
            f"{source.prefix} lists no files while '{collection}' holds {len(gone)} of its documents: "
            "not removing them all (is the share mounted, the prefix right?); allow an empty source to do it"
        )
    listed = {e.uri for e in listing.entries}
    state.files = {uri: rec for uri, rec in state.files.items() if uri in listed}
    run = _Pass(kb, source, collection, state, docs, IngestReport(skipped=[r for _, r in listing.unreadable]))
    stopped = False
    total = len(listing.entries)
    try:
        for i, entry in enumerate(listing.entries):
            if stop is not None and stop.is_set():
                stopped = True
                break
            if progress:
                progress(entry.uri, i, total)
            run.file(entry, _stage(progress, entry.uri, i, total))
    finally:
        state.save()
    if progress:
        progress("", total, total)
    if not stopped:
        _remove(kb, collection, gone, docs, run.report)
    return run.report


def _stage(progress: Progress | None, uri: str, done: int, total: int) -> Callable[[str], None] | None:
    """The store's stages of one file ("OCR page 3/12", "embedding 4 chunks") as progress: "<uri>: <stage>"."""
    if progress is None:
        return None
    return lambda text: progress(f"{uri}: {text}", done, total)


class _Pass:
    """One sync pass over the listed files, adding to its report and to the state."""

    def __init__(
        self,
        kb: KnowledgeBase,
        source: Source,
        collection: str,
        state: SyncState,
        docs: list[dict[str, Any]],
        report: IngestReport,
    ) -> None:
        self.kb, self.source, self.collection, self.state, self.report = kb, source, collection, state, report
        # What the collection holds: documents' uris, and the ids of documents holding attachments.
        self.present = {str(d["uri"]) for d in docs if not d["parent"]} | {str(d["parent"]) for d in docs}

    def file(self, entry: Entry, stage: Callable[[str], None] | None) -> None:
        """Skipped by its type, by its recorded tag or by its size; else read and ingested, the outcome recorded."""
        uri, recorded = entry.uri, self.state.files.get(entry.uri)
        if kind_of(uri) is None:
            self.report.skipped.append(f"{uri}: unsupported file type '{Path(uri).suffix or '(none)'}'")
        elif recorded and recorded[0] == entry.tag and recorded[1]:  # this very version could not be read
            self.report.skipped.append(str(recorded[1]))
        elif recorded and recorded[0] == entry.tag and (uri in self.present or doc_id_of(uri) in self.present):
            self.report.unchanged.append(uri)
        elif entry.size > self.kb.limits.max_bytes:
            limit = self.kb.limits.max_bytes
            self.skip(entry, f"{uri}: {entry.size:,} bytes, over the limit of {limit:,} (ingest.max_bytes)", True)
        else:
            self.ingest(entry, stage)

    def skip(self, entry: Entry, reason: str, remember: bool) -> None:
        """A skipped file: remembered with its tag (not read again until it changes), or tried again next time."""
        self.report.skipped.append(reason)
        if remember:
            self.state.files[entry.uri] = [entry.tag, reason]
        else:
            self.state.files.pop(entry.uri, None)

    def ingest(self, entry: Entry, stage: Callable[[str], None] | None) -> None:
        uri = entry.uri
        try:
            data = self.source.read(entry, self.kb.limits.max_bytes)
        except OSError as exc:  # a transient failure, most likely
            self.skip(entry, f"{uri}: could not be read: {exc.strerror or exc}", False)
            return
        one = IngestReport()
        try:
            self.kb.ingest_bytes(uri, data, self.collection, one, stage)
        except Exception as exc:  # the store or the embedder failed on this file: the others still go
            log.warning("sync: %s failed: %s", uri, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            _merge(self.report, one)
            self.skip(entry, f"{uri}: {type(exc).__name__}: {exc}", False)
            return
        _merge(self.report, one)
        own = [s for s in one.skipped if s.startswith(uri + ":")]  # the file's own, not its attachments'
        self.state.files[uri] = [entry.tag, own[0] if own else None]


def _merge(into: IngestReport, one: IngestReport) -> None:
    for name in ("added", "updated", "unchanged", "removed", "skipped"):
        getattr(into, name).extend(getattr(one, name))
    into.chunks += one.chunks


def _gone(docs: list[dict[str, Any]], source: Source, listing: Listing) -> list[dict[str, Any]]:
    """This source's documents whose file is no longer listed (not those under a part that could not be listed)."""
    listed = {e.uri for e in listing.entries}
    kept = tuple(prefix for prefix, _ in listing.unreadable)
    return [
        d
        for d in docs
        if not d["parent"]
        and str(d["uri"]).startswith(source.prefix)
        and str(d["uri"]) not in listed
        and not (kept and str(d["uri"]).startswith(kept))
    ]


def _remove(
    kb: KnowledgeBase, collection: str, gone: list[dict[str, Any]], docs: list[dict[str, Any]], report: IngestReport
) -> None:
    """Documents whose file is gone, and attachments that a re-ingested file no longer holds."""
    rewritten = {doc_id_of(u) for u in report.added + report.updated}
    seen = set(report.added + report.updated + report.unchanged)
    stale = [d for d in docs if d["parent"] in rewritten and str(d["uri"]) not in seen]
    for d in [*gone, *stale]:
        try:
            kb.delete_document(collection, str(d["id"]))
        except NotFound:  # deleted meanwhile by someone else
            continue
        report.removed.append(str(d["uri"]))


# -- watching --------------------------------------------------------------------------------------
def watch(
    source: Source,
    run: Callable[[], object],
    stop: threading.Event,
    interval: float = 60.0,
    poll: bool = False,
    debounce_ms: int = 1600,
    ignore: Sequence[Path] = (),
) -> None:
    """Call `run` now, then on every change until `stop` is set: for a folder, changes seen by inotify (batched
    over debounce_ms) and a full pass every interval besides, in case an event was missed; polling every interval
    for a bucket, with `poll` (a network mount, where inotify sees no remote change) or when inotify is
    unavailable. A failing pass is logged and the next one tried."""

    def attempt() -> None:
        try:
            run()
        except Exception:
            log.exception("sync pass over %s failed; trying again", source.prefix)

    attempt()
    if isinstance(source, FolderSource) and not poll:
        try:
            for _ in _folder_changes(source, stop, interval, debounce_ms, ignore):
                attempt()
            return
        except (OSError, RuntimeError) as exc:  # no inotify here, no watches left (watchfiles' internal error)
            log.warning("cannot watch %s (%s): polling every %.0f s", source.root, exc, interval)
    while not stop.wait(interval):
        attempt()


def _folder_changes(
    source: FolderSource, stop: threading.Event, interval: float, debounce_ms: int, ignore: Sequence[Path]
) -> Iterator[None]:
    """One item per batch of relevant changes in the folder, and one every interval without any."""
    from watchfiles import Change
    from watchfiles import watch as watch_paths

    skip = tuple(str(Path(p).resolve()).rstrip("/") + "/" for p in ignore)

    def relevant(_change: Change, path: str) -> bool:
        relative = os.path.relpath(path, source.root)
        return not _hidden(relative) and not (path + "/").startswith(skip)

    for _changes in watch_paths(
        source.root,
        watch_filter=relevant,
        debounce=debounce_ms,
        stop_event=stop,
        rust_timeout=max(int(interval * 1000), 1),
        yield_on_timeout=True,
        raise_interrupt=False,
        force_polling=False,
    ):
        if stop.is_set():
            return
        yield None
