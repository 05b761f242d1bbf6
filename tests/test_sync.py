"""`enclave sync` against a real folder (inotify and polling) and a real S3 server (moto's, in a subprocess), into a
real Chroma with the real embedder; the command through typer; the chart's sync CronJobs rendered, linted,
validated against the Kubernetes schemas and scanned by checkov."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from typer.testing import CliRunner

from enclave.cli.main import app
from enclave.core.protocols import Principal
from enclave.core.settings import Settings
from enclave.knowledge.store import IngestReport, KnowledgeBase
from enclave.knowledge.sync import Entry, FolderSource, S3Source, SyncError, SyncState, s3_client, sync_once, watch
from tests.conftest import free_port

ANYONE = Principal()
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sync-data")


@pytest.fixture(scope="module")
def kb(data_dir: Path) -> KnowledgeBase:
    return KnowledgeBase.from_settings(Settings(data_dir=str(data_dir)))  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free port, in its own process; the AWS credentials the clients find in the env."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **AWS_ENV},
    )
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in AWS_ENV.items():
            mp.setenv(k, v)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "moto server exited"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/moto-api/", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "moto server not up in 60 s"
            time.sleep(0.2)
        yield url
    proc.terminate()
    proc.wait(10)


def names(uris: list[str]) -> list[str]:
    return sorted(u.rsplit("/", 1)[-1] for u in uris)


def counts(report: IngestReport) -> dict[str, int]:
    return {k: len(getattr(report, k)) for k in ("added", "updated", "unchanged", "removed", "skipped")}


def spy_reads(source: FolderSource | S3Source, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The uris the sync downloads, recorded at the source's read seam (the read itself still happens)."""
    reads: list[str] = []
    real = source.read

    def read(entry: Entry, limit: int) -> bytes:
        reads.append(entry.uri)
        return real(entry, limit)

    monkeypatch.setattr(source, "read", read)
    return reads


