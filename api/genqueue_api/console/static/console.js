// The moderators' console: moves between claimed items, sends decisions and claims to /console/api, and
// swaps items in place (their markup is rendered and escaped by the server). No build step, no library.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = $('meta[name="csrf-token"]').content;
  const stage = $("#stage");
  const rows = $("#rows");
  const empty = $("#empty");
  const notice = $("#notice");
  const rejectDialog = $("#reject-dialog");
  const helpDialog = $("#help-dialog");
  let current = 0; // index into items()
  let lastShown = null; // the job id shown last, to start a newly shown item at its top
  let busy = false; // one request that changes something at a time: a second key press is not a second decision
  let noticeTimer = null;
  let reasons = JSON.parse($("#reasons").dataset.reasons || "[]");

  const items = () => $$("article.item", stage);
  const currentItem = () => items()[current] || null;
  const rowOf = (jobId) => $(`li.row[data-job-id="${CSS.escape(jobId)}"]`, rows);

  // ------------------------------------------------------------------ requests

  class RequestError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, body, method) {
    let response;
    try {
      response = await fetch(path, {
        method: method || "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, Accept: "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new RequestError(0, "network", "The server cannot be reached. Check your connection and try again.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const err = (data && data.error) || {};
      throw new RequestError(response.status, err.code || "error",
        err.message || `The server answered ${response.status} ${response.statusText}.`);
    }
    return data;
  }

  function showNotice(message, kind, withLogin) {
    clearTimeout(noticeTimer);
    notice.className = `notice notice-${kind || "error"}`;
    const text = $("[data-text]", notice);
    text.textContent = message;
    if (withLogin) {
      const a = document.createElement("a");
      a.href = "/console/login";
      a.textContent = "Log in again";
      text.append(" ", a);
    }
    notice.hidden = false;
    noticeTimer = setTimeout(() => { notice.hidden = true; }, kind === "info" ? 4000 : 12000);
  }

  function failed(err) {
    showNotice(err.message, "error", err.status === 401);
  }

  // ------------------------------------------------------------------ the view

  function updateCounters(counters) {
    if (!counters) return;
    for (const [name, value] of Object.entries(counters)) {
      const el = $(`[data-counter="${name}"]`);
      if (el) el.textContent = String(value);
    }
  }

  function expired(item) {
    const at = Date.parse(item.dataset.expires || "");
    return !Number.isNaN(at) && at <= Date.now();
  }

  function refreshClaim(item) {
    if (!item) return;
    const at = Date.parse(item.dataset.expires || "");
    const claim = $("[data-claim]", item);
    const isExpired = expired(item);
    $("[data-expired]", item).hidden = !isExpired;
    if (Number.isNaN(at)) {
      claim.textContent = "not claimed";
    } else if (isExpired) {
      claim.textContent = "claim expired";
    } else {
      const left = Math.max(0, Math.round((at - Date.now()) / 1000));
      claim.textContent = `claim ends in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    }
    claim.classList.toggle("claim-late", !isExpired && at - Date.now() < 60000);
    item.classList.toggle("is-expired", isExpired);
  }

  function render() {
    const all = items();
    if (current >= all.length) current = Math.max(0, all.length - 1);
    all.forEach((item, i) => { item.hidden = i !== current; });
    $$("li.row", rows).forEach((row) => row.removeAttribute("aria-current"));
    const item = currentItem();
    empty.hidden = !!item;
    if (item && item.dataset.jobId !== lastShown) {
      stage.scrollTop = 0;
      lastShown = item.dataset.jobId;
    }
    if (item) {
      const row = rowOf(item.dataset.jobId);
      if (row) {
        row.setAttribute("aria-current", "true");
        row.scrollIntoView({ block: "nearest" });
      }
      refreshClaim(item);
    }
    const decidable = !!item && !expired(item) && !busy;
    for (const action of ["approve", "reject"]) $(`.actions [data-action="${action}"]`).disabled = !decidable;
    $('.actions [data-action="escalate"]').disabled = !decidable || item.dataset.status === "escalated";
    $('.actions [data-action="release"]').disabled = !item || busy || expired(item);
    $('.actions [data-action="renew"]').disabled = !item || busy || expired(item);
    $('.actions [data-action="prev"]').disabled = !item || current === 0;
    $('.actions [data-action="next"]').disabled = !item || current >= all.length - 1;
    $("#position").textContent = item ? `${current + 1} / ${all.length}` : "";
    $("#held-count").textContent = String(all.length);
  }

  function move(delta) {
    const n = items().length;
    if (!n) return;
    current = Math.min(n - 1, Math.max(0, current + delta));
    render();
  }

  function removeItem(item) {
    const row = rowOf(item.dataset.jobId);
    if (row) row.remove();
    item.remove();
    render(); // the item that took its place (the next one) is shown at once
  }

  function addItems(list) {
    const known = new Set(items().map((i) => i.dataset.jobId));
    const tpl = document.createElement("template");
    let added = 0;
    for (const entry of list) {
      if (known.has(entry.job_id)) {
        const old = $(`article.item[data-job-id="${CSS.escape(entry.job_id)}"]`, stage);
        old.dataset.expires = entry.claim_expires_at; // claimed again: a fresh lease
        continue;
      }
      tpl.innerHTML = entry.html.trim();
      stage.insertBefore(tpl.content.firstElementChild, empty);
      tpl.innerHTML = entry.row.trim();
      rows.append(tpl.content.firstElementChild);
      added += 1;
    }
    return added;
  }

  // ------------------------------------------------------------------ actions

  async function claim() {
    if (busy) return;
    busy = true;
    render();
    try {
      // Items whose claim ran out are dropped first: the claim below may hand them out again.
      items().filter(expired).forEach((item) => { rowOf(item.dataset.jobId)?.remove(); item.remove(); });
      const form = $("#claim-form");
      const data = await api("/console/api/claim", {
        limit: Number(form.elements.limit.value), model: form.elements.model.value || null,
      });
      const added = addItems(data.items);
      updateCounters(data.counters);
      if (!data.items.length) {
        $("#empty-text").textContent = "Nothing to review right now: every pending item is claimed or decided.";
        showNotice("The queue is empty: nothing was claimed.", "info");
      } else if (added) {
        showNotice(`Claimed ${added} item${added === 1 ? "" : "s"}.`, "info");
      }
    } catch (err) {
      failed(err);
    } finally {
      busy = false;
      render();
    }
  }

  async function decide(decision, reason) {
    const item = currentItem();
    if (!item || busy) return false;
    if (expired(item)) {
      refreshClaim(item);
      return false;
    }
    busy = true;
    render();
    try {
      const data = await api(`/console/api/items/${encodeURIComponent(item.dataset.jobId)}/decision`,
        { decision, reason: reason || null });
      updateCounters(data.counters);
      if (data.reasons) reasons = data.reasons;
      busy = false;
      removeItem(item);
      // The page is done: the next one comes without a key press (once this request has wound up).
      if (!items().length) queueMicrotask(claim);
      return true;
    } catch (err) {
      if (err.code === "claim_expired") {
        item.dataset.expires = new Date(0).toISOString();
        refreshClaim(item);
      }
      if (err.code === "already_decided") removeItem(item);
      failed(err);
      return err.code !== "reason_required" && err.code !== "network" ? null : false;
    } finally {
      busy = false;
      render();
    }
  }

  async function simple(action) {
    const item = currentItem();
    if (!item || busy) return;
    busy = true;
    render();
    try {
      const data = await api(`/console/api/items/${encodeURIComponent(item.dataset.jobId)}/${action}`);
      if (action === "release") {
        updateCounters(data.counters);
        busy = false;
        removeItem(item);
        showNotice("Released: the item is back in the queue.", "info");
      } else {
        item.dataset.expires = data.claim_expires_at;
        showNotice("Claim extended.", "info");
      }
    } catch (err) {
      failed(err);
    } finally {
      busy = false;
      render();
    }
  }

  function openReject() {
    const item = currentItem();
    if (!item || busy || expired(item)) return;
    const list = $("#reasons ul");
    list.replaceChildren();
    reasons.slice(0, 5).forEach((r, i) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "reason";
      b.dataset.reason = r;
      const k = document.createElement("kbd");
      k.textContent = String(i + 1);
      b.append(k, " ", r);
      li.append(b);
      list.append(li);
    });
    $("#reasons").hidden = reasons.length === 0;
    $("#reject-error").hidden = true;
    $("#reject-reason").value = "";
    rejectDialog.showModal();
    $("#reject-reason").focus();
  }

  async function submitReject() {
    const reason = $("#reject-reason").value.trim();
    const error = $("#reject-error");
    if (!reason) {
      error.textContent = "A rejection needs a reason.";
      error.hidden = false;
      return;
    }
    const done = await decide("reject", reason);
    if (done === false) {
      error.textContent = notice.hidden ? "The rejection was not sent." : $("[data-text]", notice).textContent;
      error.hidden = false;
      return;
    }
    rejectDialog.close();
  }

  const actions = {
    approve: () => decide("approve"),
    reject: openReject,
    escalate: () => decide("escalate"),
    next: () => move(1),
    prev: () => move(-1),
    claim,
    reclaim: claim,
    release: () => simple("release"),
    renew: () => simple("renew"),
    help: () => helpDialog.showModal(),
    cancel: () => rejectDialog.close(),
  };

  // ------------------------------------------------------------------ wiring

  document.addEventListener("click", (ev) => {
    const target = ev.target.closest("[data-action], [data-select], .reason, .notice-close");
    if (!target) return;
    if (target.classList.contains("notice-close")) {
      notice.hidden = true;
    } else if (target.classList.contains("reason")) {
      $("#reject-reason").value = target.dataset.reason;
      $("#reject-reason").focus();
    } else if (target.dataset.select) {
      current = Math.max(0, items().findIndex((i) => i.dataset.jobId === target.dataset.select));
      render();
    } else if (target.dataset.action in actions && target.getAttribute("type") !== "submit") {
      actions[target.dataset.action]();
    }
  });

  $("#claim-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    document.activeElement?.blur(); // so that the keys work at once on what was claimed
    claim();
  });
  $("#reject-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitReject(); });

  $("#reject-reason").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      submitReject();
    } else if (/^[1-5]$/.test(ev.key) && $("#reject-reason").value === "" && reasons[Number(ev.key) - 1]) {
      ev.preventDefault(); // on an empty reason, a digit picks one of the last reasons
      $("#reject-reason").value = reasons[Number(ev.key) - 1];
    }
  });

  const KEYS = { a: "approve", r: "reject", e: "escalate", j: "next", k: "prev", c: "claim", "?": "help" };

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.defaultPrevented) return;
    if (rejectDialog.open || helpDialog.open) return; // the dialogs handle their own keys (Esc closes)
    // A field of a dialog that has just closed can keep the focus for a moment (the browser gives it back
    // later): keys pressed then are meant for the page, not for that hidden field.
    if (ev.target.closest("input, textarea, select, [contenteditable]") && !ev.target.closest("dialog:not([open])")) return;
    const action = KEYS[ev.key];
    if (!action) return;
    ev.preventDefault();
    actions[action]();
  });

  setInterval(() => {
    const item = currentItem();
    if (!item) return;
    const wasExpired = item.classList.contains("is-expired");
    refreshClaim(item);
    if (wasExpired !== expired(item)) render();
  }, 1000);

  setInterval(async () => {
    try {
      updateCounters((await api("/console/api/counters", undefined, "GET")).counters);
    } catch (err) {
      if (err.status === 401) failed(err);
    }
  }, 20000);

  render();
})();
