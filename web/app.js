// The page: loads the exported folder (?model=URL/, default model/; ?variant=_quantized for int8), translates each
// line of the box, and draws the chosen layer and head's attention while the translation grows (what
// hf_vanilla_transformer.plot_attention draws in Python, live). Every failure is a message on the page.
import { headRows, loadTranslator } from "./translator.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const folder = new URL(params.get("model") || "model/", location.href).href.replace(/\/?$/, "/");
let translator = null;
let shown = null; // what the canvas draws: {source, target, encoderAttentions, cross}
const results = [];

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

function fillSelect(select, count, label) {
  select.replaceChildren(...[...Array(count).keys()].map((i) => new Option(`${label} ${i + 1}`, i)));
}

function draw() {
  const canvas = $("attention");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!shown) return;
  const layer = Number($("layer").value), head = Number($("head").value);
  const encoder = $("kind").value === "encoder";
  const columns = shown.source.tokens;
  const rowsLabels = encoder ? columns : shown.target;
  const rows = encoder
    ? headRows(shown.encoderAttentions[layer], head)
    : shown.cross[layer].flatMap((step) => headRows(step, head));
  const left = 110, top = 130;
  context.fillStyle = "#222";
  context.font = "bold 14px system-ui";
  context.fillText(`Layer ${layer + 1}, head ${head + 1}: ${encoder ? "encoder self-attention (source × source)"
    : "encoder–decoder attention (target × source)"}`, 4, 18);
  const cell = Math.max(6, Math.min(34, (canvas.width - left) / columns.length,
                                    (canvas.height - top) / Math.max(rows.length, 1)));
  context.font = "12px system-ui";
  context.fillStyle = "#222";
  columns.forEach((token, j) => {
    context.save();
    context.translate(left + j * cell + cell / 2, top - 6);
    context.rotate(-Math.PI / 3);
    context.fillText(token, 0, 0);
    context.restore();
  });
  rows.forEach((weights, i) => {
    context.fillStyle = "#222";
    context.textAlign = "right";
    context.fillText(rowsLabels[i] ?? "", left - 6, top + i * cell + cell * 0.7);
    context.textAlign = "left";
    weights.forEach((w, j) => {
      const shade = Math.round(255 * (1 - w));
      context.fillStyle = `rgb(${shade}, ${shade}, 255)`;
      context.fillRect(left + j * cell, top + i * cell, cell - 1, cell - 1);
    });
  });
}

function show(result) {
  shown = result;
  draw();
}

async function translateAll() {
  const lines = $("source").value.split("\n");
  if (!lines.some((line) => line.trim())) {
    say("Type a sentence to translate first (one sentence a line).", true);
    document.body.dataset.state = "error";
    return;
  }
  $("translate").disabled = true;
  $("output").replaceChildren();
  results.length = 0;
  const started = performance.now();
  let translated = 0;
  try {
    for (const [i, line] of lines.entries()) {
      const item = document.createElement("li");
      $("output").append(item);
      if (!line.trim()) continue;
      say(`Translating line ${i + 1} of ${lines.length}…`);
      const result = await translator.translate(line, async (partial) => {
        item.textContent = partial.target.join(" ");
        show(partial);
        await new Promise((resolve) => setTimeout(resolve, 0)); // let the page paint between steps
      });
      results[i] = result;
      item.textContent = result.text;
      item.dataset.line = i;
      item.onclick = () => select(i);
      select(i);
      translated++;
    }
    const seconds = (performance.now() - started) / 1000;
    say(`Done: ${translated} sentence(s) in ${seconds.toFixed(2)} s.`);
    document.body.dataset.state = "done";
  } catch (error) {
    say(error instanceof RangeError ? error.message : `Translation failed: ${error.message}`, true);
    document.body.dataset.state = "error";
  } finally {
    $("translate").disabled = false;
  }
}

function select(i) {
  for (const item of $("output").children) item.classList.toggle("selected", item.dataset.line === String(i));
  show(results[i]);
}

for (const id of ["kind", "layer", "head"]) $(id).onchange = draw;
$("translate").onclick = translateAll;

try {
  const started = performance.now();
  translator = await loadTranslator(folder, params.get("variant") || "");
  fillSelect($("layer"), translator.layers, "layer");
  $("layer").value = translator.layers - 1;
  fillSelect($("head"), translator.heads, "head");
  say(`Model loaded from ${folder} in ${((performance.now() - started) / 1000).toFixed(2)} s ` +
      `(${translator.config.src_lang ?? "source"} → ${translator.config.tgt_lang ?? "target"}).`);
  $("translate").disabled = false;
  document.body.dataset.state = "ready";
} catch (error) {
  say(`Could not load the model from ${folder}: ${error.message}`, true);
  document.body.dataset.state = "error";
}
