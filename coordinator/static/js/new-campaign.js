// The campaign form. Defaults, bounds and descriptions come from the API's own OpenAPI schema of a
// campaign spec, so the form can't drift from what the server accepts; the server validates every
// value and its messages are shown next to the fields they name.
import { ApiError, api, el, fmtCount, gate, initChrome } from "./api.js";

const SECTIONS = [
  ["Campaign", [
    ["name", "Name", "text", { required: true, hint: "Letters, digits, '.', '_' or '-'; up to 64 characters." }],
    ["description", "Description", "textarea", { wide: true, hint: "What the model is for, shown on the public page." }],
    ["model", "Model preset", "select", { hint: "Bigger presets need volunteers with more memory." }],
    ["dataset", "Dataset", "select", { hint: "Prepared on this server with commonweights data prepare." }],
    ["token_budget", "Token budget", "int"],
    ["seed", "Seed", "int"],
    ["license", "Model license", "text", { hint: "e.g. apache-2.0; it goes on the exported model's card." }],
    ["data_description", "The data, in your words", "textarea", { wide: true, hint: "Sources, their licenses, filtering: for the model card." }],
  ]],
  ["Inner loop (each work unit)", [
    ["inner.steps", "Inner steps (H)", "int"],
    ["inner.batch_size", "Batch size", "int"],
    ["inner.seq_len", "Sequence length", "int"],
    ["inner.lr", "Inner learning rate (AdamW)", "float"],
    ["inner.warmup_steps", "Warm-up steps", "int"],
  ]],
  ["Outer optimizer (each round)", [
    ["outer.optimizer", "Outer optimizer", "select", { hint: "Nesterov momentum is DiLoCo's choice." }],
    ["outer.lr", "Outer learning rate", "float", { hint: "Leave empty for the optimizer's default." }],
    ["outer.momentum", "Outer momentum", "float"],
  ]],
  ["Rounds", [
    ["rounds.units_per_round", "Work units per round", "int"],
    ["rounds.min_accepted", "Accepted updates that close a round", "int"],
    ["rounds.deadline_s", "Round deadline (seconds)", "float"],
    ["rounds.lease_s", "Lease per unit (seconds)", "float"],
    ["rounds.staleness_bound", "Staleness bound (versions)", "int"],
  ]],
  ["Compression and checks", [
    ["codec", "Update codec", "select", { hint: "How volunteers compress their updates; int8 is 4× smaller than fp32." }],
    ["download_codec", "Download codec", "select", { hint: "How each new version reaches volunteers that hold the last one: a delta in this codec." }],
    ["validation.replication_rate", "Replication rate", "float", { hint: "Share of units computed twice and compared." }],
  ]],
];

const form = document.getElementById("spec-form");
const summary = document.getElementById("summary");
const fieldId = (path) => `f-${path.replace(".", "-")}`;

function schemaOf(spec, path) {
  return path.split(".").reduce((s, key) => s.properties[key], spec);
}

function boundsHint(schema) {
  const lo = schema.minimum ?? schema.exclusiveMinimum;
  let hi = schema.maximum ?? schema.exclusiveMaximum;
  if (hi > Number.MAX_SAFE_INTEGER) hi = undefined; // e.g. the seed's 2^63 - 1: no useful upper bound
  const above = schema.exclusiveMinimum !== undefined;
  const below = schema.exclusiveMaximum !== undefined;
  if (lo !== undefined && hi !== undefined) return `${above ? "Above" : "From"} ${lo} ${below ? "up to (not including)" : "to"} ${hi}.`;
  if (lo !== undefined) return above ? `Greater than ${lo}.` : `At least ${lo}.`;
  return "";
}

function control(path, kind, schema, choices) {
  const id = fieldId(path);
  const describedBy = `${id}-hint ${id}-error`;
  const common = { id, name: path, "aria-describedby": describedBy };
  if (kind === "select") {
    const select = el("select", common);
    for (const [value, label] of choices[path] || []) select.append(el("option", { value }, label));
    return select;
  }
  if (kind === "textarea") return el("textarea", { ...common, rows: 2, maxlength: 2000 });
  if (kind === "text") return el("input", { ...common, type: "text", autocomplete: "off", spellcheck: "false" });
  return el("input", { ...common, type: "number", step: "any", inputmode: kind === "int" ? "numeric" : "decimal" });
}

