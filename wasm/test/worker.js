// Runs a model in a worker for the tests and the benchmark (the threaded build runs only in a
// worker of a cross-origin isolated page). Request: {variant, threads, url, prompt,
// maxNewTokens, bench}; reply: {ok, ...} or {ok: false, error}.
import * as lowbit from "../lowbit.js";

self.onmessage = async ({ data }) => {
  try {
    const t0 = performance.now();
    const m = await lowbit.Model.load(data.url, { variant: data.variant, threads: data.threads });
    const load = (performance.now() - t0) / 1000;
    const out = { ok: true, variants: lowbit.supportedVariants(), threads: m.threads, level: m.kernelLevel, load };
    const streamed = [];
    const g = m.generate(data.prompt, { maxNewTokens: data.maxNewTokens, onToken: (_, id) => streamed.push(id) });
    Object.assign(out, { tokens: g.tokens, streamed, text: g.text });
    if (data.bench) {
      const prompt = data.benchPrompt;
      m.generate(prompt, { maxNewTokens: 4 }); // warm up
      const times = [];
      const start = performance.now();
      const b = m.generate(prompt, { maxNewTokens: data.bench, stopOnEos: false, onToken: () => times.push(performance.now()) });
      out.bench = {
        decode_tok_s: (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000),
        prefill_tok_s: b.promptTokens / ((times[0] - start) / 1000),
        first_token_s: (times[0] - start) / 1000,
      };
    }
    m.free();
    self.postMessage(out);
  } catch (e) {
    self.postMessage({ ok: false, error: String(e?.message ?? e) });
  }
};
