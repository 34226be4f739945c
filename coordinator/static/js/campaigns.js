// The public list of campaigns, refreshed live from /api/events.
import { api, el, fmtCount, fmtLoss, fmtPercent, fmtRate, initChrome, liveStream, setText, showNotice } from "./api.js";

const list = document.getElementById("campaigns");
const notice = document.getElementById("notice");

function card(c) {
  return el(
    "li",
    { class: "card panel", "data-campaign": c.id },
    el("div", { class: "row spread" }, el("h2", {}, el("a", { href: `/campaigns/${c.id}` }, c.name)), el("span", { class: `status ${c.status}` }, c.status)),
    c.description ? el("p", { class: "muted" }, c.description) : null,
    el("progress", { max: 1, value: c.progress, "aria-label": `${c.name}: ${fmtPercent(c.progress)} of its token budget` }),
    el("p", {}, `${fmtCount(c.tokens_trained)} of ${fmtCount(c.token_budget)} tokens (${fmtPercent(c.progress)})`),
    el(
      "dl",
      { class: "stats" },
      el("div", {}, el("dt", {}, "Model"), el("dd", {}, `${c.model} v${c.version}`)),
      el("div", {}, el("dt", {}, "Holdout loss"), el("dd", {}, fmtLoss(c.holdout_loss))),
      el("div", {}, el("dt", {}, "Tokens/s"), el("dd", {}, fmtRate(c.tokens_per_second))),
    ),
  );
}

async function refresh() {
  try {
    const { campaigns } = await api("/api/campaigns");
    campaigns.sort((a, b) => (a.status === "active") - (b.status === "active") || a.id - b.id).reverse();
    list.replaceChildren(...campaigns.map(card));
    document.getElementById("empty").hidden = campaigns.length > 0;
    notice.textContent = "";
  } catch (error) {
    showNotice(notice, `Couldn't load the campaigns: ${error.message}`);
  }
}

function totals(stats) {
  setText("t-active", fmtCount(stats.campaigns_active));
  setText("t-online", fmtCount(stats.volunteers_connected));
  setText("t-volunteers", fmtCount(stats.volunteers));
  setText("t-tokens", fmtCount(stats.tokens_trained));
}

await initChrome();
await refresh();
let ticks = 0;
liveStream(
  "/api/events",
  {
    stats: (stats) => {
      totals(stats);
      if (++ticks % 5 === 0) refresh(); // tokens/s and progress move between events
    },
    campaign: refresh,
    version: refresh,
    resync: refresh,
  },
  document.getElementById("live"),
);