function build(spec, choices) {
  const holder = document.getElementById("fieldsets");
  for (const [legend, fields] of SECTIONS) {
    const grid = el("div", { class: "fields" });
    for (const [path, label, kind, extra = {}] of fields) {
      const schema = schemaOf(spec, path);
      const id = fieldId(path);
      const input = control(path, kind, schema, choices);
      input.dataset.kind = kind;
      if (extra.required) input.setAttribute("aria-required", "true");
      const fallback = typeof schema.default === "object" ? undefined : schema.default;
      if (fallback !== undefined && fallback !== null) input.value = String(fallback);
      const hint = [kind === "select" ? "" : boundsHint(schema), extra.hint || schema.description || ""].filter(Boolean).join(" ");
      grid.append(
        el(
          "div",
          { class: `field${extra.wide ? " wide" : ""}` },
          el("label", { for: id }, label),
          input,
          el("p", { class: "hint", id: `${id}-hint` }, hint),
          el("p", { class: "error", id: `${id}-error` }),
        ),
      );
    }
    holder.append(el("fieldset", {}, el("legend", {}, legend), grid));
  }
}

function clearErrors() {
  summary.hidden = true;
  summary.replaceChildren();
  for (const node of form.querySelectorAll(".error")) node.textContent = "";
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

function showErrors(fieldErrors, others) {
  const items = [];
  for (const { field, message } of fieldErrors) {
    const input = document.getElementById(fieldId(field));
    if (input) {
      input.setAttribute("aria-invalid", "true");
      const error = document.getElementById(`${fieldId(field)}-error`);
      error.textContent = error.textContent ? `${error.textContent} ${message}` : message;
      items.push(el("li", {}, el("a", { href: `#${fieldId(field)}` }, message)));
    } else {
      items.push(el("li", {}, message));
    }
  }
  for (const message of others) items.push(el("li", {}, message));
  summary.replaceChildren(el("p", {}, `The campaign wasn't posted: ${items.length === 1 ? "one value needs" : `${items.length} values need`} attention.`), el("ul", {}, ...items));
  summary.hidden = false;
  summary.focus();
}

// The spec as JSON, or the per-field problems the browser already knows of (text in a number box).
function collect() {
  const spec = {};
  const problems = [];
  for (const input of form.querySelectorAll("[name]")) {
    const path = input.name;
    const kind = input.dataset.kind;
    if (input.validity && input.validity.badInput) {
      problems.push({ field: path, message: `${path}: enter a number` });
      continue;
    }
    const raw = input.value.trim();
    if (raw === "" && path !== "name") continue; // the server's default applies
    const value = kind === "int" || kind === "float" ? Number(raw) : raw;
    const keys = path.split(".");
    let target = spec;
    for (const key of keys.slice(0, -1)) target = target[key] ??= {};
    target[keys.at(-1)] = value;
  }
  return { spec, problems };
}

function estimate() {
  const n = (path) => Number(document.getElementById(fieldId(path)).value) || 0;
  const perUnit = n("inner.steps") * n("inner.batch_size") * n("inner.seq_len");
  const perRound = perUnit * n("rounds.units_per_round");
  const rounds = perRound > 0 ? Math.max(1, Math.ceil(n("token_budget") / perRound)) : 0;
  document.getElementById("estimate").textContent = perUnit > 0
    ? `Each work unit trains ${fmtCount(perUnit)} tokens; the budget pays for about ${fmtCount(rounds)} rounds.`
    : "";
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const { spec, problems } = collect();
  if (problems.length) {
    showErrors(problems, []);
    return;
  }
  const button = document.getElementById("submit");
  button.disabled = true;
  try {
    const created = await api("/api/campaigns", { method: "POST", body: spec });
    location.assign(`/campaigns/${created.id}`);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    const mapped = new Set(error.fieldErrors.map((e) => e.message));
    const others = error.problems.filter((p) => !mapped.has(p));
    if (!error.fieldErrors.length && !others.length) others.push(error.message);
    showErrors(error.fieldErrors, others);
  } finally {
    button.disabled = false;
  }
}

const me = await initChrome();
if (gate(me, ["lead", "admin"], document.getElementById("gate"))) {
  const [doc, options, datasets] = await Promise.all([api("/api/openapi.json"), api("/api/campaign-options"), api("/api/datasets")]);
  const choices = {
    model: options.models.map((m) => [m.name, `${m.name} — ${fmtCount(m.parameters)} parameters, context ${m.max_seq_len}`]),
    dataset: datasets.details.map((d) => [d.name, d.train_tokens === null ? d.name : `${d.name} — ${fmtCount(d.train_tokens)} training tokens, vocabulary ${fmtCount(d.vocab_size)}`]),
    "outer.optimizer": options.optimizers.map((o) => [o.name, `${o.name} (default lr ${o.lr})`]),
    codec: options.codecs.map((c) => [c, c]),
    download_codec: options.codecs.map((c) => [c, c]),
  };
  build(doc.components.schemas.CampaignSpec, choices);
  document.getElementById(fieldId("codec")).value = "int8";
  document.getElementById(fieldId("download_codec")).value = "int8";
  if (!datasets.datasets.length) showErrors([], ["This coordinator has no prepared dataset; start it with --dataset NAME=DIR."]);
  form.hidden = false;
  form.addEventListener("input", estimate);
  form.addEventListener("submit", submit);
  estimate();
  document.getElementById(fieldId("name")).focus();
}
