// The page's pictures: heat maps of attention weights and vectors, the embedding map, the next-token bars and the
// beam search tree. Plain canvas and SVG; colours come from the page's CSS variables.
import { topIndices } from "./translator.js";

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/** [r, g, b] of the colour `hex` (#rrggbb). */
function rgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

/** A sequential colour for w in [0, 1]: the page background to the accent. */
function sequential(w, low, high) {
  return low.map((l, c) => Math.round(l + (high[c] - l) * Math.min(1, Math.max(0, w))));
}

/** A canvas sized for the device's pixels, `width` × `height` CSS pixels, and its 2-D context. */
function sizedCanvas(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  return context;
}

/** The cells of `rows` (arrays of numbers; a missing cell is hidden, drawn hatched) as an image of one pixel a
 * cell. `diverging`: values coloured blue below 0 and orange above, scaled by the largest magnitude. */
function cellImage(rows, columns, diverging) {
  const image = new ImageData(columns, rows.length);
  const [paper, accent, warm, hidden] = ["--paper", "--accent", "--warm", "--hidden"].map((name) => rgb(css(name)));
  let scale = 1;
  if (diverging) scale = Math.max(1e-9, ...rows.flatMap((row) => row.map(Math.abs)));
  rows.forEach((row, i) => {
    for (let j = 0; j < columns; j++) {
      const at = 4 * (i * columns + j);
      const w = row[j];
      let colour;
      if (w === undefined) colour = hidden; // masked (§3.2.3): the hidden future
      else if (diverging) colour = sequential(Math.abs(w) / scale, paper, w < 0 ? accent : warm);
      else colour = sequential(w, paper, accent);
      image.data.set([...colour, 255], at);
    }
  });
  return image;
}

/** `cellImage` on a canvas of its own, for drawing scaled up. */
function cellCanvas(rows, columns, diverging) {
  const cells = document.createElement("canvas");
  cells.width = Math.max(columns, 1);
  cells.height = Math.max(rows.length, 1);
  cells.getContext("2d").putImageData(cellImage(rows, columns, diverging), 0, 0);
  return cells;
}

/** A heat map of `rows` filling a `width` × `height` canvas, without labels (a small multiple). */
export function drawSmall(canvas, rows, columns, width, height) {
  const context = sizedCanvas(canvas, width, height);
  context.imageSmoothingEnabled = false;
  context.drawImage(cellCanvas(rows, columns, false), 0, 0, width, height);
}

/** A labelled heat map: `rowLabels` down the left, `columnLabels` along the top; `diverging` for signed values.
 * Each cell is at most `maxCell` CSS pixels wide, and the map fits `maxWidth`; cells are square unless
 * `rowHeight` sets their height. */
export function drawLabelled(canvas, rows, rowLabels, columnLabels, { maxWidth = 720, maxCell = 30, rowHeight = 0,
                                                                   diverging = false, font = 12 } = {}) {
  const columns = columnLabels.length;
  const measure = document.createElement("canvas").getContext("2d");
  measure.font = `${font}px ${css("--font-mono")}`;
  const widest = (labels) => Math.max(0, ...labels.map((label) => measure.measureText(label).width));
  const left = Math.ceil(widest(rowLabels)) + 8;
  const top = columns > 0 && columnLabels[0] !== "" ? Math.ceil(widest(columnLabels) * 0.8) + 10 : 4;
  const cell = Math.max(1, Math.min(maxCell, (maxWidth - left - 4) / Math.max(columns, 1)));
  const height = rowHeight || cell;
  const context = sizedCanvas(canvas, left + cell * columns + 4, top + height * rows.length + 4);
  context.imageSmoothingEnabled = false;
  context.drawImage(cellCanvas(rows, columns, diverging), left, top, cell * columns, height * rows.length);
  context.strokeStyle = css("--muted"); // the masked cells hatched
  context.lineWidth = 1;
  context.beginPath();
  rows.forEach((row, i) => {
    for (let j = 0; j < columns; j++) {
      if (row[j] !== undefined) continue;
      context.moveTo(left + j * cell, top + (i + 1) * height);
      context.lineTo(left + (j + 1) * cell, top + i * height);
    }
  });
  context.stroke();
  context.fillStyle = css("--ink");
  context.font = measure.font;
  context.textBaseline = "middle";
  context.textAlign = "right";
  rowLabels.forEach((label, i) => context.fillText(label, left - 6, top + (i + 0.5) * height));
  if (top > 4 && cell >= 8) {
    context.textAlign = "left";
    columnLabels.forEach((label, j) => {
      context.save();
      context.translate(left + (j + 0.5) * cell, top - 6);
      context.rotate(-Math.PI / 3);
      context.fillText(label, 0, 0);
      context.restore();
    });
  }
}

/** The vocabulary's embedding map: every entry a faint dot, the sentence's pieces marked and named, with the
 * `neighbours` nearest entries of each named too. `map`: (vocab, 2) coordinates, flat; `vocabulary`: the pieces. */
