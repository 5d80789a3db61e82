// §6.1's decoding: "beam search with a beam size of 4 and length penalty α = 0.6", the translation ending at
// source length + 50 tokens. Step by step what transformers' `generate` does (its vectorised beam search, with the
// model's per-sentence limit), in float32 where it computes in float32, so that the page chooses the tokens Python
// chooses; it also keeps every hypothesis as a tree, which the page draws.
import { logSoftmax, topIndices } from "./translator.js";

const NEG = -1.0e9; // transformers' "very large negative value"
const f32 = Math.fround;

/** `cache`'s self-attention keys and values reordered so that row r holds row `parents[r]`'s; the encoder-decoder
 * attention's keys and values are the same in every row and stay. */
function reorder(cache, parents) {
  const reordered = {};
  for (const [name, tensor] of Object.entries(cache)) {
    if (!name.includes(".decoder.")) {
      reordered[name] = tensor;
      continue;
    }
    const size = tensor.data.length / tensor.dims[0];
    const data = new Float32Array(tensor.data.length);
    parents.forEach((parent, r) => data.set(tensor.data.subarray(parent * size, (parent + 1) * size), r * size));
    reordered[name] = new tensor.constructor("float32", data, tensor.dims);
  }
  return reordered;
}

/** Beam search of `translator`'s model over the encoded source. Returns the best finished hypothesis (ids, text,
 * score = log P / length^α) and the tree: `nodes` (token, parent node, step, cumulative log-probability; the start
 * token is node 0), the `finished` hypotheses (node, length-penalised score), and the `chosen` one. */
export async function beamSearch(translator, encoded, numBeams, alpha) {
  const { eos_token_id: eos, decoder_start_token_id: start } = translator.config;
  const maxLength = 1 + encoded.limit; // the start token and at most `limit` new tokens
  const keep = 2 * numBeams; // candidates a step keeps: twice the beams, so that some go on after those that end
  const nodes = [{ id: start, token: translator.piece(start), parent: -1, step: 0, logProbability: 0 }];
  let running = Array.from({ length: numBeams }, (_, b) => ({ node: 0, ids: [start], score: b ? NEG : 0 }));
  let finished = Array.from({ length: numBeams }, () => ({ node: -1, ids: null, score: NEG, done: false }));
  let improvable = true;
  let cache = translator.emptyCache(numBeams);
  for (let length = 1; ; length++) {
    const { outputs, cache: after } = await translator.step(encoded, running.map((beam) => beam.ids.at(-1)), cache,
                                                            length === 1);
    const vocabularySize = outputs.logits.dims.at(-1);
    const scores = new Float32Array(numBeams * vocabularySize);
    running.forEach((beam, b) => {
      const logProbabilities = logSoftmax(outputs.logits.data.subarray(b * vocabularySize, (b + 1) * vocabularySize));
      if (length - 1 >= encoded.limit - 1) { // the model's limit: only </s> may follow
        const last = Number.isFinite(logProbabilities[eos]) ? logProbabilities[eos] : 0;
        logProbabilities.fill(-Infinity);
        logProbabilities[eos] = last;
      }
      for (let v = 0; v < vocabularySize; v++) scores[b * vocabularySize + v] = f32(logProbabilities[v] + beam.score);
    });
    const candidates = topIndices(scores, keep).map((index, rank) => {
      const beam = running[Math.floor(index / vocabularySize)], id = index % vocabularySize;
      return { beam, id, score: scores[index], rank, ends: id === eos || length + 1 >= maxLength,
               ids: [...beam.ids, id] };
    });
    for (const candidate of candidates) { // the tree: each candidate a node under its beam's
      candidate.node = nodes.push({ id: candidate.id, token: translator.piece(candidate.id),
                                    parent: candidate.beam.node,
                                    step: length, logProbability: candidate.score }) - 1;
    }
    // the beams that go on: the best candidates that did not end
    const goOn = candidates.map((c) => f32(c.score + (c.ends ? NEG : 0)));
    const next = topIndices(goOn, numBeams).map((k) => ({ ...candidates[k], score: goOn[k] }));
    for (const { node } of next) nodes[node].kept = true;
    // the finished hypotheses: the best of those kept and those that ended now among the top `numBeams`, each
    // scored by its log-probability over its length^α (its length: the new tokens, </s> included)
    const penalty = f32(Math.pow(length, alpha));
    const ended = candidates.map((c) => {
      let score = f32(c.score / penalty);
      if (!improvable) score = f32(score + NEG);
      if (!(c.ends && c.rank < numBeams)) score = f32(score + NEG);
      return { node: c.node, ids: c.ids, score, done: c.ends && c.rank < numBeams };
    });
    const merged = [...finished, ...ended];
    finished = topIndices(merged.map((f) => f.score), numBeams).map((k) => merged[k]);
    const parents = next.map((c) => running.indexOf(c.beam));
    running = next.map(({ node, ids, score }) => ({ node, ids, score }));
    cache = reorder(after, parents);
    // stop once no running beam can beat the finished ones (transformers' heuristic without early_stopping), or
    // every candidate ended
    const best = f32(running[0].score / f32(Math.pow(length, alpha)));
    const worst = finished.every((f) => f.done) ? Math.min(...finished.map((f) => f.score)) : NEG;
    improvable = improvable && best > worst;
    if (!improvable || candidates.every((c) => c.ends)) break;
  }
  const [chosen] = finished;
  return {
    ids: chosen.ids, text: translator.decode(chosen.ids), score: chosen.score, nodes,
    finished: finished.filter((f) => f.done).map(({ node, score }) => ({ node, score })), chosen: chosen.node,
  };
}
