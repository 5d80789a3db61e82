// The page: loads the exported folder (?model=URL/, default model/; ?variant=_quantized for int8; ?lang=zh for
// Chinese), translates each line of the box with §6.1's beam search and greedily, and follows the chosen line
// through every stage of the model (translator.js reads them from the graphs, draw.js draws them). Every failure
// is a message on the page.
import { drawBars, drawBeamTree, drawEmbeddingMap, drawLabelled, drawSmall } from "./draw.js";
import { initialLanguage, setLanguage, t } from "./i18n.js";
import { headRows, loadTranslator } from "./translator.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const folder = new URL(params.get("model") || "model/", location.href).href.replace(/\/?$/, "/");
let translator = null;
let message = { key: "loading", values: {}, error: false };
let selected = -1;
const results = [];
const timings = []; // per translated line: milliseconds decoding (greedy and beam) and drawing (the first line)
window.pageTimings = timings;

function say(key, values = {}, error = false) {
  message = { key, values, error };
  $("message").textContent = t(key, values);
  $("message").className = error ? "error" : "";
}

function chooseLanguage(code) {
  setLanguage(code);
  for (const button of document.querySelectorAll("[data-lang]")) {
    button.setAttribute("aria-pressed", String(button.dataset.lang === code));
  }
  const url = new URL(location.href);
  url.searchParams.set("lang", code);
  history.replaceState(null, "", url);
  say(message.key, message.values, message.error);
  if (selected >= 0) render(results[selected]);
}

/** One of the three attentions: its layers and heads, the rows it draws per layer and head, and the labels of rows
 * and columns. */
function attentionRows(result, kind) {
  const { source, greedy } = result;
  if (kind === "encoder") {
    return { layers: translator.encoderLayers, heads: translator.config.encoder_attention_heads,
             rowLabels: source.pieces, columnLabels: source.pieces,
             rows: (l, h) => headRows(result.encoderAttentions[l], h) };
  }
  const decoder = { layers: translator.layers, heads: translator.heads };
  if (kind === "decoder") { // row s: step s's weights over positions 0..s; later positions masked
    const inputs = translator.pieces(greedy.ids.slice(0, -1)); // what the decoder read at each step
    return { ...decoder, rowLabels: inputs, columnLabels: inputs,
             rows: (l, h) => greedy.self[l].map((step) => headRows(step, h)[0]) };
  }
  return { ...decoder, rowLabels: greedy.target, columnLabels: source.pieces,
           rows: (l, h) => greedy.cross[l].map((step) => headRows(step, h)[0]) };
}

function grid(kind, result) {
  const element = $(`grid-${kind}`);
  const { layers, heads, rowLabels, columnLabels, rows } = attentionRows(result, kind);
  const width = element.parentElement.clientWidth - 90;
  const size = Math.max(44, Math.min(96, Math.floor(width / heads) - 10));
  const aspect = rowLabels.length / Math.max(columnLabels.length, 1);
  element.style.gridTemplateColumns = `max-content repeat(${heads}, ${size}px)`;
  const cells = [document.createElement("span")];
  for (let h = 0; h < heads; h++) {
    const label = document.createElement("span");
    label.className = "col-label";
    label.textContent = t("head", { head: h + 1 });
    cells.push(label);
  }
  for (let l = 0; l < layers; l++) {
    const label = document.createElement("span");
    label.className = "row-label";
    label.textContent = t("layer", { layer: l + 1 });
    cells.push(label);
    for (let h = 0; h < heads; h++) {
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-label", t("enlarge", { layer: l + 1, head: h + 1 }));
      const canvas = document.createElement("canvas");
      drawSmall(canvas, rows(l, h), columnLabels.length, size, Math.max(12, Math.round(size * Math.min(aspect, 2))));
      button.append(canvas);
      button.onclick = () => zoom(`${t(`${kind}Title`).replace(/^\d+ · /, "")} · ${t("layer", { layer: l + 1 })}, ` +
                                  t("head", { head: h + 1 }), rows(l, h), rowLabels, columnLabels, button);
      cells.push(button);
    }
  }
  element.replaceChildren(...cells);
}

function zoom(title, rows, rowLabels, columnLabels, opener) {
  $("zoom-title").innerHTML = title;
  const dialog = $("zoom");
  dialog.showModal();
  drawLabelled($("zoom-canvas"), rows, rowLabels, columnLabels,
               { maxWidth: Math.min(900, dialog.clientWidth - 40), maxCell: 36 });
  dialog.onclose = () => opener.focus();
}

