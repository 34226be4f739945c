// The dashboard's client for the coordinator's REST API, plus what every page shares: the sign-in
// state in the header, DOM and number helpers, and the screen-reader announcer.
// The token lives in sessionStorage (gone when the tab closes) and travels as a Bearer header; the
// server enforces roles, so hiding controls here is only a convenience.

const TOKEN_KEY = "commonweights.token";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the server answered ${status}`);
    this.status = status;
    this.code = error.code || "http_" + status;
    this.problems = error.problems || [];
    this.fieldErrors = error.field_errors || [];
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  whoPromise = null;
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  whoPromise = null;
}

// A volunteer's account key: kept in localStorage (this browser remembers the account, as an app would),
// sent only by the account pages (`auth: accountKey()`).
const ACCOUNT_KEY = "commonweights.account";

export function accountKey() {
  return localStorage.getItem(ACCOUNT_KEY) || "";
}

export function setAccountKey(value) {
  if (value) localStorage.setItem(ACCOUNT_KEY, value);
  else localStorage.removeItem(ACCOUNT_KEY);
}

// `auth`: the Bearer to send instead of the staff token (an account key).
export async function api(path, { method = "GET", body, auth } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = auth ?? token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, { error: { code: "offline", message: "the coordinator can't be reached; check your connection" } });
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

let whoPromise = null;

// {id, role, label} of the signed-in token, or null.
export function whoami() {
  if (!token()) return Promise.resolve(null);
  whoPromise ??= api("/api/me").catch((error) => {
    if (error.status === 401) signOut();
    return null;
  });
  return whoPromise;
}

export function canManage(me, campaign) {
  return Boolean(me && (me.role === "admin" || campaign.owner === `${me.role}:${me.id}`));
}

// Header chrome: current page, role-specific links, who is signed in.
export async function initChrome() {
  for (const link of document.querySelectorAll("header.site nav a")) {
    if (link.getAttribute("href") === location.pathname) link.setAttribute("aria-current", "page");
  }
  const me = await whoami();
  for (const item of document.querySelectorAll("[data-role]")) {
    item.hidden = !(me && item.dataset.role.split(" ").includes(me.role));
  }
  const who = document.getElementById("session-who");
  const signin = document.getElementById("signin-link");
  const signout = document.getElementById("signout");
  signin.hidden = Boolean(me);
  who.hidden = signout.hidden = !me;
  if (me) who.textContent = `${me.label} (${me.role === "admin" ? "admin" : "project lead"})`;
  signout.onclick = () => {
    signOut();
    location.assign("/");
  };
  return me;
}

// A gate for pages that need a role: returns true when the visitor may use the page, otherwise
// explains why in `where` (a sign-in link keeps the page to return to).
export function gate(me, roles, where) {
  if (me && roles.includes(me.role)) return true;
  const need = roles.includes("lead") ? "a project-lead or admin token" : "an admin token";
  where.replaceChildren(
    el("p", {}, me ? `You are signed in as ${me.role}; this page needs ${need}.` : `This page needs ${need}. `),
    el("p", {}, el("a", { href: `/signin?next=${encodeURIComponent(location.pathname)}`, class: "button" }, "Sign in")),
  );
  where.hidden = false;
  return false;
}

// el("a", {href: "/x", class: "y"}, "text", child...) — text goes in as text, never as HTML.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function setText(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text;
}

const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });
const whole = new Intl.NumberFormat("en");

export function fmtCount(n) {
  return n === null || n === undefined ? "–" : n >= 10000 ? compact.format(n) : whole.format(n);
}

export function fmtLoss(x) {
  return x === null || x === undefined ? "–" : x.toFixed(3);
}

export function fmtRate(x) {
  return x === null || x === undefined ? "–" : x >= 100 ? whole.format(Math.round(x)) : x.toFixed(1);
}

export function fmtCredit(x) {
  return x === null || x === undefined ? "–" : x >= 100 ? whole.format(Math.round(x)) : x.toPrecision(3);
}

export function fmtPercent(x) {
  return `${(100 * x).toFixed(x < 0.1 ? 1 : 0)}%`;
}

export function fmtTime(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

export function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// Say something to screen-reader users without moving focus.
export function announce(text) {
  const node = document.getElementById("announce");
  if (node) node.textContent = text;
}

export function showNotice(node, text, kind = "bad") {
  node.className = `notice ${kind}`;
  node.textContent = text;
}

// An EventSource with a visible (and announced) live/reconnecting indicator.
export function liveStream(path, handlers, indicator) {
  const source = new EventSource(path);
  const state = (on, text) => {
    if (!indicator) return;
    indicator.classList.toggle("on", on);
    indicator.textContent = text;
  };
  state(false, "Connecting…");
  source.onopen = () => state(true, "Live");
  source.onerror = () => state(false, "Reconnecting…");
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => handler(JSON.parse(event.data)));
  }
  return source;
}
