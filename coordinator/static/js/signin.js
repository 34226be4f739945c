// Sign in by pasting a token; it is checked against /api/me before it is kept.
import { api, initChrome, setToken, signOut } from "./api.js";

const form = document.getElementById("signin-form");
const input = document.getElementById("token");
const error = document.getElementById("token-error");

function showSignedIn(me) {
  form.hidden = true;
  document.getElementById("signed-in").hidden = false;
  document.getElementById("signed-in-text").textContent = `Signed in as ${me.label} (${me.role === "admin" ? "admin" : "project lead"}).`;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  input.removeAttribute("aria-invalid");
  const value = input.value.trim();
  if (!value) {
    input.setAttribute("aria-invalid", "true");
    error.textContent = "Paste your API token.";
    input.focus();
    return;
  }
  setToken(value);
  try {
    await api("/api/me");
  } catch (failure) {
    signOut();
    input.setAttribute("aria-invalid", "true");
    error.textContent = failure.status === 401 ? "This token isn't valid (or was revoked)." : `Couldn't sign in: ${failure.message}`;
    input.focus();
    return;
  }
  const next = new URLSearchParams(location.search).get("next");
  const me = await initChrome();
  if (next && next.startsWith("/") && !next.startsWith("//")) location.assign(next);
  else location.assign(me.role === "admin" ? "/admin" : "/lead");
});

const me = await initChrome();
if (me) showSignedIn(me);
else input.focus();
