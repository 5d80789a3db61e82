// The model in the browser, from the ONNX export (python -m hf_vanilla_transformer.onnx_backend): the encoder graph
// once, then the merged decoder graph token by token over its key-value cache, up to §6.1's limit of source length
// + 50 tokens. `explain` returns every stage the page draws, each read from the graphs' outputs: the source's BPE
// pieces, its scaled embeddings and their place in the embedding matrix's 2-D map, the positional encodings, every
// layer and head of the three attentions, the next-token distribution of each greedy step, and §6.1's beam search.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { Tokenizer } from "./node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs";
import { beamSearch } from "./beam_search.js";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // one thread: no cross-origin isolation needed, and as fast for one sentence

const EXTRA_OUTPUT_TOKENS = 50; // §6.1: at most source length + 50 tokens
const TOP_K = 5; // the next tokens shown at each step

async function fetchOk(url, as) {
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(`${url}: ${error.message}`);
  }
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  return as === "json" ? response.json() : new Uint8Array(await response.arrayBuffer());
}

/** The exported folder at `folder` (a URL ending in "/"): configuration, tokenizer and the two graphs. The encoder
 * graph comes first and its session starts ONNX Runtime (the WebAssembly's compilation, most of the load) while the
 * decoder graph downloads. */
export async function loadTranslator(folder, variant = "") {
  const graph = (name) => fetchOk(`${folder}onnx/${name}${variant}.onnx`);
  const encoderBytes = graph("encoder_model");
  const encoderSession = encoderBytes.then((bytes) => ort.InferenceSession.create(bytes));
  const decoderBytes = encoderBytes.then(() => graph("decoder_model_merged"));
  const decoderSession = Promise.all([decoderBytes, encoderSession]).then(([bytes]) =>
    ort.InferenceSession.create(bytes));
  const [config, generation, tokenizerJson, tokenizerConfig, encoder, decoder] = await Promise.all([
    ...["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"].map((name) =>
      fetchOk(folder + name, "json")), encoderSession, decoderSession]);
  const lacking = (session, names) => names.filter((name) => !session.outputNames.includes(name));
  const missing = [...lacking(encoder, ["inputs_embeds", "embedding_map"]),
                   ...lacking(decoder, ["decoder_attentions.0", "cross_attentions.0"])];
  if (missing.length) {
    throw new Error(`its ONNX graphs have no ${missing.join(", ")}: they come from an earlier export; export ` +
                    "again with `python -m hf_vanilla_transformer.onnx_backend --model FOLDER --force`");
  }
  const vocabulary = [];
  for (const [piece, id] of Object.entries(tokenizerJson.model.vocab)) vocabulary[id] = piece;
  for (const { id, content } of tokenizerJson.added_tokens ?? []) vocabulary[id] = content;
  return new Translator(config, generation, new Tokenizer(tokenizerJson, tokenizerConfig), vocabulary, encoder,
                        decoder);
}

function int64(ids, rows = 1) {
  return new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [rows, ids.length / rows]);
}

/** The rows of head `h` of a (1, heads, rows, columns) attention tensor, as arrays. */
export function headRows(tensor, h) {
  const [, , rows, columns] = tensor.dims;
  const start = h * rows * columns;
  return [...Array(rows).keys()].map((r) =>
    Array.from(tensor.data.subarray(start + r * columns, start + (r + 1) * columns)));
}

/** The rows of a (rows, columns) or (1, rows, columns) tensor, as arrays. */
function matrixRows(tensor) {
  const columns = tensor.dims.at(-1);
  return [...Array(tensor.data.length / columns).keys()].map((r) =>
    Array.from(tensor.data.subarray(r * columns, (r + 1) * columns)));
}

/** §3.4's softmax over the logits `row` (a Float32Array), in float64: the probabilities. */
export function softmax(row) {
  const { max, logSum } = normaliser(row);
  const probabilities = new Float64Array(row.length);
  for (let v = 0; v < row.length; v++) probabilities[v] = Math.exp(row[v] - max - logSum);
  return probabilities;
}

/** The log-probabilities beam search adds: log_softmax of `row`, in float32 as transformers computes them. */
export function logSoftmax(row) {
  const { max, logSum } = normaliser(row);
  const logProbabilities = new Float32Array(row.length);
  for (let v = 0; v < row.length; v++) logProbabilities[v] = row[v] - max - logSum;
  return logProbabilities;
}

function normaliser(row) {
  let max = -Infinity;
  for (let v = 0; v < row.length; v++) if (row[v] > max) max = row[v];
  let sum = 0;
  for (let v = 0; v < row.length; v++) sum += Math.exp(row[v] - max);
  return { max, logSum: Math.log(sum) };
}

/** Indices of the `k` largest of `values`, largest first (the earlier index first among equals), in one pass. */
export function topIndices(values, k) {
  const best = [];
  for (let i = 0; i < values.length; i++) {
    if (best.length === k && !(values[i] > values[best[k - 1]])) continue;
    let at = best.length;
    while (at > 0 && values[best[at - 1]] < values[i]) at--;
    best.splice(at, 0, i);
    if (best.length > k) best.pop();
  }
  return best;
}

export class Translator {
  constructor(config, generation, tokenizer, vocabulary, encoder, decoder) {
    Object.assign(this, { config, generation, tokenizer, vocabulary, encoder, decoder });
    this.layers = config.decoder_layers;
    this.encoderLayers = config.encoder_layers;
    this.heads = config.decoder_attention_heads;
    this.numBeams = generation.num_beams ?? 4;
    this.lengthPenalty = generation.length_penalty ?? 0.6;
  }

  /** Source token ids (with the final </s>) and their BPE pieces (§5.1). */
  encode(text) {
    const { ids, tokens } = this.tokenizer.encode(text);
    return { ids, tokens };
  }

