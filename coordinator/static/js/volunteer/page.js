// The /volunteer page: starts the training worker, shows what it does, and pauses it while the tab is
// hidden or the device is on battery. The volunteer's token lives in localStorage.
import { initChrome } from "../api.js";

const TOKEN = "commonweights.volunteer.token";
const UNIT = "commonweights.volunteer.unit";
const $ = (id) => document.getElementById(id);

const version = new URL(import.meta.url).searchParams.get("v") || "0.0.0";
const cores = navigator.hardwareConcurrency || 1;
let worker = null;
let userPaused = false;
let onBattery = false;
let accepted = 0;
let evaluations = 0;
let credit = null;

function log(text) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(item);
  while ($("log").children.length > 50) $("log").lastChild.remove();
}

function showState(text) {
  $("state").textContent = text;
  document.body.dataset.volunteerState = text.split(":")[0];
}

function applyPause() {
  if (!worker) return;
  const why = userPaused ? "paused" : document.hidden ? "paused: the tab is hidden" : onBattery ? "paused: on battery" : null;
  worker.postMessage({ type: why ? "pause" : "resume" });
  if (why) showState(why);
}

function platform() {
  const raw = navigator.userAgentData?.platform || navigator.platform || "unknown";
  return `web-${raw}`.replace(/[^\x20-\x7e]/g, "").slice(0, 100);
}

function start() {
  const threads = Number($("threads").value);
  worker = new Worker(new URL(`./worker.js?v=${version}`, import.meta.url), { type: "module" });
  worker.onmessage = ({ data }) => handle(data);
  worker.onerror = (event) => {
    $("notice").textContent = `The training worker failed: ${event.message}`;
    showState("stopped");
  };
  const memory = Math.min(4, (navigator.deviceMemory || 4) / 2) * 2 ** 30;
  worker.postMessage({
    type: "start",
    url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`,
    token: localStorage.getItem(TOKEN),
    name: `Browser (${platform()})`.slice(0, 120),
    threads,
    cpuShare: Number($("cpu-share").value),
    clientVersion: version,
    platform: platform(),
    deviceName: `browser wasm, ${threads} thread${threads > 1 ? "s" : ""}`,
    memoryBytes: memory,
    leftover: JSON.parse(localStorage.getItem(UNIT) || "null"),
  });
  $("start").hidden = true;
  $("pause").hidden = false;
  applyPause();
}

function handle(message) {
  switch (message.type) {
    case "status":
      document.body.dataset.workerState = message.state;
      if (!(userPaused || document.hidden || onBattery) || message.state === "stopped") {
        showState(message.detail ? `${message.state}: ${message.detail}` : message.state);
      }
      break;
    case "token":
      if (message.token) localStorage.setItem(TOKEN, message.token);
      else localStorage.removeItem(TOKEN);
      break;
    case "welcome":
      credit = message.credit;
      $("credit").textContent = credit.toFixed(2);
      document.body.dataset.volunteerId = message.volunteerId;
      log(`connected as volunteer ${message.volunteerId}`);
      break;
    case "unit":
      localStorage.setItem(UNIT, JSON.stringify({ unit_id: message.unitId, lease_id: message.leaseId }));
      $("campaign").textContent = message.campaign;
      $("step").textContent = `0 / ${message.steps}`;
      $("unit-progress").value = 0;
      log(`${message.kind} unit ${message.unitId.slice(0, 8)} of ${message.campaign}: ${message.steps} ${message.kind === "train" ? "steps" : "batches"}`);
      break;
    case "download":
      $("unit-progress").value = 0;
      $("step").textContent = `downloading ${((100 * message.done) / message.total).toFixed(0)} %`;
      break;
    case "checkpoint":
      window.dispatchEvent(new CustomEvent("volunteer-checkpoint", { detail: message })); // for tests and embedders
      log(`version ${message.version} rebuilt from ${message.deltas} delta${message.deltas > 1 ? "s" : ""}: ${(message.bytes / 1e6).toFixed(2)} MB instead of ${(message.size / 1e6).toFixed(2)} MB`);
      break;
    case "step":
      window.dispatchEvent(new CustomEvent("volunteer-step", { detail: message })); // for benchmarks and embedders
      $("unit-progress").value = message.step / message.steps;
      $("step").textContent = `${message.step} / ${message.steps}`;
      $("loss").textContent = message.loss.toFixed(4);
      if (message.kind === "train") $("rate").textContent = message.tokensPerSecond.toFixed(0);
      break;
    case "result":
      if (message.status === "accepted" && message.kind !== "train") evaluations += 1;
      else if (message.status === "accepted") accepted += 1;
      credit = (credit ?? 0) + message.credit;
      $("accepted").textContent = String(accepted);
      $("evaluations").textContent = String(evaluations);
      $("credit").textContent = credit.toFixed(2);
      log(`${{ train: "update", evaluate: "evaluation", check: "check" }[message.kind]} ${message.status}${message.code ? ` (${message.code})` : ""}, credit ${message.credit.toFixed(3)}`);
      break;
    case "unit-done":
      localStorage.removeItem(UNIT);
      break;
    case "error":
      log(message.message);
      break;
  }
}

for (let n = 1; n <= Math.min(cores, 8); n *= 2) $("threads").append(new Option(String(n), String(n), false, false));
$("threads").value = String(Math.min(2, cores) >= 2 && crossOriginIsolated ? 2 : 1);
$("isolation").textContent = crossOriginIsolated
  ? `Cross-origin isolated: WebAssembly threads available (${cores} cores).`
  : "Not cross-origin isolated: training runs on one thread.";
initChrome();
$("start").addEventListener("click", start);
$("pause").addEventListener("click", () => {
  userPaused = !userPaused;
  $("pause").textContent = userPaused ? "Resume" : "Pause";
  applyPause();
});
$("cpu-share").addEventListener("change", () => worker?.postMessage({ type: "cpu", share: Number($("cpu-share").value) }));
document.addEventListener("visibilitychange", applyPause);
// Leaving the page: the worker stops at the next step and gives its unit back, if it has the time.
window.addEventListener("pagehide", () => worker?.postMessage({ type: "stop" }));
navigator.getBattery?.().then((battery) => {
  const check = () => {
    onBattery = !battery.charging;
    applyPause();
  };
  battery.addEventListener("chargingchange", check);
  check();
});
