// The team and volunteer leaderboards, and one team's members when the address names it (?id=N).
import { api, el, fmtCount, fmtCredit, initChrome, setText, showNotice } from "./api.js";

const notice = document.getElementById("notice");

function teamRow(team, rank) {
  return el(
    "tr",
    { "data-team": team.id },
    el("td", { class: "num" }, String(rank + 1)),
    el("td", { class: "wrap" }, el("a", { href: `/teams?id=${team.id}` }, team.name)),
    el("td", { class: "num" }, fmtCount(team.members)),
    el("td", { class: "num" }, fmtCount(team.machine_count)),
    el("td", { class: "num" }, fmtCredit(team.credit)),
    el("td", { class: "num" }, fmtCredit(team.recent_credit)),
  );
}

async function showTeam(id) {
  const team = await api(`/api/teams/${id}`, { auth: "" });
  setText("team-title", team.name);
  setText("team-description", team.description || "");
  document.getElementById("member-rows").replaceChildren(
    ...team.accounts.map((a) =>
      el("tr", {}, el("td", { class: "wrap" }, a.name), el("td", { class: "num" }, fmtCount(a.machine_count)),
        el("td", { class: "num" }, fmtCredit(a.credit)), el("td", { class: "num" }, fmtCredit(a.recent_credit)))),
  );
  document.getElementById("team").hidden = false;
}

function accountRow(account, rank) {
  return el(
    "tr",
    {},
    el("td", { class: "num" }, String(rank + 1)),
    el("td", { class: "wrap" }, account.name),
    el("td", { class: "num" }, fmtCount(account.machine_count)),
    el("td", { class: "num" }, fmtCredit(account.credit)),
    el("td", { class: "num" }, fmtCredit(account.recent_credit)),
  );
}

await initChrome();
try {
  const { accounts } = await api("/api/accounts", { auth: "" });
  document.getElementById("account-rows").replaceChildren(...accounts.map(accountRow));
  document.getElementById("no-accounts").hidden = accounts.length > 0;
  const { teams } = await api("/api/teams", { auth: "" });
  document.getElementById("team-rows").replaceChildren(...teams.map(teamRow));
  document.getElementById("no-teams").hidden = teams.length > 0;
  const id = new URLSearchParams(location.search).get("id");
  if (id && /^[0-9]{1,18}$/.test(id)) await showTeam(id);
} catch (error) {
  showNotice(notice, `Couldn't load the teams: ${error.message}`);
}
