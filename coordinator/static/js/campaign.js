// One campaign, live: progress, throughput, outcomes, the loss chart, the leaderboard, the privacy
// accounting of a campaign on volunteers' own data, and the lead's controls. Updates arrive over
// /api/campaigns/{id}/events without reloading.
import {
  announce,
  api,
  canManage,
  el,
  fmtBytes,
  fmtCount,
  fmtCredit,
  fmtLoss,
  fmtPercent,
  fmtRate,
  fmtTime,
  initChrome,
  liveStream,
  setText,
  showNotice,
} from "./api.js";
import { lossChart } from "./chart.js";

const id = Number(location.pathname.split("/").at(-1));
const notice = document.getElementById("notice");
let me = null;
let campaign = null;

const REASONS = {
  stale_update: "too stale",
  non_finite: "not finite (NaN/∞)",
  bad_encoding: "could not be decoded",
  lease_expired: "lease expired",
  not_your_lease: "not its lease",
};

function showStats(s) {
  const status = document.getElementById("status");
  status.textContent = s.status;
  status.className = `status ${s.status}`;
  const progress = document.getElementById("progress");
  progress.value = s.progress;
  setText(
    "progress-text",
    `${fmtCount(s.tokens_trained)} of ${fmtCount(s.token_budget)} tokens trained (${fmtPercent(s.progress)}) · ` +
      `round ${s.rounds_closed} of ${s.rounds_total} closed`,
  );
  setText("s-version", `v${s.version}`);
  setText("s-loss", fmtLoss(s.holdout_loss));
  setText("s-tps", fmtRate(s.tokens_per_second));
  setText("s-rounds", `${fmtCount(s.rounds_closed)} / ${fmtCount(s.rounds_total)}`);
  setText("s-online", fmtCount(s.volunteers_online));
  setText("s-training", fmtCount(s.volunteers_training));
  setText("s-accepted", fmtCount(s.accepted));
  setText("s-rejected", fmtCount(s.rejected));
  const rows = [["Accepted", s.accepted], ["Waiting for a replica", s.pending], ["Rejected (all reasons)", s.rejected]];
  for (const [code, n] of Object.entries(s.rejections).sort((a, b) => b[1] - a[1])) {
    rows.push([`Rejected: ${REASONS[code] || code.replaceAll("_", " ")}`, n]);
  }
  document.getElementById("outcomes").replaceChildren(...rows.map(([what, n]) => el("tr", {}, el("td", {}, what), el("td", { class: "num" }, fmtCount(n)))));
  if (campaign) {
    campaign = { ...campaign, ...s };
    showManage();
  }
}

function showManage() {
  const manage = document.getElementById("manage");
  manage.hidden = !canManage(me, campaign);
  document.getElementById("pause").disabled = campaign.status !== "active";
  document.getElementById("resume").disabled = campaign.status !== "paused";
  document.getElementById("stop").disabled = !["active", "paused"].includes(campaign.status);
}

async function showVersions() {
  const { versions } = await api(`/api/campaigns/${id}/versions`);
  const points = versions.filter((v) => v.holdout_loss !== null).map((v) => ({ x: v.version, y: v.holdout_loss }));
  lossChart(document.getElementById("chart"), points);
  document.getElementById("versions").replaceChildren(
    ...versions
      .slice()
      .reverse()
      .map((v) =>
        el(
          "tr",
          {},
          el("td", {}, `v${v.version}`),
          el("td", { class: "num" }, fmtLoss(v.holdout_loss)),
          el("td", { class: "num" }, fmtCount(v.tokens)),
          el("td", { class: "num" }, fmtCount(v.updates)),
          el("td", {}, fmtTime(v.created_at)),
        ),
      ),
  );
}

async function showLeaderboard() {
  const { leaderboard, credit_unit: unit } = await api(`/api/campaigns/${id}/leaderboard`);
  const body = document.getElementById("leaderboard");
  if (leaderboard.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No accepted updates yet.")));
  } else {
    body.replaceChildren(
      ...leaderboard.map((v) =>
        el(
          "tr",
          {},
          el("td", { class: "num" }, v.rank),
          el("td", { class: "wrap" }, v.name),
          el("td", { class: "num" }, fmtCount(v.tokens)),
          el("td", { class: "num" }, fmtCount(v.units)),
          el("td", { class: "num" }, fmtCredit(v.credit)),
          el("td", { class: "num" }, fmtCredit(v.recent_credit)),
        ),
      ),
    );
  }
  setText("credit-unit", `Credit is in ${unit}.`);
}

