// The demo's model work, off the page's thread: loading, chat with streaming tokens, and the
// "quantize here" comparison. Messages in: {id, type, ...}; out: {id, type, ...} (progress,
// token, done, error).
import * as lowbit from "../lowbit.js";

let model = null;

const post = (msg, transfer) => self.postMessage(msg, transfer ?? []);

async function load(id, source) {
  model?.free();
  model = null;
  model = await lowbit.Model.load(source, { onProgress: (p) => post({ id, type: "progress", ...p }) });
  return { info: model.info, loadInfo: model.loadInfo, kernelLevel: model.kernelLevel, threads: model.threads };
}

function chat(id, messages, maxNewTokens) {
  if (!model) throw new Error("load a model first");
  let first = null;
  let count = 0;
  const t0 = performance.now();
  const g = model.chat(messages, {
    maxNewTokens,
    onToken: (text) => {
      const now = performance.now();
      first ??= now;
      count++;
      const tokS = count > 1 ? (count - 1) / ((now - first) / 1000) : 0;
      post({ id, type: "token", text, tokS });
    },
  });
  return { text: g.text, tokens: g.tokens.length, stopReason: g.stopReason, firstTokenS: (first - t0) / 1000, decodeTokS: g.tokens.length > 1 ? (g.tokens.length - 1) / g.decodeSeconds : 0 };
}

/** Quantizes `source` in this worker and compares the two models on `evalText` and `prompt`. */
async function quantizeCompare(id, { source, method, bits, groupSize, calibText, evalText, prompt, maxNewTokens }) {
  // Read once: both the original model and the quantizer take these bytes.
  const input =
    source instanceof Blob
      ? new Uint8Array(await source.arrayBuffer())
      : typeof source === "string"
        ? new Uint8Array(await (await fetch(source)).arrayBuffer())
        : source;
  const side = async (m) => {
    // One window over the whole text (up to 512 tokens): any length of text scores.
    const n = m.encode(evalText).length;
    if (n < 2) throw new Error("the evaluation text is too short");
    const p = m.perplexity(evalText, { window: Math.min(n, 512), windows: 1 });
    const answer = m.chat([{ role: "user", content: prompt }], { maxNewTokens }).text;
    return { perplexity: p.perplexity, answer, weightBytes: m.info.weightBytes };
  };
  post({ id, type: "progress", phase: "original", done: 0, total: 1 });
  const original = await lowbit.Model.load(input, { cache: false });
  const before = await side(original);
  original.free();
  const t0 = performance.now();
  const q = await lowbit.quantize(input, {
    method,
    bits,
    groupSize,
    calibText: method === "rtn" ? undefined : calibText,
    onProgress: (p) => post({ id, type: "progress", ...p }),
  });
  const seconds = (performance.now() - t0) / 1000;
  const quantized = await lowbit.Model.load(q.bytes);
  const after = await side(quantized);
  quantized.free();
  const bytes = q.bytes;
  post({ id, type: "done", result: { original: before, quantized: after, seconds, packBytes: bytes.byteLength, bytes } }, [bytes.buffer]);
  return undefined;
}

self.onmessage = async ({ data }) => {
  const { id, type } = data;
  try {
    let result;
    if (type === "load") result = await load(id, data.source);
    else if (type === "chat") result = chat(id, data.messages, data.maxNewTokens ?? 64);
    else if (type === "quantize") result = await quantizeCompare(id, data);
    else throw new Error(`unknown request ${type}`);
    if (result !== undefined) post({ id, type: "done", result });
  } catch (e) {
    post({ id, type: "error", message: String(e?.message ?? e) });
  }
};
post({ type: "ready", variants: lowbit.supportedVariants(), crossOriginIsolated: self.crossOriginIsolated });
