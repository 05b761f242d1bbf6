// Enclave's documents panel: drop files or a folder into a collection, watch each file ingest, list and delete.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const els = {
    toggle: $("#docs-toggle"), panel: $("#docs-panel"), close: $("#docs-close"), select: $("#docs-collection"),
    newName: $("#docs-new-name"), nameHelp: $("#docs-name-help"), notice: $("#docs-notice"), drop: $("#docs-drop"),
    pickFiles: $("#docs-pick-files"), pickFolder: $("#docs-pick-folder"), files: $("#docs-files"),
    folder: $("#docs-folder"), live: $("#docs-live"), batches: $("#docs-batches"), listName: $("#docs-list-name"),
    count: $("#docs-count"), refresh: $("#docs-refresh"), filter: $("#docs-filter"), list: $("#docs-list"),
    empty: $("#docs-empty"), chatCollection: $("#collection-select"), apiKey: $("#api-key"),
  };
  const COLLECTION_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{2,62}$/; // Chroma wants 3 characters at least
  const NEW = "__new__"; // no collection can be named so: names start with a letter or digit
  const POLL_MS = 500;
  const GROUP_FILES = 200; // files per upload request (one ingest job each)
  const GROUP_BYTES = 100 * 1024 * 1024;
  const FINISHED = ["done", "unchanged", "error"];

  let admin = null; // null: not known yet; false: the key may read but not change the knowledge base
  let collections = [];
  let docs = [];
  const watched = new Set(); // ingest jobs this page follows

  // ---- small helpers
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function button(cls, text, label) {
    const b = el("button", cls, text);
    b.type = "button";
    if (label) b.setAttribute("aria-label", label);
    return b;
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }
  function announce(text) { els.live.textContent = text; }

  // ---- HTTP: every answer as {ok, status, body, message}, the message one a person can act on
  function authHeaders() {
    const key = localStorage.getItem("enclave.apiKey") || "";
    return key ? { Authorization: "Bearer " + key } : {};
  }
  function messageOf(status, body) {
    const said = body && body.error && body.error.message;
    if (status === 401) return "This server needs an API key: enter yours under Settings (bottom left).";
    if (status === 403) {
      return "Read-only key: your API key may read these documents but not add or delete them. " +
        "Uploading and deleting need an admin key.";
    }
    if (status === 413) return "Too large for one upload" + (said ? ` (${said})` : "") + ".";
    if (status === 503) return "The knowledge base is not ready yet: try again in a moment.";
    if (status === 0) return "The server cannot be reached.";
    return said || `the server answered HTTP ${status}`;
  }
  async function request(method, path) {
    let res;
    try { res = await fetch(path, { method, headers: authHeaders() }); } catch (e) {
      return { ok: false, status: 0, body: null, message: messageOf(0, null) };
    }
    const body = res.status === 204 ? null : await res.json().catch(() => null);
    return { ok: res.ok, status: res.status, body, message: res.ok ? "" : messageOf(res.status, body) };
  }
  function upload(collection, group, onProgress) {
    return new Promise((resolve) => {
      const fd = new FormData();
      fd.append("collection", collection);
      group.forEach((row) => fd.append("files", row.file, row.name));
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/ingest");
      Object.entries(authHeaders()).forEach(([k, v]) => xhr.setRequestHeader(k, v));
      xhr.upload.onprogress = (e) => { if (e.lengthComputable && e.total) onProgress(e.loaded / e.total); };
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON: the status says it */ }
        const ok = xhr.status >= 200 && xhr.status < 300;
        resolve({ ok, status: xhr.status, body, message: ok ? "" : messageOf(xhr.status, body) });
      };
      xhr.onerror = () => resolve({ ok: false, status: 0, body: null, message: "The upload broke off: the server cannot be reached." });
      xhr.send(fd);
    });
  }

  // ---- the notice: who may do what, and what went wrong outside any one file
  function setNotice(text, kind) {
    els.notice.hidden = !text;
    els.notice.textContent = text || "";
    els.notice.dataset.kind = kind || "error";
  }
  function setAdmin(value) {
    admin = value;
    els.panel.classList.toggle("read-only", value === false);
    [els.pickFiles, els.pickFolder].forEach((b) => { b.disabled = value === false; });
    els.drop.setAttribute("aria-disabled", String(value === false));
  }
  function onRefused(r) {
    if (r.status === 403) { setAdmin(false); setNotice(r.message, "auth"); }
    else if (r.status === 401) setNotice(r.message, "auth");
    else setNotice(r.message, "error");
  }

  // ---- collections
  function chosenCollection() {
    if (els.select.value !== NEW) return els.select.value;
    const name = els.newName.value.trim();
    const bad = !COLLECTION_RE.test(name);
    els.newName.classList.toggle("invalid", bad);
    els.newName.setAttribute("aria-invalid", String(bad));
    els.nameHelp.classList.toggle("invalid", bad);
    if (bad) { els.nameHelp.hidden = false; els.newName.focus(); return null; }
    return name;
  }
  function fillSelect(want) {
    const current = els.select.value;
    els.select.replaceChildren();
    collections.forEach((c) => els.select.add(new Option(`${c.name} — ${plural(c.documents, "document")}`, c.name)));
    els.select.add(new Option("+ New collection…", NEW));
    if (!want && current === NEW) { els.select.value = NEW; showNameField(); return; } // a name being typed stays
    const chat = els.chatCollection && els.chatCollection.value;
    const pick = [want, chat, "docs"].find((n) => n && collections.some((c) => c.name === n));
    els.select.value = pick || (collections.length ? collections[0].name : NEW);
    if (!pick && !collections.length && !els.newName.value) els.newName.value = "docs";
    showNameField();
  }
  function showNameField() {
    const isNew = els.select.value === NEW;
    els.newName.hidden = !isNew;
    els.nameHelp.hidden = !isNew;
  }
  function syncChatPicker() {
    // The chat's own collection choice: keep it, and offer the collections made here.
    const chat = els.chatCollection;
    if (!chat) return;
    const keep = chat.value;
    [...chat.options].slice(1).forEach((o) => o.remove());
    collections.forEach((c) => chat.add(new Option(`${c.name} (${c.documents})`, c.name)));
    chat.value = collections.some((c) => c.name === keep) ? keep : "";
  }
  async function loadCollections(want) {
    const r = await request("GET", "/v1/collections");
    if (!r.ok) { onRefused(r); return; }
    collections = r.body.data || [];
    fillSelect(want || (els.select.value !== NEW ? els.select.value : ""));
    syncChatPicker();
    await loadDocs();
  }

  // ---- the documents of the chosen collection
  function shownName(uri) {
    const s = String(uri || "");
    return s.includes("#") ? s.slice(s.indexOf("#") + 1) : s.replace(/^upload\//, "");
  }
  function relative(t) {
    const s = Date.now() / 1000 - t;
    if (s < 45) return "just now";
    if (s < 3600) return plural(Math.max(1, Math.round(s / 60)), "min") + " ago";
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    if (s < 7 * 86400) return plural(Math.round(s / 86400), "day") + " ago";
    return new Date(t * 1000).toLocaleDateString();
  }
  function timeOf(t) {
    if (t === null || t === undefined) {
      const unknown = el("span", "doc-time unknown", "time not recorded");
      unknown.title = "Ingested before ingest times were recorded";
      return unknown;
    }
    const when = el("time", "doc-time", relative(t));
    when.dateTime = new Date(t * 1000).toISOString();
    when.dataset.t = String(t);
    when.title = "Ingested " + new Date(t * 1000).toLocaleString();
    return when;
  }
  function kindTag(kind) {
    const k = String(kind || "file");
    const tag = el("span", "kind kind-" + k.replace(/[^a-z0-9]/gi, ""), k === "markdown" ? "MD" : k.slice(0, 5).toUpperCase());
    tag.title = k;
    return tag;
  }
  function docItem(d, attachments) {
    const li = el("li", "doc" + (d.parent ? " attachment" : ""));
    li.dataset.id = d.id;
    li.dataset.uri = d.uri;
    const row = el("div", "doc-row");
    const info = el("div", "doc-info");
    const title = el("div", "doc-title", d.title || shownName(d.uri));
    title.title = d.title || "";
    const meta = el("div", "doc-meta");
    meta.append(el("span", "doc-file", shownName(d.uri)), el("span", "doc-chunks", plural(d.chunks, "chunk")), timeOf(d.ingested_at));
    info.append(title, meta);
    const del = button("doc-delete", "Delete", `Delete ${d.title || shownName(d.uri)}`);
    del.onclick = () => confirmDelete(li, d, attachments.length, del);
    row.append(kindTag(d.kind), info, del);
    li.appendChild(row);
    if (attachments.length) {
      const ul = el("ul", "attachments");
      ul.setAttribute("aria-label", `Attachments of ${d.title}`);
      attachments.forEach((a) => ul.appendChild(docItem(a, [])));
      li.appendChild(ul);
    }
    return li;
  }
  function renderDocs() {
    const q = els.filter.value.trim().toLowerCase();
    const byId = new Map(docs.map((d) => [d.id, d]));
    const children = new Map();
    const top = [];
    docs.forEach((d) => {
      if (d.parent && byId.has(d.parent)) {
        if (!children.has(d.parent)) children.set(d.parent, []);
        children.get(d.parent).push(d);
      } else top.push(d); // a mail without text of its own: its attachments stand alone
    });
    const newest = (a, b) => (b.ingested_at || 0) - (a.ingested_at || 0) || String(a.title).localeCompare(String(b.title));
    const matches = (d) => !q || `${d.title} ${d.uri}`.toLowerCase().includes(q);
    const shown = top.sort(newest).filter((d) => matches(d) || (children.get(d.id) || []).some(matches));
    els.list.replaceChildren(...shown.map((d) => docItem(d, (children.get(d.id) || []).sort(newest))));
    const chunks = docs.reduce((n, d) => n + (d.chunks || 0), 0);
    els.count.textContent = docs.length ? `${plural(docs.length, "document")} · ${plural(chunks, "chunk")}` : "";
    els.empty.hidden = shown.length > 0;
    els.empty.textContent = docs.length ? "No document matches the filter." :
      els.select.value === NEW ? "A new collection: it is made with its first upload." : "No documents yet: drop some above.";
  }
  async function loadDocs() {
    const name = els.select.value === NEW ? els.newName.value.trim() : els.select.value;
    els.listName.textContent = name || "a new collection";
    if (els.select.value === NEW || !name) { docs = []; renderDocs(); return; }
    const r = await request("GET", `/v1/collections/${encodeURIComponent(name)}/documents`);
    if (name !== els.select.value) return; // the choice changed meanwhile
    if (!r.ok) { docs = []; renderDocs(); if (r.status !== 404) onRefused(r); return; }
    docs = r.body.data || [];
    renderDocs();
  }
  let reloadTimer = null;
  function reloadSoon(collection) {
    if (collection !== els.select.value) return;
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(loadDocs, 300);
  }

  function confirmDelete(li, d, attachments, del) {
    if (li.querySelector(":scope > .confirm")) return;
    const box = el("div", "confirm");
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Confirm delete");
    const what = `Delete “${d.title || shownName(d.uri)}”` + (attachments ? ` and its ${plural(attachments, "attachment")}` : "");
    const text = el("span", "confirm-text", what + "? Answers will no longer use it.");
    const yes = button("confirm-yes", "Delete");
    const no = button("confirm-no", "Cancel");
    const close = () => { box.remove(); li.classList.remove("confirming"); del.focus(); };
    no.onclick = close;
    box.addEventListener("keydown", (e) => { if (e.key === "Escape") { e.stopPropagation(); close(); } });
    yes.onclick = async () => {
      yes.disabled = no.disabled = true;
      yes.textContent = "Deleting…";
      const collection = els.select.value;
      const r = await request("DELETE", `/v1/collections/${encodeURIComponent(collection)}/documents/${encodeURIComponent(d.id)}`);
      if (r.ok || r.status === 404) {
        announce(`Deleted ${d.title}`);
        await loadCollections(collection);
        els.list.focus();
        return;
      }
      onRefused(r);
      text.textContent = "Not deleted: " + r.message;
      yes.textContent = "Delete";
      yes.disabled = no.disabled = false;
    };
    box.append(text, yes, no);
    li.classList.add("confirming");
    li.querySelector(":scope > .doc-row").after(box);
    no.focus();
  }

  // ---- a batch: the files of one drop or pick, for one collection, sent as one or more ingest jobs
  function fraction(row) {
    if (row.state === "waiting") return 0;
    if (row.state === "uploading") return 0.15 * row.upload;
    if (row.state === "queued") return 0.15;
    if (row.state !== "reading") return 1;
    // The reader's stages in order: "reading page 2/9", "OCR page 3/12", "embedding 40 chunks".
    const stage = row.stage || "";
    const pages = /(\d+)\s*\/\s*(\d+)/.exec(stage);
    const part = pages && Number(pages[2]) > 0 ? Math.min(Number(pages[1]) / Number(pages[2]), 1) : 0;
    if (/^embedding/i.test(stage)) return 0.85;
    if (/^OCR/i.test(stage)) return 0.35 + 0.45 * part;
    return 0.2 + 0.15 * part;
  }
  function statusOf(row) {
    switch (row.state) {
      case "waiting": return "waiting to upload";
      case "uploading": return row.upload < 1 ? `uploading ${Math.round(row.upload * 100)}%` : "sent · waiting for the server";
      case "queued": return "queued";
      case "reading": return row.stage || "reading";
      case "done": return `done · ${plural(row.chunks, "chunk")}` + (row.documents > 1 ? ` · ${plural(row.documents - 1, "attachment")}` : "")
        + (row.ocr_pages ? ` · ${plural(row.ocr_pages, "page")} read by OCR` : "");
      case "unchanged": return "unchanged · already in the collection";
      default: return "failed";
    }
  }
  const ICONS = { waiting: "•", uploading: "↑", queued: "…", reading: "◌", done: "✓", unchanged: "=", error: "✕" };

  function rowElement(row) {
    const li = el("li", "ingest-file");
    const slash = row.name.lastIndexOf("/");
    li.dataset.name = row.name;
    const line = el("div", "file-line");
    const icon = el("span", "file-icon");
    icon.setAttribute("aria-hidden", "true");
    const name = el("span", "file-name", slash >= 0 ? row.name.slice(slash + 1) : row.name);
    name.title = row.name;
    const folder = el("span", "file-folder", slash >= 0 ? row.name.slice(0, slash + 1) : "");
    line.append(icon, name, folder, el("span", "file-size", bytes(row.size)));
    const bar = el("div", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-label", `Progress of ${row.name}`);
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.appendChild(el("div", "fill"));
    li.append(line, bar, el("div", "file-status"), el("div", "file-error"), el("ul", "file-skipped"));
    row.el = li;
    paintRow(row);
    return li;
  }
  function paintRow(row) {
    const li = row.el;
    const pct = Math.round(fraction(row) * 100);
    li.dataset.state = row.state;
    li.querySelector(".file-icon").textContent = ICONS[row.state] || "•";
    li.querySelector(".fill").style.width = pct + "%";
    li.querySelector(".bar").setAttribute("aria-valuenow", String(pct));
    li.querySelector(".file-status").textContent = statusOf(row);
    const err = li.querySelector(".file-error");
    err.textContent = row.error || "";
    err.hidden = !row.error;
    const skipped = li.querySelector(".file-skipped");
    if (skipped.childElementCount !== row.skipped.length) {
      skipped.replaceChildren(...row.skipped.map((s) => el("li", "", "attachment not read: " + shownName(s))));
    }
  }
  function paintBatch(batch) {
    const n = batch.rows.length;
    const count = (s) => batch.rows.filter((r) => r.state === s).length;
    const done = count("done"), same = count("unchanged"), failed = count("error");
    const running = n - done - same - failed;
    const partial = batch.rows.filter((r) => !FINISHED.includes(r.state)).reduce((a, r) => a + fraction(r), 0);
    const bar = batch.el.querySelector(".batch-bar");
    bar.querySelector(".seg-ok").style.width = `${((done + same) / n) * 100}%`;
    bar.querySelector(".seg-err").style.width = `${(failed / n) * 100}%`;
    bar.querySelector(".seg-run").style.width = `${(partial / n) * 100}%`;
    const pct = Math.round(((done + same + failed + partial) / n) * 100);
    bar.setAttribute("aria-valuenow", String(pct));
    const parts = [];
    if (done) parts.push(`${done} done`);
    if (same) parts.push(`${same} unchanged`);
    if (running) parts.push(`${running} to go`);
    batch.el.querySelector(".batch-counts").textContent = parts.join(" · ");
    const errs = batch.el.querySelector(".batch-errors");
    errs.hidden = !failed;
    errs.textContent = `${failed} failed`;
    batch.el.querySelector(".batch-pct").textContent = running ? `${pct}%` : failed ? "finished with errors" : "all done";
    batch.el.dataset.state = running ? "running" : failed ? "errors" : "done";
    batch.el.querySelector(".batch-dismiss").hidden = Boolean(running);
  }
  function batchElement(batch) {
    const card = el("article", "batch");
    card.setAttribute("aria-label", `Upload to ${batch.collection}`);
    const head = el("div", "batch-head");
    const title = el("span", "batch-title", `${plural(batch.rows.length, "file")} → `);
    title.appendChild(el("strong", "", batch.collection));
    const errs = button("batch-errors", "");
    errs.title = "Show only the files that failed";
    errs.setAttribute("aria-pressed", "false");
    errs.onclick = () => {
      const only = card.classList.toggle("only-errors");
      errs.setAttribute("aria-pressed", String(only));
    };
    const dismiss = button("batch-dismiss", "×", "Dismiss this upload");
    dismiss.onclick = () => card.remove();
    head.append(title, el("span", "batch-pct"), dismiss);
    const bar = el("div", "batch-bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-label", `Upload to ${batch.collection}`);
    bar.append(el("div", "seg-ok"), el("div", "seg-err"), el("div", "seg-run"));
    const counts = el("div", "batch-summary");
    counts.append(el("span", "batch-counts"), errs);
    const list = el("ul", "batch-files");
    batch.rows.forEach((r) => list.appendChild(rowElement(r)));
    card.append(head, bar, counts, list);
    batch.el = card;
    els.batches.prepend(card);
    paintBatch(batch);
  }
  function newRow(name, size, file) {
    return { name, size, file, state: "waiting", stage: "", error: "", chunks: 0, documents: 0, ocr_pages: 0, skipped: [], upload: 0, el: null };
  }
  function settle(batch, row, state, error) {
    Object.assign(row, { state, error: error || "", stage: "" });
    paintRow(row);
  }
  function applyJob(batch, rows, job) {
    (job.files || []).forEach((f, i) => {
      const row = rows[i];
      if (!row) return;
      const finishedNow = !FINISHED.includes(row.state) && f.state === "done";
      Object.assign(row, { state: f.state, stage: f.stage || "", error: f.error || "", chunks: f.chunks || 0,
        documents: f.documents || 0, ocr_pages: f.ocr_pages || 0, skipped: f.skipped || [] });
      paintRow(row);
      if (finishedNow) reloadSoon(batch.collection);
    });
    paintBatch(batch);
  }
  async function follow(batch, rows, jobId) {
    watched.add(jobId);
    let wait = POLL_MS, failing = 0;
    for (;;) {
      await sleep(wait);
      const r = await request("GET", `/v1/ingest/${encodeURIComponent(jobId)}`);
      if (r.ok) {
        wait = POLL_MS;
        failing = 0;
        applyJob(batch, rows, r.body);
        if (r.body.state === "done") break;
        continue;
      }
      failing += 1;
      if ([401, 403, 404].includes(r.status) || failing > 600) {
        rows.filter((row) => !FINISHED.includes(row.state)).forEach((row) => settle(batch, row, "error", "progress unknown: " + r.message));
        break;
      }
      wait = Math.min(wait * 2, 5000); // the server restarting: the job waits on its disk, keep asking
    }
    paintBatch(batch);
  }
  async function sendBatch(batch) {
    const groups = [];
    let group = [], size = 0;
    batch.rows.forEach((row) => {
      if (group.length && (group.length >= GROUP_FILES || size + row.size > GROUP_BYTES)) { groups.push(group); group = []; size = 0; }
      group.push(row);
      size += row.size;
    });
    if (group.length) groups.push(group);
    const follows = [];
    for (const rows of groups) {
      rows.forEach((row) => { row.state = "uploading"; paintRow(row); });
      const r = await upload(batch.collection, rows, (p) => {
        rows.forEach((row) => { row.upload = p; paintRow(row); });
        paintBatch(batch);
      });
      if (!r.ok) {
        if (r.status === 401 || r.status === 403) onRefused(r);
        rows.forEach((row) => settle(batch, row, "error", r.message));
        paintBatch(batch);
        continue;
      }
      applyJob(batch, rows, r.body);
      follows.push(follow(batch, rows, r.body.id));
    }
    await Promise.all(follows);
    finishBatch(batch);
  }
  async function finishBatch(batch) {
    paintBatch(batch);
    const failed = batch.rows.filter((r) => r.state === "error").length;
    announce(`Upload to ${batch.collection} finished: ${batch.rows.length - failed} of ${batch.rows.length} files in` +
      (failed ? `, ${failed} failed` : ""));
    await loadCollections(batch.collection === els.select.value || els.select.value === NEW ? batch.collection : "");
  }
  function startBatch(files) {
    if (admin === false) { setNotice(messageOf(403, null), "auth"); return; }
    const collection = chosenCollection();
    if (!collection) return;
    if (!files.length) { setNotice("Nothing to upload: no files found there.", "error"); return; }
    setNotice("");
    const batch = { collection, rows: files.map((f) => newRow(f.path, f.file.size, f.file)), el: null };
    batchElement(batch);
    sendBatch(batch);
  }
  function resumeJob(job) {
    // A job started elsewhere (another tab, before a reload) and not finished: follow it here too.
    if (watched.has(job.id)) return;
    const batch = { collection: job.collection, rows: job.files.map((f) => newRow(f.name, f.size, null)), el: null };
    batchElement(batch);
    applyJob(batch, batch.rows, job);
    follow(batch, batch.rows, job.id).then(() => finishBatch(batch));
  }

  // ---- where files come from: drops (files and whole folders) and the two pickers
  const hidden = (path) => path.split("/").some((part) => part.startsWith("."));
  function fileOf(entry) { return new Promise((resolve) => entry.file(resolve, () => resolve(null))); }
  function entriesOf(reader) { return new Promise((resolve) => reader.readEntries(resolve, () => resolve([]))); }
  async function walk(entry, out) {
    if (entry.isFile) {
      const file = await fileOf(entry);
      if (file) out.push({ file, path: entry.fullPath.replace(/^\/+/, "") || file.name });
      return;
    }
    if (!entry.isDirectory) return;
    const reader = entry.createReader();
    for (let batch = await entriesOf(reader); batch.length; batch = await entriesOf(reader)) {
      for (const child of batch) if (!child.name.startsWith(".")) await walk(child, out);
    }
  }
  async function onDrop(dt) {
    // The entries are taken now: a DataTransfer is emptied once its event is over.
    const items = [...(dt.items || [])].filter((i) => i.kind === "file");
    const entries = items.map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
    const plain = [...dt.files].map((file) => ({ file, path: file.name }));
    if (!entries.length || entries.some((e) => !e)) { startBatch(plain); return; }
    const out = [];
    for (const entry of entries) await walk(entry, out);
    startBatch(out);
  }
  function onPicked(input) {
    const files = [...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
    input.value = "";
    startBatch(files.filter((f) => !f.file.webkitRelativePath || !hidden(f.path)));
  }
  const carriesFiles = (e) => Boolean(e.dataTransfer) && [...e.dataTransfer.types].includes("Files");
  document.addEventListener("dragenter", (e) => {
    if (!carriesFiles(e)) return;
    if (els.panel.hidden) openPanel(false);
    els.panel.classList.add("dragging");
  });
  document.addEventListener("dragover", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault(); // a file dropped beside the panel must not replace the page
    e.dataTransfer.dropEffect = els.panel.contains(e.target) && admin !== false ? "copy" : "none";
  });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) els.panel.classList.remove("dragging"); });
  document.addEventListener("drop", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    els.panel.classList.remove("dragging");
    if (els.panel.contains(e.target)) onDrop(e.dataTransfer);
  });

  // ---- the panel
  async function probe() {
    // GET /v1/ingest is for admins: it says whether this key may upload, and which jobs are still running.
    const r = await request("GET", "/v1/ingest");
    if (r.ok) {
      setAdmin(true);
      if (els.notice.dataset.kind === "auth") setNotice("");
      (r.body.data || []).filter((j) => j.state !== "done").reverse().forEach(resumeJob);
    } else if (r.status === 403 || r.status === 401) onRefused(r);
  }
  function openPanel(focus) {
    els.panel.hidden = false;
    document.body.classList.add("docs-open");
    els.toggle.setAttribute("aria-expanded", "true");
    localStorage.setItem("enclave.docsOpen", "1");
    if (focus) els.close.focus();
    probe();
    loadCollections();
  }
  function closePanel() {
    els.panel.hidden = true;
    document.body.classList.remove("docs-open");
    els.toggle.setAttribute("aria-expanded", "false");
    localStorage.setItem("enclave.docsOpen", "");
    els.toggle.focus();
  }
  els.toggle.addEventListener("click", () => (els.panel.hidden ? openPanel(true) : closePanel()));
  els.close.addEventListener("click", closePanel);
  els.panel.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !e.defaultPrevented && e.target !== els.filter) closePanel();
  });
  els.pickFiles.addEventListener("click", () => els.files.click());
  els.pickFolder.addEventListener("click", () => els.folder.click());
  els.files.addEventListener("change", () => onPicked(els.files));
  els.folder.addEventListener("change", () => onPicked(els.folder));
  els.select.addEventListener("change", () => {
    showNameField();
    if (els.select.value === NEW) els.newName.focus();
    loadDocs();
  });
  els.newName.addEventListener("input", () => {
    els.newName.classList.remove("invalid");
    els.nameHelp.classList.remove("invalid");
    els.listName.textContent = els.newName.value.trim() || "a new collection";
  });
  els.filter.addEventListener("input", renderDocs);
  els.refresh.addEventListener("click", () => loadCollections());
  if (els.apiKey) els.apiKey.addEventListener("change", () => { setAdmin(null); setNotice(""); if (!els.panel.hidden) { probe(); loadCollections(); } });
  setInterval(() => {
    els.list.querySelectorAll("time[data-t]").forEach((t) => { t.textContent = relative(Number(t.dataset.t)); });
  }, 30000);
  els.list.tabIndex = -1;
  if (localStorage.getItem("enclave.docsOpen")) openPanel(false);
})();
