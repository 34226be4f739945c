// A project lead's campaigns (an admin's: all of them) with pause, resume, stop and downloads.
import { api, canManage, el, fmtLoss, fmtPercent, gate, initChrome, showNotice } from "./api.js";

const notice = document.getElementById("notice");
let me = null;

async function act(campaign, action) {
  if (action === "stop" && !confirm(`Stop ${campaign.name} for good? A stopped campaign can't be resumed.`)) return;
  try {
    const updated = await api(`/api/campaigns/${campaign.id}/${action}`, { method: "POST" });
    showNotice(notice, `${updated.name} is now ${updated.status}.`, "good");
  } catch (error) {
    showNotice(notice, `Couldn't ${action} ${campaign.name}: ${error.message}`);
  }
  await refresh();
}

function row(c) {
  const button = (action, label, enabled, cls = "secondary") =>
    el("button", { type: "button", class: cls, disabled: !enabled, "aria-label": `${label} ${c.name}`, onclick: () => act(c, action) }, label);
  return el(
    "tr",
    { "data-campaign": c.id },
    el("td", { class: "wrap" }, el("a", { href: `/campaigns/${c.id}` }, c.name)),
    el("td", {}, el("span", { class: `status ${c.status}` }, c.status)),
    el("td", { class: "num" }, fmtPercent(c.progress)),
    el("td", { class: "num" }, `v${c.version}`),
    el("td", { class: "num" }, fmtLoss(c.holdout_loss)),
    el(
      "td",
      {},
      el(
        "div",
        { class: "row" },
        button("pause", "Pause", c.status === "active"),
        button("resume", "Resume", c.status === "paused"),
        button("stop", "Stop", ["active", "paused"].includes(c.status), "danger"),
      ),
    ),
    el(
      "td",
      {},
      el(
        "div",
        { class: "row" },
        el("a", { href: `/api/campaigns/${c.id}/checkpoint`, download: true, "aria-label": `Weights of ${c.name} (safetensors)` }, "Weights"),
        el("a", { href: `/api/campaigns/${c.id}/tokenizer`, download: true, "aria-label": `Tokenizer of ${c.name}` }, "Tokenizer"),
      ),
    ),
  );
}

async function refresh() {
  const { campaigns } = await api("/api/campaigns");
  const mine = campaigns.filter((c) => canManage(me, c)).reverse();
  document.getElementById("campaign-rows").replaceChildren(...mine.map(row));
  document.getElementById("none").hidden = mine.length > 0;
}

me = await initChrome();
if (gate(me, ["lead", "admin"], document.getElementById("gate"))) {
  document.getElementById("mine").hidden = false;
  document.getElementById("new-link").hidden = false;
  await refresh();
}