// An ε from the API: null stands for infinity (no noise), which JSON can't write.
function fmtEpsilon(x) {
  return x === null ? "∞" : x >= 100 ? fmtCount(Math.round(x)) : x.toFixed(2);
}

// A term of the spec as written (1, 0.5, 1e-5), without float noise such as 0.30000000000000004.
function fmtTerm(x) {
  return x !== 0 && Math.abs(x) < 0.001 ? x.toExponential() : String(Number(x.toPrecision(6)));
}

async function showPrivacy() {
  if (campaign.spec?.data !== "volunteer") return;
  const p = await api(`/api/campaigns/${id}/privacy`);
  document.getElementById("privacy").hidden = false;
  const noNoise = p.noise_multiplier === 0;
  const budget = p.epsilon_budget;
  const allowed = p.updates_allowed;
  document.getElementById("privacy-promise").hidden = noNoise;
  document.getElementById("privacy-none").hidden = !noNoise;
  setText("p-clip", fmtTerm(p.clip_norm));
  setText("p-z", fmtTerm(p.noise_multiplier));
  setText("p-std", fmtTerm(p.noise_std));
  setText("p-delta", fmtTerm(p.delta));
  setText("p-budget", budget === null ? "no limit" : `ε = ${fmtTerm(budget)}`);
  setText("p-allowed", allowed === null ? "no limit" : fmtCount(allowed));
  const terms = noNoise
    ? ""
    : `Each update is clipped to L2 norm ${fmtTerm(p.clip_norm)} and gets Gaussian noise of standard deviation ` +
      `${fmtTerm(p.noise_std)} on every value, on the volunteer's computer. One update spends ε = ` +
      `${fmtEpsilon(p.epsilon_per_update)} at δ = ${fmtTerm(p.delta)}, and each further one adds to it. `;
  const limit =
    budget === null
      ? "The campaign sets no ε budget: a volunteer may send any number of updates, and sees what they spent."
      : `No volunteer spends more than ε = ${fmtTerm(budget)}: after ${fmtCount(allowed)} updates neither this ` +
        "coordinator nor the volunteer's app lets another one go.";
  setText("privacy-terms", terms + limit);
  const body = document.getElementById("privacy-rows");
  if (p.volunteers.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No volunteer has sent an update yet.")));
  } else {
    body.replaceChildren(
      ...p.volunteers.map((v) =>
        el(
          "tr",
          {},
          el("td", { class: "wrap" }, v.name || v.volunteer_id),
          el("td", { class: "num" }, allowed === null ? fmtCount(v.updates) : `${fmtCount(v.updates)} of ${fmtCount(allowed)}`),
          el("td", { class: "num" }, fmtEpsilon(v.epsilon)),
          el("td", { class: "num" }, budget === null || v.epsilon === null ? "–" : fmtPercent(v.epsilon / budget)),
        ),
      ),
    );
  }
  const shown = p.volunteer_count > p.volunteers.length ? `The ${fmtCount(p.volunteers.length)} of ${fmtCount(p.volunteer_count)} volunteers with the most updates. ` : "";
  setText("privacy-note", `${shown}Every update a volunteer sent counts, accepted or not.`);
}

async function showRounds() {
  const { rounds } = await api(`/api/campaigns/${id}/rounds`);
  const body = document.getElementById("rounds");
  const recent = rounds.slice(-10).reverse();
  if (recent.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No round has opened yet.")));
    return;
  }
  body.replaceChildren(
    ...recent.map((r) =>
      el(
        "tr",
        {},
        el("td", { class: "num" }, r.number),
        el("td", { class: "num" }, `v${r.version}`),
        el("td", {}, r.status),
        el("td", {}, fmtTime(r.opened_at)),
        el("td", {}, r.closed_at ? fmtTime(r.closed_at) : "–"),
        el("td", {}, r.close_reason || "–"),
      ),
    ),
  );
}

