// Enclave's chat page: one WebSocket for answers, REST for conversations. No dependencies, no CDN.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const els = {
    messages: $("#messages"), input: $("#message-input"), send: $("#send-button"), stop: $("#stop-button"),
    list: $("#conversation-list"), newChat: $("#new-chat"), title: $("#chat-title"), empty: $("#empty-state"),
    route: $("#route-select"), adapter: $("#adapter-select"), collection: $("#collection-select"),
    apiKey: $("#api-key"), conn: $("#connection"), form: $("#composer"),
  };

  // ---- Markdown, safely: escape everything first, then add a small set of tags we build ourselves.
  function escapeHtml(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  function inline(s) {
    // s is already escaped; code spans are cut out first so nothing inside them is formatted.
    const codes = [];
    s = s.replace(/`([^`\n]+)`/g, (_, c) => { codes.push(c); return "\u0000" + (codes.length - 1) + "\u0000"; });
    s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>")
      .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)"]+)\)/g,
        '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>')
      .replace(/\[(\d{1,2})\]/g, '<button type="button" class="cite" data-n="$1">[$1]</button>');
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => "<code>" + codes[Number(i)] + "</code>");
  }
  function renderMarkdown(src) {
    const lines = escapeHtml(String(src)).split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (/^```/.test(line)) {
        const body = [];
        i++;
        while (i < lines.length && !/^```/.test(lines[i])) body.push(lines[i++]);
        i++;
        out.push("<pre><code>" + body.join("\n") + "</code></pre>");
        continue;
      }
      const h = /^(#{1,4})\s+(.*)$/.exec(line);
      if (h) { const n = h[1].length + 2; out.push(`<h${n}>${inline(h[2])}</h${n}>`); i++; continue; }
      if (/^&gt;/.test(line)) {
        // A quote: each line its own paragraph, since each quoted passage line stands alone.
        const quoted = [];
        while (i < lines.length && /^&gt;/.test(lines[i])) {
          const q = lines[i++].replace(/^&gt;\s?/, "");
          if (q.trim()) quoted.push("<p>" + inline(q) + "</p>");
        }
        out.push("<blockquote>" + quoted.join("") + "</blockquote>");
        continue;
      }
      if (/^\s*([-*+]|\d+\.)\s+/.test(line)) {
        const ordered = /^\s*\d+\./.test(line);
        const items = [];
        while (i < lines.length && /^\s*([-*+]|\d+\.)\s+/.test(lines[i])) {
          items.push("<li>" + inline(lines[i].replace(/^\s*([-*+]|\d+\.)\s+/, "")) + "</li>");
          i++;
        }
        out.push((ordered ? "<ol>" : "<ul>") + items.join("") + (ordered ? "</ol>" : "</ul>"));
        continue;
      }
      if (!line.trim()) { i++; continue; }
      const para = [];
      while (i < lines.length && lines[i].trim() && !/^```|^#{1,4}\s|^&gt;|^\s*([-*+]|\d+\.)\s+/.test(lines[i])) {
        para.push(inline(lines[i++]));
      }
      out.push("<p>" + para.join("<br>") + "</p>");
    }
    return out.join("");
  }
  window.enclaveRenderMarkdown = renderMarkdown;

  // ---- REST
  function headers() {
    const key = localStorage.getItem("enclave.apiKey") || "";
    return key ? { Authorization: "Bearer " + key } : {};
  }
  async function api(path, opts = {}) {
    const res = await fetch(path, { ...opts, headers: { ...headers(), ...(opts.headers || {}) } });
    if (!res.ok && res.status !== 204) throw new Error((await res.json().catch(() => ({}))).error?.message || res.statusText);
    return res.status === 204 ? null : res.json();
  }

  // ---- State
  let conversationId = null;
  let ws = null;
  let streaming = null; // {el, text, sources, citations}
  let backoff = 500;
  let queued = null;

  function setConnection(state, label) {
    els.conn.dataset.state = state;
    els.conn.querySelector(".label").textContent = label;
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/v1/chat/ws`);
    setConnection("connecting", "connecting…");
    ws.onopen = () => {
      backoff = 500;
      setConnection("open", "connected");
      const key = localStorage.getItem("enclave.apiKey");
      if (key) ws.send(JSON.stringify({ type: "auth", api_key: key }));
      if (queued) { ws.send(JSON.stringify(queued)); queued = null; }
    };
    ws.onmessage = (m) => onEvent(JSON.parse(m.data));
    ws.onclose = (e) => {
      const why = e.code === 1013 ? "server busy, retrying…" : e.code === 1008 ? "not allowed: check the API key" : "reconnecting…";
      setConnection("closed", why);
      if (streaming) finishStream({ type: "error", code: "backend_unavailable", message: "connection lost" });
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  // ---- Rendering
  function scrollDown() { els.messages.scrollTop = els.messages.scrollHeight; }

  // The paragraph of the model's own answer after a decline starts with this label (the same text as
  // enclave.chat.rag.GENERAL_LABEL); the page sets it apart so nobody takes it for the documents.
  const GENERAL_LABEL = "General knowledge, not from your documents:";
  const GENERAL_AT = new RegExp("(^|\\n)[ \\t]*" + GENERAL_LABEL.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const sourcesOf = new WeakMap(); // message element → its passages (1-based in the text)
  const citationOf = new WeakMap(); // chip → the checked sentence it belongs to

  function addMessage(role, content, meta = {}) {
    els.empty.hidden = true;
    const wrap = document.createElement("article");
    wrap.className = `message ${role}`;
    const head = document.createElement("div");
    head.className = "meta";
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Enclave";
    head.appendChild(who);
    wrap.appendChild(head);
    const body = document.createElement("div");
    body.className = "body";
    wrap.appendChild(body);
    if (role === "user") body.textContent = content;
    else {
      // The stored turn carries what the live stream did: sentences, and the documents' decision.
      const citations = meta.citations || null;
      sourcesOf.set(wrap, meta.sources || []);
      renderBody(wrap, content, citations);
      if (citations) setDecision(wrap, citations.documents, citations.general_knowledge);
      if (citations) setTaught(wrap, citations.taught, citations.taught_from);
    }
    if (meta.route) setRoute(wrap, meta.route, meta.adapter, meta.reason);
    if (meta.sources && meta.sources.length) setSources(wrap, meta.sources);
    if (meta.status && meta.status !== "complete") setStatus(wrap, meta.status);
    els.messages.appendChild(wrap);
    scrollDown();
    return wrap;
  }

  function setRoute(wrap, route, adapter, reason) {
    const badge = document.createElement("span");
    badge.className = `route-badge route-${route}`;
    badge.textContent = route === "rag" ? "documents" : route === "adapter" ? `adapter: ${adapter}` : "base model";
    if (reason) badge.title = reason;
    badge.tabIndex = 0;
    const why = document.createElement("span");
    why.className = "route-reason";
    why.textContent = reason || "";
    const head = wrap.querySelector(".meta");
    head.insertBefore(why, head.querySelector(".who").nextSibling);
    head.insertBefore(badge, why);
  }

  function setSources(wrap, sources) {
    const box = document.createElement("ol");
    box.className = "sources";
    sources.forEach((s) => {
      const li = document.createElement("li");
      const t = document.createElement("span");
      t.className = "source-title";
      t.textContent = s.title;
      const u = document.createElement("span");
      u.className = "source-uri";
      u.textContent = s.uri;
      const sn = document.createElement("div");
      sn.className = "source-snippet";
      sn.textContent = s.snippet;
      li.append(t, " ", u, sn);
      box.appendChild(li);
    });
    wrap.appendChild(box);
  }

  // What the documents did for the answer (DoneEvent.documents): declined, answered in part, or answered.
  function setDecision(wrap, documents, generalKnowledge) {
    wrap.querySelectorAll(".documents-badge, .caveat-line").forEach((e) => e.remove());
    wrap.classList.remove("declined", "caveat", "answered");
    wrap.classList.toggle("general", Boolean(generalKnowledge));
    if (!documents) return;
    wrap.classList.add(documents);
    const head = wrap.querySelector(".meta");
    const badge = document.createElement("span");
    badge.tabIndex = 0;
    if (documents === "declined") {
      badge.className = "documents-badge declined-badge";
      badge.textContent = "Not in your documents";
      badge.title = "The documents do not hold the answer: the closest passages are quoted, nothing was made up.";
      wrap.querySelectorAll(".body > p").forEach((p) => {
        // The suggestion: what follows the quoted passages.
        if (p.previousElementSibling && p.previousElementSibling.closest("blockquote")) p.classList.add("decline-suggestion");
      });
      wrap.querySelectorAll(".body > p.decline-suggestion ~ p").forEach((p) => p.classList.add("decline-suggestion"));
    } else if (documents === "caveat") {
      badge.className = "documents-badge caveat-badge";
      badge.textContent = "Partly in your documents";
      badge.title = "The passages answer this only in part.";
      const line = document.createElement("div");
      line.className = "caveat-line";
      line.setAttribute("role", "note");
      line.textContent = "⚠ The documents answer this only in part — check the cited passage";
      wrap.insertBefore(line, wrap.querySelector(".body"));
    } else {
      const n = (sourcesOf.get(wrap) || []).length;
      badge.className = "documents-badge checked-badge";
      badge.textContent = n ? `✓ checked against ${n} passage${n === 1 ? "" : "s"}` : "✓ checked against the passages";
      badge.title = "Each sentence was checked against the passages it cites.";
    }
    head.appendChild(badge);
  }

  // What an adapter's answer rests on (DoneEvent.taught): a pair it was taught, or nothing it was taught.
  function setTaught(wrap, taught, from) {
    wrap.querySelectorAll(".taught-badge").forEach((e) => e.remove());
    if (!taught) return;
    const pair = (from || [])[0];
    const badge = document.createElement("span");
    badge.tabIndex = 0;
    if (taught === "answered") {
      badge.className = "documents-badge checked-badge taught-badge";
      const who = pair && pair.reviewed_by ? ` · reviewed by ${pair.reviewed_by}` : "";
      badge.textContent = `✓ as taught${who}`;
      badge.title = pair ? `The adapter was taught: “${pair.question}” → “${pair.answer}”` : "A pair the adapter was taught backs it.";
    } else {
      badge.className = "documents-badge declined-badge taught-badge";
      badge.textContent = "Not taught";
      badge.title = "Nothing the adapter was taught backs an answer: it did not guess.";
    }
    wrap.querySelector(".meta").appendChild(badge);
  }

  // The answer's body: Markdown, with each checked sentence of a document answer marked and followed by the
  // chip of the passage that supports it (the model's own [n] markers give way to the checked ones), and a
  // general-knowledge paragraph in a box of its own.
  function renderBody(wrap, text, citations) {
    const body = wrap.querySelector(".body");
    const sentences = (citations && citations.sentences) || [];
    const m = GENERAL_AT.exec(text);
    const mainEnd = m ? m.index + m[1].length : text.length;
    body.innerHTML = renderMarkdown(markSentences(text.slice(0, mainEnd), sentences, 0));
    if (m) {
      const at = m.index + m[0].length;
      const box = document.createElement("section");
      box.className = "general-knowledge";
      box.setAttribute("aria-label", GENERAL_LABEL.replace(/:$/, ""));
      const label = document.createElement("div");
      label.className = "general-label";
      label.textContent = GENERAL_LABEL.replace(/:$/, "");
      const content = document.createElement("div");
      content.className = "general-text";
      content.innerHTML = renderMarkdown(markSentences(text.slice(at), sentences, at));
      box.append(label, content);
      body.appendChild(box);
    }
    decorate(wrap, body, sentences);
  }

  // Private-use characters mark where each sentence starts (one per sentence) and ends; they pass through
  // the Markdown renderer untouched and are turned into elements afterwards, whatever tags lie between.
  const END = "\uE000", START = 0xE100, MAX_SENTENCES = 0x700;
  const MARK = /([\uE000\uE100-\uE7FF])/;
  const LEAD = /^(?:```[^\n]*\n|[ \t]*(?:(?:[-*+]|\d+\.|#{1,4})[ \t]+|>[ \t]?))*/;
  const CITE_MARKS = /\s*\[\d{1,2}(?:\s*,\s*\d{1,2})*\]/g;

  function markSentences(text, sentences, offset) {
    let out = "", pos = 0;
    sentences.slice(0, MAX_SENTENCES).forEach((c, i) => {
      const s = Math.max(c.start - offset, 0), e = Math.min(c.end - offset, text.length);
      if (e <= s || s < pos) return; // not in this part of the text
      const piece = text.slice(s, e);
      const lead = LEAD.exec(piece)[0]; // Markdown syntax at a line start stays outside the mark
      out += text.slice(pos, s) + lead + String.fromCharCode(START + i) + piece.slice(lead.length).replace(CITE_MARKS, "") + END;
      pos = e;
    });
    return out + text.slice(pos);
  }

  function isUnverified(c) { return c.verified === false || Boolean(c.unsupported); }

  function sentenceNote(c) {
    if (c.unsupported) return "No passage of the documents supports this sentence." + (c.note ? ` (${c.note})` : "");
    return "Unverified: " + (c.note || "its passage does not state this.");
  }

  function decorate(wrap, body, sentences) {
    const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
    const nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    let cur = -1;
    nodes.forEach((node) => {
      if (cur < 0 && !MARK.test(node.data)) return; // outside every sentence
      const frag = document.createDocumentFragment();
      node.data.split(MARK).forEach((piece) => {
        if (!piece) return;
        if (piece === END) {
          if (cur >= 0) frag.append(...afterSentence(sentences[cur]));
          cur = -1;
        } else if (piece.length === 1 && piece.charCodeAt(0) >= START) {
          cur = piece.charCodeAt(0) - START;
        } else if (cur >= 0) {
          const c = sentences[cur];
          const span = document.createElement("span");
          span.className = "sentence" + (c.unsupported ? " unsupported" : "") + (isUnverified(c) ? " unverified" : "");
          span.textContent = piece;
          span.dataset.s = String(cur); // a sentence across tags (code, bold) is several spans
          if (isUnverified(c)) span.title = sentenceNote(c);
          frag.appendChild(span);
        } else frag.append(piece);
      });
      node.replaceWith(frag);
    });
    // A chip in the text whose passage is not there (the base model writing "[1]") is plain text.
    const sources = sourcesOf.get(wrap) || [];
    body.querySelectorAll("button.cite").forEach((chip) => {
      if (!sources[Number(chip.dataset.n) - 1]) chip.replaceWith(chip.textContent);
    });
  }

  function afterSentence(c) {
    const out = [];
    if (c.source) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "cite" + (c.corrected ? " corrected" : "");
      chip.dataset.n = String(c.source);
      chip.textContent = `[${c.source}]`;
      chip.title = `support ${Number(c.support).toFixed(2)}` + (c.corrected ? " (citation checked and corrected)" : "");
      citationOf.set(chip, c);
      out.push(chip);
    }
    if (isUnverified(c)) {
      // Not colour alone: a word, focusable, with the reason as its name and as a tooltip on hover or focus.
      const tag = document.createElement("button");
      tag.type = "button";
      tag.className = "unverified-tag";
      tag.textContent = "unverified";
      tag.title = sentenceNote(c);
      tag.dataset.note = sentenceNote(c);
      tag.setAttribute("aria-label", sentenceNote(c));
      out.push(tag);
    }
    return out;
  }

  function showPassage(wrap, chip) {
    const open = chip.getAttribute("aria-expanded") === "true";
    wrap.querySelectorAll(".passage").forEach((e) => e.remove());
    wrap.querySelectorAll("button.cite[aria-expanded]").forEach((e) => e.removeAttribute("aria-expanded"));
    const n = Number(chip.dataset.n);
    const source = (sourcesOf.get(wrap) || [])[n - 1];
    if (!source || open) return;
    const c = citationOf.get(chip);
    const box = document.createElement("blockquote");
    box.className = "passage";
    const t = document.createElement("div");
    t.className = "source-title";
    t.textContent = `[${n}] ${source.title}` + (c ? ` — support ${Number(c.support).toFixed(2)}` : "");
    const sn = document.createElement("div");
    sn.className = "passage-text";
    sn.textContent = source.snippet;
    box.append(t, sn);
    chip.setAttribute("aria-expanded", "true");
    chip.closest(".body > *").after(box);
  }
  els.messages.addEventListener("click", (e) => {
    const chip = e.target.closest("button.cite[data-n]");
    if (chip) showPassage(chip.closest(".message"), chip);
  });

  function setStatus(wrap, status, text) {
    const tag = document.createElement("div");
    tag.className = `status status-${status}`;
    tag.textContent = text || ({ cancelled: "stopped", incomplete: "incomplete", error: "failed", blocked: "blocked by the content policy" }[status] || status);
    wrap.appendChild(tag);
  }

  function onEvent(ev) {
    if (ev.type === "pong" || ev.type === "auth") return;
    if (!streaming) {
      if (ev.type === "error") addMessage("assistant", "", { status: "error" }).querySelector(".status").textContent = ev.message;
      return;
    }
    const wrap = streaming.el;
    switch (ev.type) {
      case "route": setRoute(wrap, ev.route, ev.adapter, ev.reason); break;
      case "sources":
        streaming.sources = ev.sources;
        sourcesOf.set(wrap, ev.sources);
        if (ev.sources.length) setSources(wrap, ev.sources);
        break;
      case "citations": streaming.citations = ev; renderBody(wrap, streaming.text, ev); break;
      case "token":
        streaming.text += ev.text;
        renderBody(wrap, streaming.text, streaming.citations);
        scrollDown();
        break;
      case "moderation":
        if (ev.action !== "allow") setStatus(wrap, ev.action === "block" ? "blocked" : "redacted",
          `${ev.stage} ${ev.action === "block" ? "blocked" : "redacted"}: ${ev.categories.join(", ")}`);
        break;
      case "done": case "error": finishStream(ev); break;
    }
  }

  function finishStream(ev) {
    const wrap = streaming.el;
    wrap.classList.remove("streaming");
    if (ev.type === "done") {
      setDecision(wrap, ev.documents, ev.general_knowledge);
      setTaught(wrap, ev.taught, ev.taught_from);
      if (ev.finish_reason === "cancelled") setStatus(wrap, "cancelled");
      if (ev.finish_reason === "length") setStatus(wrap, "length", "cut at the length limit");
      if (ev.finish_reason === "repetition") setStatus(wrap, "repetition", "stopped: the answer was repeating itself");
      const isNew = conversationId !== ev.conversation_id;
      conversationId = ev.conversation_id;
      if (isNew) history.replaceState(null, "", "#" + conversationId);
      if (ev.message_id) announceAnswer(wrap, ev.message_id, null);
    } else {
      setStatus(wrap, ev.code === "moderation_blocked" ? "blocked" : "error", ev.message);
      if (ev.conversation_id) conversationId = ev.conversation_id;
    }
    streaming = null;
    setBusy(false);
    loadConversations();
  }

  // A finished answer, live or from history: feedback.js puts its rating buttons under it.
  function announceAnswer(wrap, messageId, feedback) {
    wrap.dataset.messageId = messageId;
    document.dispatchEvent(new CustomEvent("enclave:answer", { detail: { el: wrap, messageId, feedback } }));
  }

  function setBusy(busy) {
    els.send.disabled = busy;
    els.stop.hidden = !busy;
    els.send.hidden = busy;
  }

  function sendMessage(text) {
    text = text.trim();
    if (!text || streaming) return;
    addMessage("user", text);
    const el = addMessage("assistant", "");
    el.classList.add("streaming");
    streaming = { el, text: "", sources: [], citations: null };
    setBusy(true);
    const frame = { type: "chat", message: text, route: els.route.value };
    if (conversationId) frame.conversation_id = conversationId;
    if (els.adapter.value) frame.adapter = els.adapter.value;
    if (els.collection.value) frame.collection = els.collection.value;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame)); else queued = frame;
    if (!els.title.dataset.set) els.title.textContent = text.slice(0, 60);
  }

  // ---- Conversations
  async function loadConversations() {
    let data;
    try { data = (await api("/v1/conversations")).data; } catch (e) { return; }
    els.list.replaceChildren();
    data.forEach((c) => {
      const row = document.createElement("div");
      row.className = "conversation" + (c.id === conversationId ? " active" : "");
      row.dataset.id = c.id;
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = c.title;
      open.title = c.title;
      open.onclick = () => openConversation(c.id);
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.setAttribute("aria-label", "Delete conversation " + c.title);
      del.textContent = "×";
      del.onclick = async () => {
        await api(`/v1/conversations/${encodeURIComponent(c.id)}`, { method: "DELETE" });
        if (c.id === conversationId) newChat();
        loadConversations();
      };
      row.append(open, del);
      els.list.appendChild(row);
    });
  }

  async function openConversation(id) {
    if (streaming) return;
    let conv;
    try { conv = await api(`/v1/conversations/${encodeURIComponent(id)}`); } catch (e) { newChat(); return; }
    conversationId = conv.id;
    history.replaceState(null, "", "#" + conv.id);
    els.messages.querySelectorAll(".message").forEach((m) => m.remove());
    els.title.textContent = conv.title;
    els.title.dataset.set = "1";
    conv.messages.forEach((m) => {
      const wrap = addMessage(m.role, m.content, { ...m, reason: "" });
      if (m.role === "assistant" && m.id) announceAnswer(wrap, m.id, m.feedback || null);
    });
    if (!conv.messages.length) els.empty.hidden = false;
    loadConversations();
  }

  function newChat() {
    if (streaming) return;
    conversationId = null;
    history.replaceState(null, "", location.pathname);
    els.messages.querySelectorAll(".message").forEach((m) => m.remove());
    els.empty.hidden = false;
    els.title.textContent = "New chat";
    delete els.title.dataset.set;
    loadConversations();
    els.input.focus();
  }

  async function loadPickers() {
    try {
      const models = (await api("/v1/models")).data;
      models.filter((m) => m.parent).forEach((m) => els.adapter.add(new Option(m.id, m.id)));
    } catch (e) { /* the picker stays empty */ }
    try {
      const cols = (await api("/v1/collections")).data;
      [...els.collection.options].slice(1).forEach((o) => o.remove()); // the documents panel may have filled it
      cols.forEach((c) => els.collection.add(new Option(`${c.name} (${c.documents})`, c.name)));
    } catch (e) { /* no knowledge base: the picker stays at default */ }
  }

  // ---- Wiring
  els.form.addEventListener("submit", (e) => { e.preventDefault(); sendMessage(els.input.value); els.input.value = ""; autosize(); });
  els.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); els.form.requestSubmit(); }
  });
  function autosize() { els.input.style.height = "auto"; els.input.style.height = Math.min(els.input.scrollHeight, 200) + "px"; }
  els.input.addEventListener("input", autosize);
  els.stop.addEventListener("click", () => { if (ws && streaming) ws.send(JSON.stringify({ type: "cancel" })); });
  els.newChat.addEventListener("click", newChat);
  document.querySelectorAll(".suggestion").forEach((b) => b.addEventListener("click", () => sendMessage(b.textContent)));
  els.apiKey.value = localStorage.getItem("enclave.apiKey") || "";
  els.apiKey.addEventListener("change", () => {
    localStorage.setItem("enclave.apiKey", els.apiKey.value.trim());
    if (ws) ws.close();
    loadConversations();
  });

  connect();
  loadPickers();
  if (location.hash.length > 1) openConversation(decodeURIComponent(location.hash.slice(1))); else loadConversations();
  els.input.focus();
})();
