// My machines: a volunteer's account (made here, or signed in with its key), a link code for a new
// machine, every machine's state, device, unit and credit with pause/resume, and the account's team.
import { accountKey, announce, api, el, fmtCredit, fmtTime, initChrome, setAccountKey, setText, showNotice } from "./api.js";

const REFRESH_MS = 10_000;
const notice = document.getElementById("notice");
const STATE_TEXT = {
  training: "training",
  online: "waiting for work",
  offline: "offline",
  paused: "paused by you",
  banned: "banned by the admins",
};
let timer = null;
let codeExpiry = null;

const call = (path, options = {}) => api(path, { ...options, auth: accountKey() });

function fieldError(input, message) {
  const error = document.getElementById(`${input.id}-error`);
  input.setAttribute("aria-invalid", message ? "true" : "false");
  if (error) error.textContent = message || "";
  if (message) input.focus();
}

async function act(machine, action) {
  try {
    if (action === "remove") {
      if (!confirm(`Remove ${machine.name} from your account? It keeps working, unlinked, and takes its credit with it.`)) return;
      await call(`/api/account/machines/${encodeURIComponent(machine.id)}`, { method: "DELETE" });
      showNotice(notice, `${machine.name} is no longer in your account.`, "good");
    } else {
      const updated = await call(`/api/account/machines/${encodeURIComponent(machine.id)}/${action}`, { method: "POST" });
      const text = action === "pause"
        ? `${updated.name} is paused: it gives its unit back within a minute and takes no work until you resume it.`
        : `${updated.name} takes work again.`;
      showNotice(notice, text, "good");
    }
  } catch (error) {
    showNotice(notice, `Couldn't ${action} ${machine.name}: ${error.message}`);
  }
  await refresh();
}

function machineRow(m) {
  const unit = m.current_unit;
  const pause = m.paused
    ? el("button", { type: "button", class: "secondary", "aria-label": `Resume ${m.name}`, onclick: () => act(m, "resume") }, "Resume")
    : el("button", { type: "button", class: "secondary", "aria-label": `Pause ${m.name}`, onclick: () => act(m, "pause") }, "Pause");
  return el(
    "tr",
    { "data-machine": m.id },
    el("td", { class: "wrap" }, m.name, el("br"), el("span", { class: "muted" }, `${m.platform} · app ${m.client_version || "?"}`)),
    el("td", {}, el("span", { class: `status ${m.state}` }, STATE_TEXT[m.state] || m.state)),
    el("td", { class: "wrap" }, m.device),
    el("td", { class: "wrap" }, unit ? el("a", { href: `/campaigns/${unit.campaign_id}` }, unit.campaign_name) : "–",
      unit ? el("span", { class: "muted" }, ` (unit ${unit.unit_id.slice(0, 8)})`) : null),
    el("td", { class: "num" }, fmtCredit(m.credit)),
    el("td", { class: "num" }, fmtCredit(m.recent_credit)),
    el("td", {}, fmtTime(m.last_seen)),
    el("td", {}, el("div", { class: "row" }, pause,
      el("button", { type: "button", class: "link", "aria-label": `Remove ${m.name}`, onclick: () => act(m, "remove") }, "Remove"))),
  );
}

let shownTeams = "";

// The teams to join; rebuilt only when they changed, so a refresh never undoes the visitor's choice.
async function teamChoices(account) {
  const { teams } = await api("/api/teams", { auth: "" });
  const choices = teams.filter((t) => !account.team || t.id !== account.team.id);
  const shown = JSON.stringify(choices.map((t) => [t.id, t.name, t.members]));
  if (shown === shownTeams) return;
  shownTeams = shown;
  const select = document.getElementById("team-choice");
  const chosen = select.value;
  select.replaceChildren(...choices.map((t) => el("option", { value: t.id }, `${t.name} (${t.members} members)`)));
  if (choices.some((t) => String(t.id) === chosen)) select.value = chosen;
  select.disabled = choices.length === 0;
  document.querySelector("#join-form button[type=submit]").disabled = choices.length === 0;
}

function showAccount(account) {
  setText("account-title", account.name);
  const rename = document.getElementById("rename");
  if (document.activeElement !== rename) rename.value = account.name;
  setText("a-credit", fmtCredit(account.credit));
  setText("a-rac", fmtCredit(account.recent_credit));
  setText("a-machines", String(account.machine_count));
  setText("a-team", account.team ? account.team.name : "none");
  document.getElementById("machine-rows").replaceChildren(...account.machines.map(machineRow));
  document.getElementById("no-machines").hidden = account.machines.length > 0;
  const now = document.getElementById("team-now");
  now.replaceChildren(account.team
    ? el("span", {}, "You are in ", el("a", { href: `/teams?id=${account.team.id}` }, account.team.name), ".")
    : "You are in no team.");
  document.getElementById("leave-team").hidden = !account.team;
}