function showModel(c) {
  const weights = document.getElementById("download-weights");
  weights.href = `/api/campaigns/${id}/checkpoint`;
  weights.textContent = `Download weights v${c.checkpoint.version} (safetensors, ${fmtBytes(c.checkpoint.bytes)})`;
  document.getElementById("download-tokenizer").href = `/api/campaigns/${id}/tokenizer`;
  setText("model-text", `Preset ${c.model} on dataset ${c.dataset}, updates compressed with ${c.codec}. Latest weights: version ${c.checkpoint.version}, sha256 ${c.checkpoint.sha256.slice(0, 16)}…`);
  setText("model-config", JSON.stringify({ model_config: c.model_config, spec: c.spec }, null, 2));
  const v = c.checkpoint.version;
  document.getElementById("exports").replaceChildren(
    ...EXPORTS.map(([format, label]) =>
      el("li", {}, el("a", { class: "button secondary", href: `/api/campaigns/${id}/exports/${format}?version=${v}`, download: "", "data-format": format }, `${label} (v${v})`)),
    ),
  );
}

const EXPORTS = [
  ["hf", "Hugging Face (zip)"],
  ["gguf-q8_0", "GGUF Q8_0"],
  ["gguf-f16", "GGUF f16"],
  ["onnx", "ONNX"],
];

async function tryIt(event) {
  event.preventDefault();
  const output = document.getElementById("try-output");
  const note = document.getElementById("try-note");
  const button = document.getElementById("try-go");
  const prompt = document.getElementById("try-prompt").value;
  button.disabled = true;
  note.textContent = "Generating…";
  try {
    const answer = await api(`/api/campaigns/${id}/generate`, {
      method: "POST",
      body: {
        prompt,
        max_new_tokens: Number(document.getElementById("try-tokens").value),
        temperature: Number(document.getElementById("try-temperature").value),
      },
    });
    output.replaceChildren(el("span", { class: "prompt" }, answer.prompt), el("span", { class: "continuation" }, answer.text));
    const why = { length: "reached the length", eos: "the model ended the text", time: "reached the time limit" }[answer.stopped];
    note.textContent = `Version ${answer.version}: ${answer.new_tokens} tokens in ${answer.seconds.toFixed(2)} s (${why}).`;
  } catch (error) {
    note.textContent = `Couldn't generate: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

async function load() {
  try {
    campaign = await api(`/api/campaigns/${id}`);
  } catch (error) {
    showNotice(notice, error.status === 404 ? `There is no campaign ${id}.` : `Couldn't load the campaign: ${error.message}`);
    return false;
  }
  document.title = `${campaign.name} · Commonweights`;
  setText("campaign-name", campaign.name);
  setText("description", campaign.description);
  document.getElementById("campaign").hidden = false;
  showStats(campaign);
  showModel(campaign);
  await Promise.all([showVersions(), showLeaderboard(), showRounds(), showPrivacy()]);
  return true;
}

async function act(action) {
  const result = document.getElementById("manage-result");
  if (action === "stop" && !confirm(`Stop ${campaign.name} for good? A stopped campaign can't be resumed.`)) return;
  try {
    const updated = await api(`/api/campaigns/${id}/${action}`, { method: "POST" });
    campaign = { ...campaign, ...updated };
    showStats(await api(`/api/campaigns/${id}`));
    result.textContent = `${campaign.name} is now ${updated.status}.`;
  } catch (error) {
    result.textContent = `Couldn't ${action} the campaign: ${error.message}`;
  }
}

me = await initChrome();
if (await load()) {
  for (const action of ["pause", "resume", "stop"]) document.getElementById(action).addEventListener("click", () => act(action));
  document.getElementById("try-form").addEventListener("submit", tryIt);
  const refreshAll = () => Promise.all([showVersions(), showLeaderboard(), showRounds(), showPrivacy()]).catch(() => {});
  liveStream(
    `/api/campaigns/${id}/events`,
    {
      stats: showStats,
      version: (event) => {
        announce(`Version ${event.version} evaluated: holdout loss ${fmtLoss(event.holdout_loss)}.`);
        refreshAll();
        api(`/api/campaigns/${id}`).then((c) => {
          showStats(c);
          showModel(c);
        }, () => {});
      },
      campaign: (event) => announce(`The campaign is now ${event.status}.`),
      resync: refreshAll,
    },
    document.getElementById("live"),
  );
}