  /** The encoder graph's outputs for `text`, and the limit on the translation's tokens (§6.1). */
  async encodeSource(text) {
    const source = this.encode(text);
    const maxPositions = this.config.max_position_embeddings;
    if (source.ids.length > maxPositions) {
      const error = new RangeError(`The text is ${source.ids.length} tokens long and the model reads at most ` +
                                   `${maxPositions}: put one sentence on each line.`);
      throw Object.assign(error, { details: { length: source.ids.length, max: maxPositions } });
    }
    const outputs = await this.encoder.run({ input_ids: int64(source.ids),
                                             attention_mask: int64(source.ids.map(() => 1)) });
    return {
      source, outputs,
      limit: Math.min(source.ids.length + EXTRA_OUTPUT_TOKENS, maxPositions - 1),
      encoderAttentions: [...Array(this.encoderLayers).keys()].map((i) => outputs[`encoder_attentions.${i}`]),
    };
  }

  /** An empty cache for `rows` hypotheses: per decoder layer, self-attention and encoder-decoder attention keys and
   * values. */
  emptyCache(rows = 1) {
    const { d_model: dModel, attention_key_dim: keyDim } = this.config;
    const dims = { key: keyDim || dModel / this.heads, value: dModel / this.heads };
    const cache = {};
    for (let i = 0; i < this.layers; i++) {
      for (const part of ["decoder", "encoder"]) {
        for (const kind of ["key", "value"]) {
          cache[`past_key_values.${i}.${part}.${kind}`] =
            new ort.Tensor("float32", new Float32Array(0), [rows, this.heads, 0, dims[kind]]);
        }
      }
    }
    return cache;
  }

  /** One decoder step for the last token of each of `rows` hypotheses: the graph's outputs and the cache after it. */
  async step(encoded, lastTokens, cache, first) {
    const rows = lastTokens.length;
    const { outputs: { last_hidden_state: hidden }, source } = encoded;
    encoded.repeated ??= {}; // the encoder output and mask, once per number of rows
    encoded.repeated[rows] ??= {
      hidden: new ort.Tensor("float32", repeatData(hidden.data, rows), [rows, ...hidden.dims.slice(1)]),
      mask: int64(repeatData(source.ids.map(() => 1), rows), rows),
    };
    const { hidden: states, mask } = encoded.repeated[rows];
    const outputs = await this.decoder.run({
      input_ids: int64(lastTokens, rows),
      encoder_attention_mask: mask,
      encoder_hidden_states: states,
      use_cache_branch: new ort.Tensor("bool", [!first], [1]),
      ...cache,
    });
    const next = {};
    for (const name of Object.keys(outputs)) {
      if (name.startsWith("present.")) next[name.replace("present", "past_key_values")] = outputs[name];
    }
    return { outputs, cache: next };
  }

  /** Greedy decoding (§6.1's limit) with what each step shows: the top-k next tokens and their probabilities, and
   * every decoder layer's masked self-attention and encoder-decoder attention. */
  async greedy(encoded) {
    const eos = this.config.eos_token_id;
    const ids = [this.config.decoder_start_token_id];
    const steps = []; // per step: {topk: [{id, token, probability}], chosen}
    const self = [...Array(this.layers)].map(() => []); // per layer: one (1, heads, 1, t) tensor per step
    const cross = [...Array(this.layers)].map(() => []); // per layer: one (1, heads, 1, source) tensor per step
    let cache = this.emptyCache();
    for (let next = -1; next !== eos;) {
      const { outputs, cache: after } = await this.step(encoded, ids.slice(-1), cache, ids.length === 1);
      cache = after;
      const probabilities = softmax(outputs.logits.data);
      const topk = topIndices(probabilities, TOP_K);
      next = ids.length < encoded.limit ? topk[0] : eos; // the last token §6.1's limit allows ends the sentence
      ids.push(next);
      steps.push({
        topk: topk.map((id) => ({ id, token: this.piece(id), probability: probabilities[id] })),
        chosen: next,
      });
      for (let i = 0; i < this.layers; i++) {
        self[i].push(outputs[`decoder_attentions.${i}`]);
        cross[i].push(outputs[`cross_attentions.${i}`]);
      }
    }
    return { ids, text: this.decode(ids), target: this.pieces(ids.slice(1)), steps, self, cross };
  }

  /** Every stage of the model for one sentence: the encoder's, greedy decoding's and beam search's. */
  async explain(text) {
    const encoded = await this.encodeSource(text);
    const { outputs } = encoded;
    const greedy = await this.greedy(encoded);
    const beam = await beamSearch(this, encoded, this.numBeams, this.lengthPenalty);
    return {
      source: { ...encoded.source, pieces: encoded.source.ids.map((id) => this.piece(id)) },
      embeddings: matrixRows(outputs.inputs_embeds),
      positions: outputs.position_encodings ? matrixRows(outputs.position_encodings) : null,
      embeddingMap: outputs.embedding_map.data,
      encoderAttentions: encoded.encoderAttentions,
      greedy, beam,
    };
  }

  piece(id) {
    return this.vocabulary[id] ?? String(id);
  }

  pieces(ids) {
    return ids.map((id) => this.piece(id));
  }

  decode(ids) {
    return this.tokenizer.decode(ids, { skip_special_tokens: true });
  }
}

/** `data` repeated `rows` times, one copy after the other. */
function repeatData(data, rows) {
  if (Array.isArray(data)) return Array(rows).fill(data).flat();
  const repeated = new data.constructor(data.length * rows);
  for (let r = 0; r < rows; r++) repeated.set(data, r * data.length);
  return repeated;
}
