// The page's words in English and Chinese (?lang=zh, or the switch in the header). Explanations quote the paper's
// sections and equations; they are the project's own static text, so they may hold markup.

const TEXT = {
  en: {
    title: "Follow one sentence through the Transformer",
    subtitle: "The encoder–decoder of “Attention Is All You Need” (Vaswani et al., 2017), trained in this project " +
      "and run in your browser by ONNX Runtime Web. Every number below is read from the model's own graphs; " +
      "nothing leaves the page.",
    sourceLabel: "German sentences, one a line",
    translate: "Translate",
    loading: "Loading the model…",
    loaded: "Model loaded from {folder} in {seconds} s ({source} → {target}).",
    loadFailed: "Could not load the model from {folder}: {error}",
    empty: "Type a sentence to translate first (one sentence a line).",
    translating: "Translating line {line} of {lines}…",
    done: "Done: {count} sentence(s) in {seconds} s. Choose a line to follow it through the model.",
    failed: "Translation failed: {error}",
    tooLong: "The text is {length} tokens long and the model reads at most {max}: put one sentence on each line.",
    beamLabel: "beam search",
    greedyLabel: "greedy",
    contents: "Stages",
    close: "Close",
    enlarge: "Enlarge layer {layer}, head {head}",
    layer: "Layer {layer}",
    head: "head {head}",
    step: "step {step}",
    after: "after “{prefix}”",
    start: "after the start token",
    score: "score",
    logp: "log P",
    chosen: "chosen",
    legendKept: "kept (one of the 4 beams)",
    legendDropped: "not kept",
    legendFinished: "ended with &lt;/s&gt;: score log P / length<sup>α</sup>",
    dims: "dimensions →",
    positionsAxis: "position ↓",
    noPositions: "This model encodes positions inside attention ({kind}), not as vectors added to the embeddings.",
    tokensTitle: "1 · Tokens",
    tokensText: "The sentence is split into byte-pair-encoding pieces of a vocabulary shared by source and target " +
      "(§5.1); each piece is an id, a row of the embedding matrix. <code>▁</code> starts a word, and " +
      "<code>&lt;/s&gt;</code> ends the sentence.",
    embeddingsTitle: "2 · Embeddings × √d<sub>model</sub>",
    embeddingsText: "Each id picks its learned vector of d<sub>model</sub> numbers, multiplied by √d<sub>model</sub> " +
      "(§3.4); encoder, decoder and output projection share the one matrix. Left: every vocabulary entry placed on " +
      "the matrix's two principal axes, the sentence's pieces marked among their neighbours. Right: the vectors " +
      "themselves, one row per piece.",
    positionsTitle: "3 · Positional encoding",
    positionsText: "Without recurrence the model needs to be told where each piece stands, so a signal is added to " +
      "the embeddings (§3.5): PE<sub>(pos, 2i)</sub> = sin(pos / 10000<sup>2i/d<sub>model</sub></sup>), " +
      "PE<sub>(pos, 2i+1)</sub> = cos(pos / 10000<sup>2i/d<sub>model</sub></sup>). Each row is one position: fast " +
      "waves on the left, slow ones on the right.",
    encoderTitle: "4 · Encoder self-attention",
    encoderText: "Every source position attends to every other: Attention(Q, K, V) = softmax(QK<sup>T</sup> / " +
      "√d<sub>k</sub>) V (Eq. 1, §3.2.1), in h heads that look in different subspaces (§3.2.2), in each of the N " +
      "layers (§3.1). One square per layer (row) and head (column); in a square, row i is where piece i looks. " +
      "Choose a square to enlarge it.",
    decoderTitle: "5 · Masked decoder self-attention",
    decoderText: "In the decoder, position i may attend only to positions up to i: the scores of later positions " +
      "are set to −∞ before the softmax (§3.2.3), so no word sees the words it is about to predict. The hidden " +
      "future is hatched.",
    crossTitle: "6 · Encoder–decoder attention",
    crossText: "The queries come from the decoder, the keys and values from the encoder's output, so every target " +
      "word looks at the whole source (§3.2.3). Rows: the translation's pieces; columns: the source's.",
    nextTitle: "7 · The next token: linear + softmax",
    nextText: "The decoder's output is projected onto the vocabulary by the shared embedding matrix and turned into " +
      "probabilities by a softmax (§3.4). Greedy decoding takes the most probable piece at each step; here are " +
      "the five most probable.",
    beamTitle: "8 · Beam search",
    beamText: "The paper keeps the 4 best partial translations at each step and ranks the finished ones by log P / " +
      "length<sup>α</sup> with α = 0.6, up to source length + 50 tokens (§6.1). Each column is a step: its 8 best " +
      "continuations; solid ones are kept, boxed ones ended with <code>&lt;/s&gt;</code>, the chosen translation " +
      "is highlighted.",
    beamResult: "Beam search chose “{text}” (score {score}).",
  },
  zh: {
    title: "跟随一个句子走过 Transformer",
    subtitle: "《Attention Is All You Need》（Vaswani 等，2017）的编码器–解码器，由本项目训练，在你的浏览器里由 " +
      "ONNX Runtime Web 运行。下面的每个数字都直接读自模型自己的计算图；数据不会离开本页面。",
    sourceLabel: "德语句子，每行一句",
    translate: "翻译",
    loading: "正在加载模型…",
    loaded: "模型已从 {folder} 加载，用时 {seconds} 秒（{source} → {target}）。",
    loadFailed: "无法从 {folder} 加载模型：{error}",
    empty: "请先输入要翻译的句子（每行一句）。",
    translating: "正在翻译第 {line} 行，共 {lines} 行…",
    done: "完成：{count} 个句子，用时 {seconds} 秒。选择一行，跟随它走过模型。",
    failed: "翻译失败：{error}",
    tooLong: "这段文字有 {length} 个词元，而模型最多读 {max} 个：请每行只放一个句子。",
    beamLabel: "束搜索",
    greedyLabel: "贪心",
    contents: "各个阶段",
    close: "关闭",
    enlarge: "放大第 {layer} 层第 {head} 个头",
    layer: "第 {layer} 层",
    head: "头 {head}",
    step: "第 {step} 步",
    after: "在“{prefix}”之后",
    start: "在起始符之后",
    score: "得分",
    logp: "log P",
    chosen: "选中",
    legendKept: "保留（4 个束之一）",
    legendDropped: "未保留",
    legendFinished: "以 &lt;/s&gt; 结束：得分 log P / 长度<sup>α</sup>",
    dims: "维度 →",
    positionsAxis: "位置 ↓",
    noPositions: "这个模型在注意力内部编码位置（{kind}），而不是把位置向量加到词嵌入上。",
    tokensTitle: "1 · 词元",
    tokensText: "句子被切分成字节对编码（BPE）的片段，源语言和目标语言共用一个词表（§5.1）；每个片段是一个编号，" +
      "对应词嵌入矩阵的一行。<code>▁</code> 表示词的开头，<code>&lt;/s&gt;</code> 表示句子结束。",
    embeddingsTitle: "2 · 词嵌入 × √d<sub>model</sub>",
    embeddingsText: "每个编号取出它学到的 d<sub>model</sub> 维向量，再乘以 √d<sub>model</sub>（§3.4）；编码器、" +
      "解码器和输出投影共用同一个矩阵。左图：词表中的每一项按矩阵的两个主成分放置，句子中的片段在它们的邻居中" +
      "标出。右图：这些向量本身，每个片段一行。",
    positionsTitle: "3 · 位置编码",
    positionsText: "模型没有循环结构，必须告诉它每个片段的位置，于是把一个信号加到词嵌入上（§3.5）：" +
      "PE<sub>(pos, 2i)</sub> = sin(pos / 10000<sup>2i/d<sub>model</sub></sup>)，" +
      "PE<sub>(pos, 2i+1)</sub> = cos(pos / 10000<sup>2i/d<sub>model</sub></sup>)。每一行是一个位置：" +
      "左边是快速变化的波，右边是缓慢变化的波。",
    encoderTitle: "4 · 编码器自注意力",
    encoderText: "每个源位置都关注所有位置：Attention(Q, K, V) = softmax(QK<sup>T</sup> / √d<sub>k</sub>) V" +
      "（公式 1，§3.2.1），分成 h 个头，各自在不同的子空间里观察（§3.2.2），N 层中每层都如此（§3.1）。" +
      "每个小方块是一层（行）的一个头（列）；方块中第 i 行是片段 i 关注的地方。选择一个方块可以放大。",
    decoderTitle: "5 · 带掩码的解码器自注意力",
    decoderText: "在解码器中，位置 i 只能关注 i 及之前的位置：之后位置的得分在 softmax 之前被设为 −∞（§3.2.3），" +
      "所以没有一个词能看到它将要预测的词。被遮住的“未来”用斜线表示。",
    crossTitle: "6 · 编码器–解码器注意力",
    crossText: "查询来自解码器，键和值来自编码器的输出，所以每个目标词都能看到整个源句（§3.2.3）。" +
      "行：译文的片段；列：源句的片段。",
    nextTitle: "7 · 下一个词元：线性层 + softmax",
    nextText: "解码器的输出经共享的词嵌入矩阵投影到词表上，再由 softmax 变成概率（§3.4）。贪心解码每一步取概率" +
      "最高的片段；这里列出最可能的五个。",
    beamTitle: "8 · 束搜索",
    beamText: "论文在每一步保留 4 个最好的部分译文，并用 log P / 长度<sup>α</sup>（α = 0.6）给已结束的译文打分，" +
      "最长到源句长度 + 50 个词元（§6.1）。每一列是一步：它最好的 8 个延续；实心的被保留，带框的以 " +
      "<code>&lt;/s&gt;</code> 结束，选中的译文被高亮。",
    beamResult: "束搜索选择了“{text}”（得分 {score}）。",
  },
};

let language = "en";

/** The language of `?lang=` (English unless it names another the page has). */
export function initialLanguage(params) {
  return TEXT[params.get("lang")] ? params.get("lang") : "en";
}

export function setLanguage(code) {
  language = TEXT[code] ? code : "en";
  document.documentElement.lang = language === "zh" ? "zh-Hans" : "en";
  for (const element of document.querySelectorAll("[data-text]")) element.innerHTML = t(element.dataset.text);
  for (const element of document.querySelectorAll("[data-label]")) {
    element.setAttribute("aria-label", t(element.dataset.label));
  }
}

/** The text of `key` in the page's language, with {name} filled from `values`. */
export function t(key, values = {}) {
  const text = TEXT[language][key] ?? TEXT.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
}
