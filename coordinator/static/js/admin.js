// The admin's page: server health, project-lead tokens, banning volunteers.
import { api, el, fmtBytes, fmtCount, fmtCredit, fmtTime, gate, initChrome, showNotice } from "./api.js";

const notice = document.getElementById("notice");

function fmtDuration(seconds) {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min` : `${Math.round(seconds)} s`;
}

async function showHealth() {
  const h = await api("/api/server");
  const campaigns = Object.entries(h.campaigns).map(([status, n]) => `${n} ${status}`).join(", ") || "none";
  const items = [
    ["Status", h.status],
    ["Version", h.version],
    ["Up for", fmtDuration(h.uptime_s)],
    ["Volunteers online", fmtCount(h.volunteers_connected)],
    ["Volunteers", fmtCount(h.volunteers)],
    ["Campaigns", campaigns],
    ["Evaluations queued", fmtCount(h.eval_queue)],
    ["Live dashboards", fmtCount(h.event_subscribers)],
    ["Database", fmtBytes(h.database_bytes)],
    ["Disk free", `${fmtBytes(h.disk_free_bytes)} of ${fmtBytes(h.disk_total_bytes)}`],
  ];
  document.getElementById("health").replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
}

async function showTokens() {
  const { tokens } = await api("/api/tokens");
  document.getElementById("tokens").replaceChildren(
    ...tokens.map((t) =>
      el(
        "tr",
        { "data-token": t.id },
        el("td", { class: "num" }, t.id),
        el("td", { class: "wrap" }, t.label),
        el("td", {}, t.role === "admin" ? "admin" : "project lead"),
        el("td", {}, fmtTime(t.created_at)),
        el("td", {}, t.revoked ? "revoked" : "valid"),
        el(
          "td",
          {},
          el("button", { type: "button", class: "danger", disabled: t.revoked, "aria-label": `Revoke token ${t.id} (${t.label})`, onclick: () => revoke(t) }, "Revoke"),
        ),
      ),
    ),
  );
}

async function revoke(t) {
  if (!confirm(`Revoke the token of ${t.label}? Whoever holds it can no longer sign in.`)) return;
  try {
    await api(`/api/tokens/${t.id}`, { method: "DELETE" });
    showNotice(notice, `Token ${t.id} (${t.label}) is revoked.`, "good");
  } catch (error) {
    showNotice(notice, `Couldn't revoke token ${t.id}: ${error.message}`);
  }
  await showTokens();
}

async function showVolunteers() {
  const { volunteers } = await api("/api/volunteers");
  const body = document.getElementById("volunteers");
  if (!volunteers.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No volunteer has connected yet.")));
    return;
  }
  body.replaceChildren(
    ...volunteers.map((v) =>
      el(
        "tr",
        { "data-volunteer": v.id },
        el("td", { class: "wrap" }, v.name),
        el("td", {}, el("code", {}, v.id)),
        el("td", { class: "num" }, fmtCredit(v.credit)),
        el("td", { class: "num" }, fmtCount(v.units_accepted)),
        el("td", { class: "num" }, fmtCount(v.units_rejected)),
        el("td", {}, fmtTime(v.last_seen)),
        el(
          "td",
          {},
          el(
            "button",
            { type: "button", class: v.banned ? "secondary" : "danger", "aria-label": `${v.banned ? "Unban" : "Ban"} ${v.name}`, onclick: () => ban(v) },
            v.banned ? "Unban" : "Ban",
          ),
        ),
      ),
    ),
  );
}

async function ban(v) {
  const action = v.banned ? "unban" : "ban";
  try {
    await api(`/api/volunteers/${encodeURIComponent(v.id)}/${action}`, { method: "POST" });
    showNotice(notice, `${v.name} is ${v.banned ? "no longer banned" : "banned"}.`, "good");
  } catch (error) {
    showNotice(notice, `Couldn't ${action} ${v.name}: ${error.message}`);
  }
  await showVolunteers();
}

async function createToken(event) {
  event.preventDefault();
  const label = document.getElementById("token-label");
  const error = document.getElementById("token-label-error");
  error.textContent = "";
  label.removeAttribute("aria-invalid");
  try {
    const created = await api("/api/tokens", { method: "POST", body: { label: label.value, role: document.getElementById("token-role").value } });
    document.getElementById("new-token").hidden = false;
    const secret = document.getElementById("new-token-value");
    secret.value = created.token;
    secret.focus();
    secret.select();
    label.value = "";
  } catch (failure) {
    label.setAttribute("aria-invalid", "true");
    error.textContent = failure.message;
    label.focus();
  }
  await showTokens();
}

const me = await initChrome();
if (gate(me, ["admin"], document.getElementById("gate"))) {
  document.getElementById("admin").hidden = false;
  document.getElementById("token-form").addEventListener("submit", createToken);
  document.getElementById("health-refresh").addEventListener("click", showHealth);
  await Promise.all([showHealth(), showTokens(), showVolunteers()]);
}
