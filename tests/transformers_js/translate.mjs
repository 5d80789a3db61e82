// transformers.js as a client of the ONNX export: `node translate.mjs FOLDER [fp32|q8] < sources.json` translates
// the JSON array of sentences on standard input with `pipeline("translation", FOLDER)` (its greedy search) one
// sentence at a time, and all in one padded batch through the pipeline's model and tokenizer, each row cut at its
// first </s> (transformers.js's `generate` goes on sampling a finished row while others run, and its pipeline keeps
// those tokens); prints {"one_at_a_time": [...], "batched": [...]} as JSON.
import { readFileSync } from "node:fs";
import path from "node:path";

import { env, pipeline } from "@huggingface/transformers";

const [folder, dtype = "fp32"] = process.argv.slice(2);
env.allowRemoteModels = false; // nothing is fetched: the folder is all there is
env.localModelPath = path.dirname(path.resolve(folder));
const translator = await pipeline("translation", path.basename(folder), { dtype });
const sources = JSON.parse(readFileSync(0, "utf8"));
const one_at_a_time = [];
for (const source of sources) {
  one_at_a_time.push((await translator(source))[0].translation_text);
}
const { tokenizer, model } = translator;
const rows = (await model.generate(tokenizer(sources, { padding: true, truncation: true }))).tolist();
const eos = BigInt(model.generation_config.eos_token_id);
const batched = rows.map((ids) => {
  const end = ids.indexOf(eos, 1);
  return tokenizer.decode(end < 0 ? ids : ids.slice(0, end + 1), { skip_special_tokens: true });
});
console.log(JSON.stringify({ one_at_a_time, batched }));