def write(path: Path, text: str, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - start


# ------------------------------------------------------------------------------------------------
# A folder


def test_folder_sync_follows_new_changed_and_deleted_files(
    kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    write(docs / "alpha.md", "# Alpha\nAardvarks dig burrows at night.", mtime=1_700_000_000)
    write(docs / "bravo.txt", "Badgers guard the bravo gate.")
    write(docs / "sub" / "charlie.md", "# Charlie\nCheetahs sprint across the plain.")
    write(docs / "notes.xyz", "not a format Enclave reads")
    write(docs / ".hidden.md", "# Hidden\nnever synced")
    write(docs / ".git" / "config.md", "# Not a document either")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    kb.ingest_bytes("/elsewhere/keep.md", b"# Keep\nA document of another source.", "syncfolder")
    state_dir = tmp_path / "state"
    source = FolderSource(docs)
    reads = spy_reads(source, monkeypatch)

    first = sync_once(kb, source, "syncfolder", state_dir=state_dir)
    assert names(first.added) == ["alpha.md", "bravo.txt", "charlie.md"], first
    assert counts(first) == {"added": 3, "updated": 0, "unchanged": 0, "removed": 0, "skipped": 2}
    assert any("notes.xyz: unsupported file type '.xyz'" in s for s in first.skipped)
    assert any("broken.pdf" in s for s in first.skipped)
    assert names(reads) == ["alpha.md", "bravo.txt", "broken.pdf", "charlie.md"]  # never notes.xyz nor hidden ones

    # Nothing changed: nothing is read, not even the broken file (its version is recorded as unreadable).
    reads.clear()
    again = sync_once(kb, source, "syncfolder", state_dir=state_dir)
    assert counts(again) == {"added": 0, "updated": 0, "unchanged": 3, "removed": 0, "skipped": 2} and reads == []
    assert sorted(again.skipped) == sorted(first.skipped) and again.chunks == 0
    [state_file] = state_dir.glob("syncfolder-*.json")
    recorded = json.loads(state_file.read_text())
    assert recorded["source"] == f"folder:{docs}" and len(recorded["files"]) == 4

    # One changed, one deleted, one new, one touched without a change of content.
    write(docs / "alpha.md", "# Alpha\nArmadillos roll into balls when alarmed.", mtime=1_700_000_100)
    (docs / "bravo.txt").unlink()
    write(docs / "sub" / "delta.md", "# Delta\nDolphins sleep with one eye open.")
    os.utime(docs / "sub" / "charlie.md", (1_700_000_500, 1_700_000_500))
    reads.clear()
    third = sync_once(kb, source, "syncfolder", state_dir=state_dir)
    assert names(third.updated) == ["alpha.md"] and names(third.added) == ["delta.md"]
    assert names(third.removed) == ["bravo.txt"] and names(third.unchanged) == ["charlie.md"]
    assert names(reads) == ["alpha.md", "charlie.md", "delta.md"]  # charlie's tag changed: read, not re-embedded
    assert "Armadillos" in kb.search("armadillo alarmed", "syncfolder", ANYONE, 1)[0].text
    uris = {d["uri"] for d in kb.list_documents("syncfolder")}
    assert uris == {
        str(docs / "alpha.md"),
        str(docs / "sub/charlie.md"),
        str(docs / "sub/delta.md"),
        "/elsewhere/keep.md",
    }

    # A document deleted by hand comes back; a lost state file costs one read of each file and no embedding.
    [charlie] = [d for d in kb.list_documents("syncfolder") if d["uri"].endswith("charlie.md")]
    kb.delete_document("syncfolder", str(charlie["id"]))
    state_file.unlink()
    reads.clear()
    fourth = sync_once(kb, source, "syncfolder", state_dir=state_dir)
    assert names(fourth.added) == ["charlie.md"] and names(fourth.unchanged) == ["alpha.md", "delta.md"]
    assert len(reads) == 4 and fourth.chunks == 1


def test_a_source_that_cannot_be_listed_or_lists_nothing_removes_nothing(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = tmp_path / "share"
    write(docs / "one.md", "# One\nOtters hold hands while sleeping.")
    write(docs / "two.md", "# Two\nTigers swim well.")
    source = FolderSource(docs)
    assert len(sync_once(kb, source, "syncempty").added) == 2
    # An unmounted share: its mount point is empty.
    for f in docs.iterdir():
        f.unlink()
    with pytest.raises(SyncError, match="lists no files while 'syncempty' holds 2 of its documents"):
        sync_once(kb, source, "syncempty")
    assert len(kb.list_documents("syncempty")) == 2
    docs.rmdir()
    with pytest.raises(SyncError, match="no such folder"):
        sync_once(kb, source, "syncempty")
    docs.mkdir()
    assert names(sync_once(kb, source, "syncempty", allow_empty=True).removed) == ["one.md", "two.md"]
    assert kb.list_documents("syncempty") == []


def test_one_bad_file_never_stops_the_run(kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = tmp_path / "mixed"
    write(docs / "a.md", "# A\nAnts carry ten times their weight.")
    write(docs / "b.md", "# B\nBees dance to show the way.")
    write(docs / "c.md", "# C\nCrows remember faces.")
    source = FolderSource(docs)
    real = source.read

    def flaky(entry: Entry, limit: int) -> bytes:
        if entry.uri.endswith("b.md"):
            raise OSError(5, "Input/output error")
        return real(entry, limit)

    monkeypatch.setattr(source, "read", flaky)
    report = sync_once(kb, source, "syncbad", state_dir=tmp_path / "state")
    assert names(report.added) == ["a.md", "c.md"]
    assert report.skipped == [f"{docs}/b.md: could not be read: Input/output error"]
    monkeypatch.setattr(source, "read", real)  # a transient failure is tried again next time
    again = sync_once(kb, source, "syncbad", state_dir=tmp_path / "state")
    assert names(again.added) == ["b.md"] and names(again.unchanged) == ["a.md", "c.md"]


def test_a_stopped_pass_keeps_what_it_did_and_the_next_goes_on(kb: KnowledgeBase, tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM in the middle of a pass: the file being ingested is finished, the state saved, nothing
    removed; the next pass reads only the files the stopped one did not get to."""
    docs = tmp_path / "stopped"
    for name in ("a", "b", "c"):
        write(docs / f"{name}.md", f"# {name}\nFacts about {name}-animals.")
    kb.ingest_bytes(f"{docs}/old.md", b"# Old\nA file deleted before the pass.", "syncstop")
    stop = threading.Event()
    source = FolderSource(docs)

    def progress(what: str, done: int, total: int) -> None:
        if done == 1:
            stop.set()  # as the signal handler would, while the second file is under way

    first = sync_once(kb, source, "syncstop", progress, tmp_path / "state", stop=stop)
    assert names(first.added) == ["a.md", "b.md"] and first.removed == []
    again = sync_once(kb, source, "syncstop", state_dir=tmp_path / "state")
    assert names(again.added) == ["c.md"] and names(again.unchanged) == ["a.md", "b.md"]
    assert names(again.removed) == ["old.md"]


def run_watch(**kw: Any) -> tuple[threading.Thread, threading.Event, list[IngestReport]]:
    stop = threading.Event()
    reports: list[IngestReport] = []
    kb, source, collection = kw.pop("kb"), kw.pop("source"), kw.pop("collection")
    thread = threading.Thread(
        target=watch, args=(source, lambda: reports.append(sync_once(kb, source, collection)), stop), kwargs=kw
    )
    thread.start()
    return thread, stop, reports


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_watch_follows_the_folder_until_stopped(kb: KnowledgeBase, tmp_path: Path, mode: str) -> None:
    docs = tmp_path / f"watched-{mode}"
    write(docs / "first.md", "# First\nFerrets sleep eighteen hours a day.")
    collection = f"syncwatch-{mode}"
    # With inotify a full pass comes only every 30 s: what is seen within seconds is inotify's doing.
    how = {"interval": 30.0, "debounce_ms": 300} if mode == "inotify" else {"interval": 0.5, "poll": True}
    thread, stop, reports = run_watch(kb=kb, source=FolderSource(docs), collection=collection, **how)
    try:
        wait_for(lambda: len(reports) >= 1, 30)
        assert names(reports[0].added) == ["first.md"]
        if mode == "inotify":
            time.sleep(0.5)  # the watch starts after the first pass
        write(docs / "second.md", "# Second\nSeals sing underwater.")
        took = wait_for(lambda: any(d["uri"].endswith("second.md") for d in kb.list_documents(collection)), 10)
        print(f"\n{mode}: a new file was in the collection {took:.2f} s after it was written")
        (docs / "first.md").unlink()
        wait_for(lambda: [d["uri"] for d in kb.list_documents(collection)] == [str(docs / "second.md")], 10)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive(), "the watch did not stop"


# ------------------------------------------------------------------------------------------------
# An S3-compatible bucket


def test_s3_sync_follows_the_bucket(kb: KnowledgeBase, s3_url: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    s3.create_bucket(Bucket="handbooks")
    objects = {
        "policies/travel.md": "# Travel\nThe hotel limit in Berlin is 180 euros a night.",
        "policies/wifi.txt": "Guest wifi\nThe guest wifi password rotates every Monday.",
        "policies/it/laptops.md": "# Laptops\nLaptops are replaced every four years.",
        "policies/scan.xyz": "unsupported",
        "policies-old/legacy.md": "# Legacy\nOutside the prefix: s3://handbooks/policies is a folder.",
        "other/elsewhere.md": "# Elsewhere\nNot under the prefix.",
    }
    for key, body in objects.items():
        s3.put_object(Bucket="handbooks", Key=key, Body=body.encode())
    s3.put_object(Bucket="handbooks", Key="policies/empty-folder/", Body=b"")  # a console's folder marker
    client = s3_client(s3_url)
    assert client.meta.config.s3["addressing_style"] == "path"
    calls: dict[str, int] = {"GetObject": 0, "ListObjectsV2": 0}
    for op in calls:
        client.meta.events.register(f"before-call.s3.{op}", lambda op=op, **_: calls.__setitem__(op, calls[op] + 1))
    source = S3Source("handbooks", "policies", client, page_size=2)
    assert source.prefix == "s3://handbooks/policies/"
    state_dir = tmp_path / "state"

    first = sync_once(kb, source, "syncs3", state_dir=state_dir)
    assert names(first.added) == ["laptops.md", "travel.md", "wifi.txt"], first
    assert first.skipped == ["s3://handbooks/policies/scan.xyz: unsupported file type '.xyz'"]
    assert calls == {"GetObject": 3, "ListObjectsV2": 3}  # 5 keys in pages of 2
    assert kb.search("hotel limit Berlin", "syncs3", ANYONE, 1)[0].uri == "s3://handbooks/policies/travel.md"

    calls.update(GetObject=0)
    again = sync_once(kb, source, "syncs3", state_dir=state_dir)
    assert counts(again) == {"added": 0, "updated": 0, "unchanged": 3, "removed": 0, "skipped": 1}
    assert calls["GetObject"] == 0  # unchanged ETags: nothing downloaded

    s3.put_object(Bucket="handbooks", Key="policies/travel.md", Body=b"# Travel\nThe hotel limit is now 200 euros.")
    s3.delete_object(Bucket="handbooks", Key="policies/wifi.txt")
    calls.update(GetObject=0)
    third = sync_once(kb, source, "syncs3", state_dir=state_dir)
    assert names(third.updated) == ["travel.md"] and names(third.removed) == ["wifi.txt"]
    assert names(third.unchanged) == ["laptops.md"] and calls["GetObject"] == 1
    assert {d["uri"] for d in kb.list_documents("syncs3")} == {
        "s3://handbooks/policies/travel.md",
        "s3://handbooks/policies/it/laptops.md",
    }
    assert "200 euros" in kb.search("hotel limit", "syncs3", ANYONE, 1)[0].text

    with pytest.raises(SyncError, match="NoSuchBucket"):
        sync_once(kb, S3Source("no-such-bucket", "", client), "syncs3")
    assert len(kb.list_documents("syncs3")) == 2


# ------------------------------------------------------------------------------------------------
# The command


class Done:
    """A command's exit code and its output with rich's line wrapping undone."""

    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code = exit_code
        self.output = " ".join(output.split())


def invoke(data_dir: Path, *args: str) -> Done:
    done = CliRunner().invoke(app, ["sync", *args], env={"ENCLAVE_DATA_DIR": str(data_dir)})
    return Done(done.exit_code, done.output)


def test_cli_syncs_a_folder_and_a_bucket(kb: KnowledgeBase, data_dir: Path, s3_url: str, tmp_path: Path) -> None:
    docs = tmp_path / "cli-docs"
    write(docs / "menu.md", "# Menu\nOn Friday the cafeteria serves grilled salmon.")
    write(docs / "hours.txt", "The library opens at eight.")
    done = invoke(data_dir, str(docs), "--collection", "synccli")
    assert done.exit_code == 0, done.output
    assert "synccli: 2 added, 0 updated, 0 unchanged, 0 removed, 0 skipped" in done.output
    assert list((data_dir / "sync").glob("synccli-*.json"))
    (docs / "hours.txt").unlink()
    done = invoke(data_dir, str(docs), "--collection", "synccli")
    assert "0 added, 0 updated, 1 unchanged, 1 removed, 0 skipped" in done.output and done.exit_code == 0

    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    s3.create_bucket(Bucket="cli-bucket")
    s3.put_object(Bucket="cli-bucket", Key="kb/parking.md", Body=b"# Parking\nThe garage opens at six.")
    done = invoke(data_dir, "s3://cli-bucket/kb", "--collection", "synccli", "--endpoint-url", s3_url)
    assert done.exit_code == 0 and "synccli: 1 added" in done.output, done.output
    uris = {d["uri"] for d in kb.list_documents("synccli")}
    assert uris == {str(docs / "menu.md"), "s3://cli-bucket/kb/parking.md"}  # each source keeps its own

    only_unsupported = tmp_path / "cli-nothing"
    write(only_unsupported / "a.xyz", "?")
    done = invoke(data_dir, str(only_unsupported), "--collection", "synccli")
    assert done.exit_code == 1 and "a.xyz: unsupported file type" in done.output
    done = invoke(data_dir, "s3://missing-bucket/x", "--collection", "synccli", "--endpoint-url", s3_url)
    assert done.exit_code == 2 and "NoSuchBucket" in done.output
    assert invoke(data_dir, "ftp://host/x", "--collection", "synccli").exit_code == 2
    assert invoke(data_dir, str(docs), "--collection", "bad name").exit_code == 2


def test_cli_watch_stops_on_sigterm(tmp_path: Path) -> None:
    """`enclave sync --watch` as Kubernetes runs it: a process that syncs, sees a change, and exits 0 on SIGTERM.
    (Files it cannot ingest keep the embedder unloaded: the watch itself is what is tested here.)"""
    docs = tmp_path / "proc-docs"
    write(docs / "a.xyz", "?")
    log = tmp_path / "watch.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave.cli.main", "sync", str(docs), "--collection", "syncproc", "--watch"],
        env={**os.environ, "ENCLAVE_DATA_DIR": str(tmp_path / "proc-data"), "COLUMNS": "200"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    output = lambda: " ".join(log.read_text().split())  # noqa: E731
    try:
        wait_for(lambda: "syncproc: 0 added, 0 updated, 0 unchanged, 0 removed, 1 skipped" in output(), 60)
        time.sleep(0.5)
        write(docs / "b.xyz", "?")
        wait_for(lambda: "2 skipped" in output() and "b.xyz: unsupported file type" in output(), 15)
        proc.terminate()
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert output().startswith(f"watching: {docs}/ into 'syncproc'") and output().endswith("stopped")


def test_state_is_kept_per_collection_and_source(tmp_path: Path) -> None:
    a, b = FolderSource(tmp_path / "a"), FolderSource(tmp_path / "b")
    paths = {SyncState.path_for(tmp_path, s, c) for s in (a, b) for c in ("x1", "x2")}
    assert len(paths) == 4
    # A corrupt state file is ignored, not fatal.
    path = SyncState.path_for(tmp_path, a, "x1")
    path.write_text("{not json")
    assert SyncState(path, a, "x1").files == {}


# ------------------------------------------------------------------------------------------------
# The chart: sync CronJobs rendered with Helm's library, linted, validated and scanned like the other profiles

SYNC_VALUES: dict[str, Any] = {
    "enabled": True,
    "sources": [
        {"source": "s3://handbooks/policies", "collection": "docs"},
        {"source": "/mnt/share/docs", "collection": "shared", "schedule": "0 * * * *"},
    ],
    "endpointUrl": "http://minio.storage.svc:9000",
    "region": "eu-central-1",
    "credentialsSecret": "s3-credentials",
    "egress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 9000}]}],
    "volumes": [{"name": "share", "nfs": {"server": "nfs.internal", "path": "/exports/docs", "readOnly": True}}],
    "volumeMounts": [{"name": "share", "mountPath": "/mnt/share", "readOnly": True}],
}
SYNC_BAD_VALUES: dict[str, dict[str, Any]] = {
    "sync-relative-folder": {"sync": {"enabled": True, "sources": [{"source": "docs/", "collection": "docs"}]}},
    "sync-bad-collection": {"sync": {"sources": [{"source": "s3://bucket1/p", "collection": "no spaces"}]}},
    "sync-typo-in-a-source": {"sync": {"sources": [{"source": "s3://bucket1/p", "colection": "docs"}]}},
    "sync-bad-schedule": {"sync": {"schedule": "every hour"}},
}


@pytest.fixture(scope="module")
def chart_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tests/test_deploy.py's tool run (render, strict lint on both Kubernetes versions, schema validation) over
    the default and the HA profile with sync enabled, then checkov over the manifests."""
    from tests import test_deploy as deploy

    failing = {
        "without-sources": ("sync", {"sync": {"sources": []}}, "at least one entry in sync.sources"),
        "into-an-emptydir": ("sync", {"chroma": {"enabled": False}, "persistence": {"enabled": False}}, "emptyDir"),
    }
    work = tmp_path_factory.mktemp("sync-chart")
    return deploy.feature_chart_report(work, "sync", SYNC_VALUES, SYNC_VALUES, failing, SYNC_BAD_VALUES)


def cronjob_pod(cronjob: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("profile", ["sync", "sync-ha"])
def test_chart_renders_a_sync_cronjob_per_source(chart_report: dict[str, Any], profile: str) -> None:
    from tests.test_deploy import RELEASE, docs_of, env_of, find, one, pod_spec

    entry = chart_report["profiles"][profile]
    docs = docs_of(chart_report, profile)
    for lint in entry["lint"]:
        assert lint["errors"] == [] and [m for m in lint["messages"] if m["severity"] >= 2] == [], lint
    assert entry["validation_errors"] == [] and entry["validated"] == 2 * len(docs)
    api = pod_spec(one(docs, "Deployment", f"{RELEASE}-api"))
    api_volumes = {v["name"]: v for v in api["volumes"]}
    s3_job, folder_job = one(docs, "CronJob", f"{RELEASE}-sync-0"), one(docs, "CronJob", f"{RELEASE}-sync-1")
    assert len(find(docs, "CronJob")) == 2
    assert (s3_job["spec"]["schedule"], folder_job["spec"]["schedule"]) == ("*/15 * * * *", "0 * * * *")
    s3_main, folder_main = cronjob_pod(s3_job)["containers"][0], cronjob_pod(folder_job)["containers"][0]
    assert s3_main["command"] + s3_main["args"] == [
        *("enclave", "sync", "s3://handbooks/policies", "--collection", "docs"),
        *("--endpoint-url", "http://minio.storage.svc:9000", "--region", "eu-central-1"),
    ]
    assert folder_main["args"] == ["sync", "/mnt/share/docs", "--collection", "shared"]
    for job in (s3_job, folder_job):
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        pod = cronjob_pod(job)
        main = pod["containers"][0]
        # The API's image, settings file and /data; restricted and offline like every other pod.
        assert main["image"] == api["containers"][0]["image"]
        assert env_of(main)["ENCLAVE_CONFIG"] == env_of(api["containers"][0])["ENCLAVE_CONFIG"]
        assert env_of(main)["HF_HUB_OFFLINE"] == "1" and env_of(main)["ANONYMIZED_TELEMETRY"] == "False"
        assert main["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["config"] == api_volumes["config"] and volumes["data"] == api_volumes["data"]
        assert volumes["share"]["nfs"]["server"] == "nfs.internal"
        mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
        assert mounts["/data"]["name"] == "data" and mounts["/mnt/share"]["readOnly"] is True
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
        assert pod["securityContext"] == api["securityContext"] and pod["automountServiceAccountToken"] is False
        assert main["securityContext"] == api["containers"][0]["securityContext"]
        assert main["resources"]["limits"]["memory"] and pod["restartPolicy"] == "Never"
        affinity = pod.get("affinity", {}).get("podAffinity")
        if profile == "sync":  # the ReadWriteOnce claim: on the API pod's node
            assert "persistentVolumeClaim" in volumes["data"]
            [term] = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
            assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
        else:
            assert "emptyDir" in volumes["data"] and affinity is None
    # Networking: nothing reaches the sync pods; they reach Chroma and the S3 endpoint the values name.
    labels = s3_job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    deny = one(docs, "NetworkPolicy", f"{RELEASE}-default-deny")
    assert deny["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    own = one(docs, "NetworkPolicy", f"{RELEASE}-sync")
    assert own["spec"]["podSelector"]["matchLabels"].items() <= labels.items() and own["spec"]["ingress"] == []
    to_chroma, to_s3 = own["spec"]["egress"]
    assert to_chroma["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "chroma"
    assert to_s3 == SYNC_VALUES["egress"][0]
    chroma_in = one(docs, "NetworkPolicy", f"{RELEASE}-chroma-from-sync")["spec"]
    assert chroma_in["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "sync"


def test_chart_refuses_bad_sync_values(chart_report: dict[str, Any]) -> None:
    for name, message in chart_report["failing_expected"].items():
        assert chart_report["failing"][name] and message in chart_report["failing"][name], name
    for name, result in chart_report["bad_values"].items():
        assert result["schema"] and result["render"], (name, result)


def test_checkov_passes_the_sync_cronjobs(chart_report: dict[str, Any]) -> None:
    from tests.test_deploy import NAMESPACE, RELEASE

    checkov = chart_report["checkov"]
    failed = [(c["check_id"], c["resource"]) for c in checkov["results"]["failed_checks"]]
    assert failed == [] and checkov["summary"]["parsing_errors"] == 0, failed
    scanned = {(Path(c["file_path"]).stem, c["resource"]) for c in checkov["results"]["passed_checks"]}
    for profile in ("sync", "sync-ha"):
        for i in (0, 1):
            assert (profile, f"CronJob.{NAMESPACE}.{RELEASE}-sync-{i}") in scanned