export function drawEmbeddingMap(canvas, map, vocabulary, ids, size, neighbours = 3) {
  const context = sizedCanvas(canvas, size, size);
  const count = map.length / 2;
  let [minX, maxX, minY, maxY] = [Infinity, -Infinity, Infinity, -Infinity];
  for (let v = 0; v < count; v++) {
    minX = Math.min(minX, map[2 * v]); maxX = Math.max(maxX, map[2 * v]);
    minY = Math.min(minY, map[2 * v + 1]); maxY = Math.max(maxY, map[2 * v + 1]);
  }
  const pad = 18;
  const x = (v) => pad + (map[2 * v] - minX) / (maxX - minX || 1) * (size - 2 * pad);
  const y = (v) => size - pad - (map[2 * v + 1] - minY) / (maxY - minY || 1) * (size - 2 * pad);
  context.fillStyle = css("--faint");
  for (let v = 0; v < count; v++) context.fillRect(x(v) - 1, y(v) - 1, 2, 2);
  context.font = `11px ${css("--font-mono")}`;
  const named = new Set();
  const label = (v, colour, weight) => {
    if (named.has(v)) return;
    named.add(v);
    context.fillStyle = colour;
    context.font = `${weight} 11px ${css("--font-mono")}`;
    context.fillText(vocabulary[v] ?? String(v), x(v) + 5, y(v) - 4);
  };
  for (const id of ids) {
    const closeness = new Float64Array(count); // minus the squared distance on the map: the largest are nearest
    for (let v = 0; v < count; v++) {
      const [dx, dy] = [map[2 * v] - map[2 * id], map[2 * v + 1] - map[2 * id + 1]];
      closeness[v] = v === id ? -Infinity : -(dx * dx + dy * dy);
    }
    const nearest = topIndices(closeness, neighbours);
    for (const v of nearest) {
      context.fillStyle = css("--muted");
      context.fillRect(x(v) - 2, y(v) - 2, 4, 4);
      label(v, css("--muted"), "normal");
    }
  }
  for (const id of ids) {
    context.fillStyle = css("--warm");
    context.beginPath();
    context.arc(x(id), y(id), 4.5, 0, 2 * Math.PI);
    context.fill();
    named.delete(id);
    label(id, css("--ink"), "bold");
  }
}

/** The top-k bars of one decoding step into `element`: each piece, its probability as a bar and a percentage. */
export function drawBars(element, topk, chosen) {
  element.replaceChildren(...topk.map(({ id, token, probability }) => {
    const row = document.createElement("div");
    row.className = "bar" + (id === chosen ? " chosen" : "");
    const name = document.createElement("span");
    name.className = "piece";
    name.textContent = token;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * probability).toFixed(1)}%`;
    row.append(name, track, value);
    return row;
  }));
}

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

/** Beam search's tree (`beam` from beam_search.js) as SVG: a column per step, its candidates by rank; kept beams
 * solid, the others faint, the finished boxed with their score, the chosen path in the accent colour. */
export function drawBeamTree(element, beam, labels, fitWidth) {
  const byStep = [];
  beam.nodes.forEach((node, index) => (byStep[node.step] ??= []).push(index));
  // a column a step, narrower (to 66 px) where that fits the tree in `fitWidth`; wider ones scroll
  const columnWidth = Math.max(66, Math.min(84, Math.floor((fitWidth - 36) / byStep.length)));
  const rowHeight = 26, top = 28, left = 12, boxWidth = columnWidth - 8;
  const characters = Math.floor((columnWidth - 24) / 7); // of a token that fits its column
  const place = new Map();
  byStep.forEach((indices, step) => indices.forEach((index, rank) =>
    place.set(index, { x: left + step * columnWidth, y: top + rank * rowHeight })));
  const chosen = new Set();
  for (let node = beam.chosen; node >= 0; node = beam.nodes[node].parent) chosen.add(node);
  const finished = new Map(beam.finished.map(({ node, score }) => [node, score]));
  const width = left + byStep.length * columnWidth + 24;
  const height = top + Math.max(...byStep.map((indices) => indices.length)) * rowHeight + 8;
  const tree = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": labels.caption, class: "beam-tree" });
  byStep.forEach((_, step) => tree.append(svg("text", { x: left + step * columnWidth, y: 14, class: "step" },
                                              labels.step(step))));
  beam.nodes.forEach((node, index) => {
    if (node.parent < 0) return;
    const from = place.get(node.parent), to = place.get(index);
    tree.append(svg("path", {
      d: `M${from.x + columnWidth - 30} ${from.y} C${from.x + columnWidth - 14} ${from.y}, ${to.x - 18} ${to.y}, ` +
         `${to.x - 4} ${to.y}`,
      class: `edge${chosen.has(index) ? " chosen" : node.kept || finished.has(index) ? "" : " dropped"}`,
    }));
  });
  beam.nodes.forEach((node, index) => {
    const { x, y } = place.get(index);
    const kind = chosen.has(index) ? "chosen" : finished.has(index) ? "finished" : node.kept || !index ? "kept"
      : "dropped";
    const group = svg("g", { class: `node ${kind}` });
    const score = finished.has(index) ? `  ${labels.score} ${finished.get(index).toFixed(3)}` : "";
    group.append(svg("title", {}, `${node.token}  ${labels.logp} ${node.logProbability.toFixed(3)}${score}`));
    if (finished.has(index)) { // a finished hypothesis: its length-penalised score in a box
      group.append(svg("rect", { x: x - 4, y: y - 10, width: boxWidth, height: 20, rx: 4 }));
      group.append(svg("text", { x, y: y + 4 }, `${node.token} ${finished.get(index).toFixed(2)}`));
    } else {
      const token = node.token.length > characters ? node.token.slice(0, characters - 1) + "…" : node.token;
      group.append(svg("text", { x, y: y + 4 }, token));
    }
    tree.append(group);
  });
  element.replaceChildren(tree);
}
