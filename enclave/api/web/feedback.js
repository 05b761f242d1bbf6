// Enclave's answer feedback: thumbs up / down under each answer (a reason and a correction for a bad one),
// and the review queue where an admin accepts or rejects what people sent before it teaches anything.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const REASONS = [
    ["wrong", "Wrong"], ["not_in_documents", "Not in the documents"], ["incomplete", "Incomplete"],
    ["harmful", "Harmful"], ["other", "Other"],
  ];
  const REASON_TEXT = Object.fromEntries(REASONS);
  const MAX_CORRECTION = 8000; // the server's limit (limits.max_message_chars) decides; this only stops typing
  const THUMB = '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M2 10h4v11H2z' +
    'M8 10.5 12.2 3c1.6 0 2.7 1.3 2.4 2.9L13.9 9H20a2 2 0 0 1 2 2.3l-1.4 7.9A2 2 0 0 1 18.6 21H8z"/></svg>';
  const stateOf = new WeakMap(); // feedback box → the caller's feedback object, or null

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
  function ago(iso) {
    const t = Date.parse(iso);
    if (!t) return "";
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(t).toLocaleDateString();
  }
  function timeEl(iso) {
    const t = el("time", "review-time", ago(iso));
    t.dateTime = iso || "";
    t.title = iso ? new Date(iso).toLocaleString() : "";
    return t;
  }

  // ---- HTTP: every answer as {ok, status, body, message}, the message one a person can act on
  function authHeaders() {
    const key = localStorage.getItem("enclave.apiKey") || "";
    return key ? { Authorization: "Bearer " + key } : {};
  }
  function messageOf(status, body) {
    const said = body && body.error && body.error.message;
    if (status === 0) return "The server cannot be reached: try again.";
    if (status === 401) return "This server needs an API key: enter yours under Settings (bottom left).";
    if (status === 403) return said || "Your API key may not do this.";
    if (status === 404) return "This answer is no longer stored (its conversation may have been deleted).";
    if (status === 413) return "The correction is too long" + (said ? ` (${said})` : "") + ".";
    if (status === 429) return "Too many ratings just now: wait a moment and try again.";
    return said || `the server answered HTTP ${status}`;
  }
  async function request(method, path, payload) {
    const opts = { method, headers: authHeaders() };
    if (payload !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(payload);
    }
    let res;
    try { res = await fetch(path, opts); } catch (e) { return { ok: false, status: 0, body: null, message: messageOf(0) }; }
    const body = res.status === 204 ? null : await res.json().catch(() => null);
    return { ok: res.ok, status: res.status, body, message: res.ok ? "" : messageOf(res.status, body) };
  }

  // ---- the rating under an answer
  let seq = 0;
  function thumb(kind, label) {
    const b = button(`thumb thumb-${kind}`, undefined, label);
    b.innerHTML = THUMB;
    b.title = label;
    b.setAttribute("aria-pressed", "false");
    return b;
  }
  function buildForm(n) {
    const form = el("form", "feedback-form");
    form.hidden = true;
    form.id = `feedback-form-${n}`;
    form.noValidate = true;
    const set = el("fieldset", "feedback-reasons");
    set.append(el("legend", "", "What was wrong?"));
    REASONS.forEach(([value, text]) => {
      const label = el("label", "feedback-reason");
      const radio = el("input");
      Object.assign(radio, { type: "radio", name: `reason-${n}`, value });
      label.append(radio, " " + text);
      set.append(label);
    });
    const corr = el("label", "feedback-correction");
    const area = el("textarea", "feedback-text");
    Object.assign(area, { rows: 3, maxLength: MAX_CORRECTION, placeholder: "What should the answer have said?" });
    const title = el("span", "", "Correct answer ");
    title.append(el("span", "optional", "(optional)"));
    corr.append(title, area);
    const actions = el("div", "feedback-actions");
    const submit = el("button", "feedback-submit", "Submit");
    submit.type = "submit";
    actions.append(submit, button("feedback-cancel", "Cancel"));
    form.append(set, corr, actions);
    return form;
  }
  function buildBox() {
    const n = ++seq;
    const box = el("div", "feedback");
    const row = el("div", "feedback-row");
    row.setAttribute("role", "group");
    row.setAttribute("aria-label", "Rate this answer");
    const up = thumb("up", "Good answer"), down = thumb("down", "Bad answer");
    down.setAttribute("aria-controls", `feedback-form-${n}`);
    down.setAttribute("aria-expanded", "false");
    const note = el("span", "feedback-note");
    note.setAttribute("role", "status");
    note.setAttribute("aria-live", "polite");
    row.append(up, down, note);
    const error = el("div", "feedback-error");
    error.setAttribute("role", "alert");
    error.hidden = true;
    const form = buildForm(n);
    box.append(row, form, error);
    up.addEventListener("click", () => onThumb(box, "up"));
    down.addEventListener("click", () => onThumb(box, "down"));
    form.addEventListener("submit", (e) => { e.preventDefault(); submitDown(box); });
    form.querySelector(".feedback-cancel").addEventListener("click", () => closeForm(box, true));
    form.addEventListener("keydown", (e) => { if (e.key === "Escape") closeForm(box, true); });
    return box;
  }
  const parts = (box) => ({
    up: box.querySelector(".thumb-up"), down: box.querySelector(".thumb-down"), note: box.querySelector(".feedback-note"),
    form: box.querySelector(".feedback-form"), error: box.querySelector(".feedback-error"),
  });

  function show(box, fb) {
    stateOf.set(box, fb);
    const p = parts(box);
    box.dataset.rating = fb ? fb.rating : "";
    p.up.setAttribute("aria-pressed", String(Boolean(fb && fb.rating === "up")));
    p.down.setAttribute("aria-pressed", String(Boolean(fb && fb.rating === "down")));
    const why = fb && fb.rating === "down" && fb.reason ? ` (${REASON_TEXT[fb.reason] || fb.reason})` : "";
    p.down.title = fb && fb.rating === "down" ? `You rated this answer bad${why}: click to remove` : "Bad answer";
    p.up.title = fb && fb.rating === "up" ? "You rated this answer good: click to remove" : "Good answer";
  }
  function say(box, note, error) {
    const p = parts(box);
    p.note.textContent = note || "";
    p.error.textContent = error || "";
    p.error.hidden = !error;
  }
  function busy(box, on) {
    // Not `disabled`: a disabled button loses the keyboard focus, and a keyboard user would lose their place.
    box.setAttribute("aria-busy", String(on));
    box.querySelectorAll("button").forEach((b) => b.setAttribute("aria-disabled", String(on)));
  }
  const isBusy = (box) => box.getAttribute("aria-busy") === "true";
  function openForm(box) {
    const p = parts(box);
    p.form.hidden = false;
    p.down.setAttribute("aria-expanded", "true");
    p.form.querySelector("input[type=radio]").focus();
  }
  function closeForm(box, refocus) {
    const p = parts(box);
    p.form.hidden = true;
    p.form.reset();
    p.down.setAttribute("aria-expanded", "false");
    if (refocus) p.down.focus();
  }

  async function onThumb(box, kind) {
    const p = parts(box);
    const fb = stateOf.get(box);
    if (isBusy(box)) return;
    say(box, "");
    if (fb && fb.rating === kind) { closeForm(box); await remove(box); return; }
    if (kind === "up") { closeForm(box); await rate(box, { rating: "up" }, "Thanks for the feedback"); return; }
    if (p.form.hidden) openForm(box); else closeForm(box, true);
  }
  async function submitDown(box) {
    const p = parts(box);
    if (isBusy(box)) return;
    const payload = { rating: "down" };
    const reason = p.form.querySelector("input[type=radio]:checked");
    if (reason) payload.reason = reason.value;
    const correction = p.form.querySelector("textarea").value.trim();
    if (correction) payload.correction = correction;
    if (await rate(box, payload, "Thanks — sent for review")) closeForm(box, true);
  }
  async function rate(box, payload, thanks) {
    busy(box, true);
    const r = await request("POST", `/v1/messages/${encodeURIComponent(box.dataset.messageId)}/feedback`, payload);
    busy(box, false);
    if (!r.ok) { say(box, "", r.message); return false; }
    show(box, r.body);
    say(box, thanks);
    return true;
  }
  async function remove(box) {
    busy(box, true);
    const r = await request("DELETE", `/v1/messages/${encodeURIComponent(box.dataset.messageId)}/feedback`);
    busy(box, false);
    if (!r.ok) { say(box, "", r.message); return; }
    show(box, null);
    say(box, "Rating removed");
  }

  // app.js announces each finished answer (live, or loaded from history with the caller's rating).
  document.addEventListener("enclave:answer", (e) => {
    const { el: wrap, messageId, feedback } = e.detail;
    let box = wrap.querySelector(":scope > .feedback");
    if (!box) { box = buildBox(); wrap.appendChild(box); }
    box.dataset.messageId = messageId;
    show(box, feedback || null);
  });

  // ---- the review queue (admins)
  const rv = {
    toggle: $("#review-toggle"), view: $("#review-view"), rating: $("#review-rating"), state: $("#review-state"),
    refresh: $("#review-refresh"), notice: $("#review-notice"), count: $("#review-count"), list: $("#review-list"),
    chat: $("#chat"), taught: $("#review-taught"), taughtList: $("#taught-list"),
  };
  let loading = 0;

  function setNotice(text) { rv.notice.hidden = !text; rv.notice.textContent = text || ""; }
  async function probe() {
    // Listing feedback is for admins: a 403 (or no feedback API at all) keeps the Review button hidden.
    const r = await request("GET", "/v1/feedback?limit=1");
    rv.toggle.hidden = !r.ok;
    if (!r.ok && !rv.view.hidden) closeReview();
  }
  function openReview() {
    rv.view.hidden = false;
    rv.chat.classList.add("reviewing");
    rv.toggle.setAttribute("aria-pressed", "true");
    loadReview();
  }
  function closeReview() {
    rv.view.hidden = true;
    rv.chat.classList.remove("reviewing");
    rv.toggle.setAttribute("aria-pressed", "false");
  }

  async function loadReview() {
    const mine = ++loading;
    const q = new URLSearchParams({ limit: "200" });
    if (rv.rating.value) q.set("rating", rv.rating.value);
    if (rv.state.value) q.set("review_state", rv.state.value);
    rv.view.setAttribute("aria-busy", "true");
    const r = await request("GET", "/v1/feedback?" + q);
    if (mine !== loading) return; // a newer filter choice won
    rv.view.setAttribute("aria-busy", "false");
    if (!r.ok) { setNotice(r.status === 403 ? "Reviewing feedback needs an admin key." : r.message); return; }
    setNotice("");
    const when = (f) => Date.parse(f.updated_at || f.created_at) || 0;
    const items = [...(r.body.data || [])].sort((a, b) => when(b) - when(a));
    rv.list.replaceChildren(...items.map(reviewItem));
    const state = rv.state.value || "in any state";
    rv.count.textContent = items.length ? `${items.length} ${state}` : `Nothing ${state} to review.`;
    loadTaught();
  }

  // ---- what the reviews led to: the gate's latest decisions
  const points = (x) => `${x >= 0 ? "+" : "−"}${Math.abs(x * 100).toFixed(1)}`;
  function gainText(f) {
    const g = f && f.right_gain;
    if (!g) return "";
    return `right answers ${points(g.difference)} points [${points(g.ci95[0])}, ${points(g.ci95[1])}] ` +
      `on ${f.questions} held-out questions against ${f.against}`;
  }
  function taughtItem(e) {
    const li = el("li", "taught-item");
    li.dataset.action = e.action;
    const what = {
      promote: e.forced ? `${e.name} ${e.version} served without a comparison (forced)` : `${e.name} ${e.version} promoted`,
      refuse: `${e.name}: a retrained candidate refused — ${e.name} ${e.against || "the served one"} kept`,
      rollback: `${e.name} rolled back to ${e.version}`,
    }[e.action] || `${e.name}: ${e.action}`;
    li.append(el("span", `taught-action taught-${e.action}`, what));
    const figures = gainText(e.figures);
    if (figures) li.append(el("span", "taught-figures", figures));
    const who = el("span", "taught-who", e.by ? ` by ${e.by}` : "");
    li.append(timeEl(e.at), who);
    return li;
  }
  async function loadTaught() {
    const r = await request("GET", "/v1/adapters/history?limit=5");
    const events = r.ok ? r.body.data || [] : [];
    rv.taught.hidden = !events.length;
    rv.taughtList.replaceChildren(...events.map(taughtItem));
  }

  function block(cls, label, content) {
    const b = el("div", `review-block ${cls}`);
    b.append(el("div", "review-label", label));
    if (typeof content === "string") b.append(el("div", "review-text", content)); else b.append(content);
    return b;
  }
  function reviewItem(fb) {
    const snap = fb.snapshot || {};
    const li = el("li", "review-item");
    li.dataset.id = fb.id;
    li.dataset.rating = fb.rating;
    const head = el("div", "review-meta");
    const badge = el("span", `review-rating rating-${fb.rating}`);
    badge.innerHTML = THUMB;
    badge.append(fb.rating === "up" ? " good" : " bad");
    head.append(badge);
    if (fb.reason) head.append(el("span", "review-reason", REASON_TEXT[fb.reason] || fb.reason));
    const route = snap.route === "adapter" ? `adapter: ${snap.adapter}` : snap.route === "rag" ? "documents" : snap.route;
    if (route) head.append(el("span", "review-chip", route));
    if (snap.collection) head.append(el("span", "review-chip", `collection: ${snap.collection}`));
    if (fb.principal) head.append(el("span", "review-who", `from ${fb.principal}`));
    head.append(timeEl(fb.updated_at || fb.created_at));
    const answer = el("div", "review-answer");
    answer.innerHTML = window.enclaveRenderMarkdown ? window.enclaveRenderMarkdown(snap.answer || "") : "";
    if (!window.enclaveRenderMarkdown) answer.textContent = snap.answer || "";
    answer.querySelectorAll("button.cite").forEach((chip) => chip.replaceWith(chip.textContent)); // "[n]" as it was
    li.append(head, block("review-question", "Question", snap.question || "(not stored)"),
      block("review-was", "Answer as it was", answer));
    if (fb.correction) li.append(block("review-correction", "Correction", fb.correction));
    const sources = (snap.sources || []).map((s) => s.title || s.uri).filter(Boolean);
    if (sources.length) li.append(block("review-sources", "Sources", sources.join(" · ")));
    li.append(el("div", "review-decision"));
    showDecision(li, fb);
    return li;
  }

  function showDecision(li, fb) {
    const review = fb.review || { state: "pending" };
    li.dataset.state = review.state;
    const box = li.querySelector(".review-decision");
    box.replaceChildren();
    if (review.state === "accepted" || review.state === "rejected") {
      const line = el("div", `review-done review-${review.state}`);
      line.tabIndex = -1;
      line.append(el("strong", "review-state", review.state === "accepted" ? "Accepted" : "Rejected"),
        ` by ${review.by || "?"} · `, timeEl(review.at));
      box.append(line);
      if (review.note) box.append(el("div", "review-note-text", review.note));
      return;
    }
    // "none": a thumbs up without a correction waits for nobody, but may still be accepted as a good answer.
    if (review.state === "none") box.append(el("span", "review-none", "No review needed"));
    const note = el("input", "review-note");
    Object.assign(note, { type: "text", placeholder: "Note (optional)", maxLength: 1000 });
    note.setAttribute("aria-label", "Note for this decision (optional)");
    const accept = button("review-accept", "Accept"), reject = button("review-reject", "Reject");
    const error = el("div", "review-error");
    error.setAttribute("role", "alert");
    error.hidden = true;
    box.append(note, accept, reject, error);
    accept.addEventListener("click", () => decide(li, fb, "accepted"));
    reject.addEventListener("click", () => decide(li, fb, "rejected"));
  }
  async function decide(li, fb, decision) {
    const box = li.querySelector(".review-decision");
    const note = box.querySelector(".review-note").value.trim();
    box.querySelectorAll("button, input").forEach((b) => { b.disabled = true; });
    const payload = note ? { decision, note } : { decision };
    const r = await request("POST", `/v1/feedback/${encodeURIComponent(fb.id)}/review`, payload);
    if (!r.ok) {
      box.querySelectorAll("button, input").forEach((b) => { b.disabled = false; });
      const error = box.querySelector(".review-error");
      error.textContent = r.message;
      error.hidden = false;
      return;
    }
    const next = r.body && r.body.review ? { ...fb, ...r.body } : { ...fb, review: r.body };
    showDecision(li, next);
    li.querySelector(".review-done").focus(); // the buttons are gone: the decision itself takes the focus
  }

  // ---- wiring
  rv.toggle.addEventListener("click", () => (rv.view.hidden ? openReview() : closeReview()));
  rv.refresh.addEventListener("click", loadReview);
  rv.rating.addEventListener("change", loadReview);
  rv.state.addEventListener("change", loadReview);
  // Opening a conversation or a new chat leaves the review view.
  $("#conversation-list").addEventListener("click", (e) => { if (e.target.closest(".open")) closeReview(); });
  $("#new-chat").addEventListener("click", closeReview);
  $("#api-key").addEventListener("change", probe);
  probe();
})();
