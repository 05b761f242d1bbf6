"""Uploaded files, kept on disk from the moment they are acknowledged until they are ingested, and each one's progress.

An upload is a job: its files are written (fsynced) under `<data_dir>/inbox/<job>/` before the client hears
"accepted", one worker thread ingests them one by one, and a file leaves the inbox only once the store holds it
(or it was refused with a reason). A process that dies mid-job finds the rest there when it starts again.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from enclave.core.errors import NotFound
from enclave.core.files import atomic_path, atomic_write

if TYPE_CHECKING:
    from enclave.knowledge.store import KnowledgeBase

log = logging.getLogger(__name__)
FINISHED = ("done", "unchanged", "error")
KEEP_JOBS = 200  # finished jobs remembered for the page (the store holds the documents themselves)


@dataclass
class FileStatus:
    """One file of a job: queued → reading (stage: "OCR page 3/12", "embedding 40 chunks") → done / unchanged /
    error (with the reason)."""

    name: str
    size: int
    state: str = "queued"
    stage: str = ""
    error: str = ""
    chunks: int = 0
    documents: int = 0  # the file and its attachments
    ocr_pages: int = 0  # pages whose text came from OCR
    skipped: list[str] = field(default_factory=list)  # attachments refused, "name: reason"


@dataclass
class Job:
    id: str
    collection: str
    created: float
    files: list[FileStatus]
    finished: float | None = None

    @property
    def state(self) -> str:
        if self.finished is not None:
            return "done"
        return "running" if any(f.state not in ("queued", *FINISHED) for f in self.files) else "queued"

    def as_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.state == s for f in self.files) for s in ("queued", "done", "unchanged", "error")}
        return {
            "id": self.id,
            "collection": self.collection,
            "state": self.state,
            "created": self.created,
            "finished": self.finished,
            "counts": counts,
            "files": [asdict(f) for f in self.files],
        }


class Inbox:
    """The upload queue: `accept` stores files and returns the job, a worker thread ingests them into `kb`."""

    def __init__(self, root: Path, kb: KnowledgeBase) -> None:
        self.root = root
        self.kb = kb
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()

    # -- accepting ------------------------------------------------------------------------------
    def accept(self, collection: str, files: list[tuple[str, bytes | BinaryIO]]) -> Job:
        """Write every file (bytes, or a file object copied in pieces: an upload is never held in memory whole),
        fsynced, and the job's manifest, then queue it: when this returns, nothing is lost."""
        self.kb.check_collection(collection)
        job = Job(f"ing_{secrets.token_hex(8)}", collection, time.time(), [FileStatus(n, 0) for n, _ in files])
        folder = self.root / job.id
        folder.mkdir(parents=True)
        for i, (_, data) in enumerate(files):
            with atomic_path(folder / f"{i:05d}") as tmp, tmp.open("wb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    shutil.copyfileobj(data, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
                job.files[i].size = out.tell()
        self._save(job)
        with self._lock:
            self.jobs[job.id] = job
            self._forget_old()
        self._queue.put(job.id)
        return job

    def resume(self) -> int:
        """Queue the jobs a stopped process left unfinished; returns how many files wait."""
        waiting = 0
        for manifest in sorted(self.root.glob("ing_*/job.json")):
            try:
                raw = json.loads(manifest.read_text())
                job = Job(raw["id"], raw["collection"], raw["created"], [FileStatus(**f) for f in raw["files"]])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("inbox: unreadable job %s (%s); left in place", manifest.parent, exc)
                continue
            for i, f in enumerate(job.files):
                if f.state not in FINISHED:
                    f.state, f.stage = ("queued", "") if (manifest.parent / f"{i:05d}").exists() else ("error", "")
                    f.error = f.error or ("" if f.state == "queued" else "the stored upload was lost")
                    waiting += f.state == "queued"
            with self._lock:
                self.jobs[job.id] = job
            self._queue.put(job.id)
        return waiting

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"unknown ingest job '{job_id}'")
        return job

    def recent(self, limit: int = 20) -> list[Job]:
        with self._lock:
            return sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)[:limit]

    # -- working --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None:
            self._stop.clear()
            self._worker = threading.Thread(target=self._work, name="enclave-inbox", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to stop after the file it is on; what is left stays in the inbox for the next start."""
        if self._worker is not None:
            self._stop.set()
            self._queue.put(None)
            self._worker.join(timeout)
            self._worker = None

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None and not self._stop.is_set():
            try:
                self._run(self.get(job_id))
            except Exception:  # a job must never take the worker with it
                log.exception("inbox: job %s failed", job_id)

    def _run(self, job: Job) -> None:
        from enclave.knowledge.store import IngestReport

        folder = self.root / job.id
        for i, f in enumerate(job.files):
            if f.state in FINISHED:
                continue
            if self._stop.is_set():
                return
            f.state, f.stage = "reading", "reading"
            report = IngestReport()
            path = folder / f"{i:05d}"

            def tell(stage: str, f: FileStatus = f) -> None:
                f.stage = stage

            try:
                self.kb.ingest_bytes(f"upload/{f.name}", path.read_bytes(), job.collection, report, progress=tell)
            except Exception as exc:  # the store failed (Chroma down): this file errs, the job goes on
                log.exception("inbox: %s", f.name)
                report.skipped.append(f"{f.name}: {type(exc).__name__}: {exc}")
            self._settle(f, report)
            self._save(job)
            path.unlink(missing_ok=True)
        job.finished = time.time()
        shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _settle(f: FileStatus, report: Any) -> None:
        f.chunks = report.chunks
        f.ocr_pages = report.ocr_pages
        f.documents = len(report.added) + len(report.updated)
        own = f"upload/{f.name}"
        mine = [s for s in report.skipped if s.startswith(own + ":") or s.startswith(f.name + ":")]
        f.skipped = [s for s in report.skipped if s not in mine]
        f.stage = ""
        if mine:
            f.state, f.error = "error", mine[0].split(": ", 1)[-1]
        elif f.documents:
            f.state = "done"
        else:
            f.state = "unchanged"

    def _save(self, job: Job) -> None:
        raw = {
            "id": job.id,
            "collection": job.collection,
            "created": job.created,
            "files": [asdict(f) for f in job.files],
        }
        atomic_write(self.root / job.id / "job.json", json.dumps(raw), fsync=True)

    def _forget_old(self) -> None:
        done = sorted((j for j in self.jobs.values() if j.finished), key=lambda j: j.created)
        for j in done[: max(0, len(done) - KEEP_JOBS)]:
            del self.jobs[j.id]
