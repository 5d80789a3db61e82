// Translation in the browser from the ONNX export (python -m hf_vanilla_transformer.onnx_backend): the encoder
// graph once, then the merged decoder graph token by token from its key-value cache, greedy, with the paper's limit
// of source length + 50 tokens (§6.1). Each step also returns the encoder-decoder attention weights, which the
// page draws while the translation grows.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { Tokenizer } from "./node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // one thread: no cross-origin isolation needed, and as fast for one sentence

export const EXTRA_OUTPUT_TOKENS = 50; // §6.1: at most source length + 50 tokens

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

/** The exported folder at `folder` (a URL ending in "/"): configuration, tokenizer and the two graphs. */
export async function loadTranslator(folder, variant = "") {
  const [config, generation, tokenizerJson, tokenizerConfig] = await Promise.all(
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"].map((name) =>
      fetchOk(folder + name, "json")));
  const [encoderBytes, decoderBytes] = await Promise.all(
    ["encoder_model", "decoder_model_merged"].map((graph) => fetchOk(`${folder}onnx/${graph}${variant}.onnx`)));
  const [encoder, decoder] = await Promise.all(
    [encoderBytes, decoderBytes].map((bytes) => ort.InferenceSession.create(bytes)));
  return new Translator(config, generation, new Tokenizer(tokenizerJson, tokenizerConfig), encoder, decoder);
}

function int64(ids) {
  return new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
}

/** The rows of head `h` of a (1, heads, rows, columns) attention tensor, as arrays. */
export function headRows(tensor, h) {
  const [, , rows, columns] = tensor.dims;
  return [...Array(rows).keys()].map((r) =>
    Array.from(tensor.data.subarray((h * rows + r) * columns, (h * rows + r + 1) * columns)));
}

export class Translator {
  constructor(config, generation, tokenizer, encoder, decoder) {
    Object.assign(this, { config, generation, tokenizer, encoder, decoder });
    this.layers = config.decoder_layers;
    this.heads = config.decoder_attention_heads;
  }

  /** Source token ids (with the final </s>) and their tokens. */
  encode(text) {
    const { ids, tokens } = this.tokenizer.encode(text);
    return { ids, tokens };
  }

  /** An empty cache: per decoder layer, self-attention and encoder-decoder attention keys and values. */
  emptyCache() {
    const { d_model: dModel, attention_key_dim: keyDim } = this.config;
    const dims = { key: keyDim || dModel / this.heads, value: dModel / this.heads };
    const cache = {};
    for (let i = 0; i < this.layers; i++) {
      for (const part of ["decoder", "encoder"]) {
        for (const kind of ["key", "value"]) {
          cache[`past_key_values.${i}.${part}.${kind}`] =
            new ort.Tensor("float32", new Float32Array(0), [1, this.heads, 0, dims[kind]]);
        }
      }
    }
    return cache;
  }

  /** Greedy translation of one sentence. `onStep` follows each new token with what the result holds so
   * far; the result holds the text, both token lists and every layer's
   * encoder self-attention and encoder-decoder attention. */
  async translate(text, onStep = () => {}) {
    const source = this.encode(text);
    const maxPositions = this.config.max_position_embeddings;
    if (source.ids.length > maxPositions) {
      throw new RangeError(`The text is ${source.ids.length} tokens long and the model reads at most ` +
                           `${maxPositions}: put one sentence on each line.`);
    }
    const mask = int64(source.ids.map(() => 1));
    const encoded = await this.encoder.run({ input_ids: int64(source.ids), attention_mask: mask });
    const encoderAttentions = [...Array(this.config.encoder_layers).keys()].map(
      (i) => encoded[`encoder_attentions.${i}`]);
    const limit = Math.min(source.ids.length + EXTRA_OUTPUT_TOKENS, maxPositions - 1);
    const eos = this.config.eos_token_id;
    const ids = [this.config.decoder_start_token_id];
    const cross = [...Array(this.layers)].map(() => []); // per layer: one (1, heads, 1, source) tensor per step
    let cache = this.emptyCache();
    for (let next = -1; next !== eos;) {
      const outputs = await this.decoder.run({
        input_ids: int64(ids.slice(-1)),
        encoder_attention_mask: mask,
        encoder_hidden_states: encoded.last_hidden_state,
        use_cache_branch: new ort.Tensor("bool", [ids.length > 1], [1]),
        ...cache,
      });
      const logits = outputs.logits.data;
      next = eos; // the last token §6.1's limit allows ends the sentence
      if (ids.length < limit) {
        next = 0;
        for (let v = 1; v < logits.length; v++) if (logits[v] > logits[next]) next = v;
      }
      ids.push(next);
      cache = {};
      for (const name of Object.keys(outputs)) {
        if (name.startsWith("present.")) cache[name.replace("present", "past_key_values")] = outputs[name];
      }
      for (let i = 0; i < this.layers; i++) cross[i].push(outputs[`cross_attentions.${i}`]);
      await onStep({ source, target: this.targets(ids), encoderAttentions, cross });
    }
    return {
      text: this.tokenizer.decode(ids, { skip_special_tokens: true }),
      source, target: this.targets(ids), encoderAttentions, cross,
    };
  }

  /** The target tokens shown beside the attention rows: each new token (the start token is not one). */
  targets(ids) {
    return ids.slice(1).map((id) => this.tokenizer.decode([id], { skip_special_tokens: false }));
  }
}