async function refresh() {
  try {
    const account = await call("/api/account");
    showAccount(account);
    await teamChoices(account);
    if (codeExpiry && Date.now() / 1000 > codeExpiry) {
      document.getElementById("code-box").hidden = true;
      codeExpiry = null;
    }
  } catch (error) {
    if (error.status === 401) {
      // The key stays (it is shown only once): the coordinator may be restoring its database.
      showNotice(notice, "The coordinator doesn't know this browser's account key right now. If it never comes "
        + "back, sign out of it below and create an account or sign in with another key.");
    } else {
      showNotice(notice, `Couldn't load your account: ${error.message}`);
    }
  }
}

function showWelcome() {
  clearInterval(timer);
  document.getElementById("account").hidden = true;
  document.getElementById("live").hidden = true;
  document.getElementById("welcome").hidden = false;
}

async function showSignedIn() {
  document.getElementById("welcome").hidden = true;
  document.getElementById("account").hidden = false;
  document.getElementById("live").hidden = false;
  await refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

document.getElementById("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("account-name");
  if (!input.value.trim()) return fieldError(input, "Give the account a name (1-100 characters).");
  try {
    const created = await api("/api/accounts", { method: "POST", body: { name: input.value.trim() }, auth: "" });
    setAccountKey(created.key);
    fieldError(input, "");
    document.getElementById("new-key-value").value = created.key;
    document.getElementById("new-key").hidden = false;
    announce(`Account ${created.name} created.`);
    await showSignedIn();
  } catch (error) {
    fieldError(input, error.message);
  }
});

document.getElementById("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("account-key");
  const key = input.value.trim();
  if (!key) return fieldError(input, "Paste your account key.");
  try {
    await api("/api/account", { auth: key });
  } catch (error) {
    return fieldError(input, error.status === 401 ? "No account has this key." : error.message);
  }
  setAccountKey(key);
  fieldError(input, "");
  await showSignedIn();
});

document.getElementById("forget").addEventListener("click", () => {
  if (!confirm("Sign out of this account here? You need its key to sign in again.")) return;
  setAccountKey("");
  showWelcome();
});

document.getElementById("rename-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("rename");
  if (!input.value.trim()) return fieldError(input, "Give the account a name (1-100 characters).");
  try {
    showAccount(await call("/api/account/name", { method: "POST", body: { name: input.value.trim() } }));
    fieldError(input, "");
    showNotice(notice, "Renamed.", "good");
  } catch (error) {
    fieldError(input, error.message);
  }
});

document.getElementById("replace-key").addEventListener("click", async () => {
  if (!confirm("Make a new key? Every other browser signed in with the old one must sign in again with the new one.")) return;
  try {
    const made = await call("/api/account/key", { method: "POST" });
    setAccountKey(made.key);
    document.getElementById("new-key-value").value = made.key;
    document.getElementById("new-key").hidden = false;
    showNotice(notice, "Your account has a new key (above); the old one no longer works.", "good");
  } catch (error) {
    showNotice(notice, `Couldn't make a new key: ${error.message}`);
  }
});

document.getElementById("make-code").addEventListener("click", async () => {
  try {
    const made = await call("/api/account/link-code", { method: "POST" });
    codeExpiry = made.expires_at;
    setText("link-code", made.code);
    setText("code-expiry", `Valid once, until ${new Date(made.expires_at * 1000).toLocaleTimeString()}.`);
    document.getElementById("code-box").hidden = false;
    announce(`Link code ${made.code.split("").join(" ")}`);
  } catch (error) {
    showNotice(notice, `Couldn't make a code: ${error.message}`);
  }
});

async function chooseTeam(teamId) {
  try {
    const account = await call("/api/account/team", { method: "POST", body: { team_id: teamId } });
    showAccount(account);
    await teamChoices(account);
    showNotice(notice, account.team ? `You joined ${account.team.name}.` : "You left your team.", "good");
  } catch (error) {
    showNotice(notice, `Couldn't change your team: ${error.message}`);
  }
}

document.getElementById("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = document.getElementById("team-choice").value;
  if (value) chooseTeam(Number(value));
});

document.getElementById("leave-team").addEventListener("click", () => chooseTeam(null));

document.getElementById("team-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = document.getElementById("team-name");
  const description = document.getElementById("team-description");
  if (!name.value.trim()) return fieldError(name, "Give the team a name (1-100 characters).");
  try {
    const team = await call("/api/teams", { method: "POST", body: { name: name.value.trim(), description: description.value.trim() } });
    fieldError(name, "");
    name.value = description.value = "";
    showNotice(notice, `You started ${team.name}.`, "good");
    await refresh();
  } catch (error) {
    fieldError(name, error.message);
  }
});

await initChrome();
if (accountKey()) await showSignedIn();
else showWelcome();