function render(result) {
  const { source } = result;
  $("stages").hidden = $("contents").hidden = false;
  $("tokens").replaceChildren(...source.ids.map((id, i) => {
    const token = document.createElement("div");
    token.className = "token" + (id === translator.config.eos_token_id ? " special" : "");
    token.innerHTML = '<span class="piece"></span><span class="id"></span>';
    token.firstChild.textContent = source.pieces[i];
    token.lastChild.textContent = id;
    return token;
  }));
  const width = $("stage-embeddings").clientWidth - 50;
  drawEmbeddingMap($("embedding-map"), result.embeddingMap, translator.vocabulary, source.ids,
                   Math.min(340, width));
  drawLabelled($("embedding-vectors"), result.embeddings, source.pieces, result.embeddings[0].map(() => ""),
               { maxWidth: Math.max(280, width - (width > 600 ? 360 : 0)), maxCell: 4, rowHeight: 18,
                 diverging: true });
  if (result.positions) {
    drawLabelled($("positions"), result.positions, result.positions.map((_, i) => String(i)),
                 result.positions[0].map(() => ""), { maxWidth: width, maxCell: 4, rowHeight: 14, diverging: true });
  } else {
    $("positions").replaceWith(Object.assign(document.createElement("p"), {
      id: "positions", textContent: t("noPositions", { kind: translator.config.position_embedding_type }) }));
  }
  for (const kind of ["encoder", "decoder", "cross"]) grid(kind, result);
  const { greedy, beam } = result;
  $("steps").replaceChildren(...greedy.steps.map((step, s) => {
    const card = document.createElement("article");
    card.className = "step-card";
    const heading = document.createElement("h3");
    heading.textContent = `${t("step", { step: s + 1 })} · ` +
      (s ? t("after", { prefix: translator.decode(greedy.ids.slice(0, s + 1)) }) : t("start"));
    const bars = document.createElement("div");
    drawBars(bars, step.topk, step.chosen);
    card.append(heading, bars);
    return card;
  }));
  drawBeamTree($("beam"), beam, { caption: t("beamTitle"), step: (s) => (s ? String(s) : ""),
                                  logp: t("logp"), score: t("score") }, $("beam").clientWidth);
  $("beam-result").textContent = t("beamResult", { text: beam.text, score: beam.score.toFixed(3) });
}

function select(i) {
  selected = i;
  for (const item of $("output").children) item.classList.toggle("selected", item.dataset.line === String(i));
  render(results[i]);
}

function lineItem(i) {
  const item = document.createElement("li");
  item.innerHTML = '<span class="translation"></span><span class="greedy"><b></b><span></span></span>';
  item.dataset.line = i;
  item.tabIndex = 0;
  item.onclick = () => select(i);
  item.onkeydown = (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      select(i);
    }
  };
  return item;
}

async function translateAll() {
  const lines = $("source").value.split("\n");
  if (!lines.some((line) => line.trim())) {
    say("empty", {}, true);
    document.body.dataset.state = "error";
    return;
  }
  $("translate").disabled = true;
  $("output").replaceChildren();
  results.length = timings.length = 0;
  selected = -1;
  const started = performance.now();
  let translated = 0;
  try {
    for (const [i, line] of lines.entries()) {
      const item = lineItem(i);
      $("output").append(item);
      if (!line.trim()) continue;
      say("translating", { line: i + 1, lines: lines.length });
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the page paint between lines
      const decoding = performance.now();
      const result = await translator.explain(line);
      const drawing = performance.now();
      results[i] = result;
      item.querySelector(".translation").textContent = result.beam.text;
      item.dataset.beam = result.beam.text;
      item.dataset.greedy = result.greedy.text;
      item.querySelector(".greedy b").textContent = t("greedyLabel");
      item.querySelector(".greedy span").textContent = result.greedy.text;
      if (translated++ === 0) select(i);
      timings.push({ decode: drawing - decoding, draw: performance.now() - drawing });
    }
    say("done", { count: translated, seconds: ((performance.now() - started) / 1000).toFixed(2) });
    document.body.dataset.state = "done";
  } catch (error) {
    if (error instanceof RangeError) say("tooLong", error.details, true);
    else say("failed", { error: error.message }, true);
    document.body.dataset.state = "error";
  } finally {
    $("translate").disabled = false;
  }
}

/** What the page shows of line `i`, as plain numbers (the browser test compares them with PyTorch's). */
window.pageStages = (i) => {
  const result = results[i];
  const kinds = Object.fromEntries(["encoder", "decoder", "cross"].map((kind) => {
    const { layers, heads, rows } = attentionRows(result, kind);
    return [kind, [...Array(layers).keys()].map((l) => [...Array(heads).keys()].map((h) => rows(l, h)))];
  }));
  return {
    sourceIds: result.source.ids, greedyIds: result.greedy.ids, beamIds: result.beam.ids,
    beamScore: result.beam.score, embeddings: result.embeddings, positions: result.positions,
    embeddingMap: result.source.ids.map((id) => [result.embeddingMap[2 * id], result.embeddingMap[2 * id + 1]]),
    topk: result.greedy.steps.map((step) => step.topk.map(({ id, probability }) => [id, probability])),
    ...kinds,
  };
};

for (const button of document.querySelectorAll("[data-lang]")) {
  button.onclick = () => chooseLanguage(button.dataset.lang);
}
$("translate").onclick = translateAll;
$("zoom-close").onclick = () => $("zoom").close();
chooseLanguage(initialLanguage(params));

try {
  const started = performance.now();
  translator = await loadTranslator(folder, params.get("variant") || "");
  say("loaded", { folder, seconds: ((performance.now() - started) / 1000).toFixed(2),
                  source: translator.config.src_lang ?? "source", target: translator.config.tgt_lang ?? "target" });
  $("translate").disabled = false;
  document.body.dataset.state = "ready";
} catch (error) {
  say("loadFailed", { folder, error: error.message }, true);
  document.body.dataset.state = "error";
}
