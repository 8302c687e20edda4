#!/usr/bin/env node
// The browser tests (and, with --bench, the benchmark) of lowbit's wasm build, in headless
// Chromium driven by playwright-core (Debian's /usr/bin/chromium; no browser is downloaded).
//
//   node test/run.mjs [--fixtures DIR] [--bench] [--variants relaxed,simd128]
//
// DIR holds what test/prepare.py wrote natively: smollm2-w4.lowbit and native.json. Without it
// the model tests are skipped with the reason. Exit status: 0 all ran and passed, 1 a failure,
// 77 something was skipped (the pytest wrapper turns that into a skip, or a failure under
// LOWBIT_REQUIRE_REFERENCES=1). One JSON line per result on stdout.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serve } from "../serve.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const CHROMIUM = process.env.LOWBIT_CHROMIUM ?? "/usr/bin/chromium";
const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const fixtures = opt("--fixtures") ?? process.env.LOWBIT_WEB_FIXTURES;
const bench = args.includes("--bench");
const variants = (opt("--variants") ?? "relaxed,simd128").split(",");

let failed = 0;
let skipped = 0;
const report = (o) => console.log(JSON.stringify(o));
const skip = (test, reason) => {
  skipped++;
  report({ test, status: "skip", reason });
};

async function check(test, fn) {
  const t0 = Date.now();
  try {
    const detail = await fn();
    report({ test, status: "pass", seconds: (Date.now() - t0) / 1000, ...detail });
  } catch (e) {
    failed++;
    report({ test, status: "fail", error: String(e?.message ?? e).slice(0, 2000) });
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function main() {
  if (!existsSync(CHROMIUM)) {
    skip("all", `no Chromium at ${CHROMIUM} (apt-get install -y chromium chromium-driver)`);
    return;
  }
  for (const v of variants) {
    if (!existsSync(join(ROOT, "pkg", v, "lowbit_wasm_bg.wasm"))) {
      skip("all", `the ${v} build is missing: run make web first`);
      return;
    }
  }
  let playwright;
  try {
    playwright = await import("playwright-core");
  } catch {
    skip("all", "playwright-core is not installed (cd wasm && npm ci)");
    return;
  }
  const haveModel = fixtures && existsSync(join(fixtures, "native.json"));
  const server = await serve(ROOT, 0, haveModel ? { "/fixtures": fixtures } : {});
  const base = `http://127.0.0.1:${server.address().port}`;
  const browser = await playwright.chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(600_000);
    page.on("pageerror", (e) => report({ test: "page", status: "log", error: String(e) }));
    await page.goto(`${base}/test/page.html`);
    await page.waitForFunction(() => window.ready === true);
    const supported = await page.evaluate(() => window.lowbit.supportedVariants());
    report({ test: "engine", status: "info", supported, userAgent: await page.evaluate(() => navigator.userAgent) });

    // (a) kernels against the scalar reference, per build
    for (const v of variants) {
      await check(`kernels-${v}`, async () => {
        assert(supported.includes(v), `Chromium does not validate the ${v} build`);
        const summary = await page.evaluate((v) => window.lowbit.kernelSelfCheck(v), v);
        const want = v === "relaxed" ? "level relaxed-simd:" : "level simd128:";
        assert(summary.startsWith(want) && summary.includes("exact fma ok") && summary.includes("bit-exact"), `unexpected summary: ${summary}`);
        return { summary };
      });
    }

    // (d) a corrupt or truncated file is refused with a clear error; a too-large one before loading
    await check("refuses-bad-files", async () => {
      const msgs = await page.evaluate(async () => {
        const out = {};
        const attempt = async (name, src) => {
          try {
            await window.lowbit.Model.load(src);
            out[name] = "loaded";
          } catch (e) {
            out[name] = String(e.message ?? e);
          }
        };
        await attempt("garbage", new TextEncoder().encode("<html>404 Not Found</html>"));
        const header = new Uint8Array(64);
        header.set(new TextEncoder().encode("LOWBITPK"));
        new DataView(header.buffer).setBigUint64(8, 1000n, true);
        await attempt("truncatedPack", header);
        await attempt("truncatedGguf", new Uint8Array([71, 71, 85, 70, 3, 0, 0, 0, 5, 0]));
        const glue = await window.lowbit.init();
        try {
          glue.checkFileSize(3 * 2 ** 30);
          out.tooLarge = "accepted";
        } catch (e) {
          out.tooLarge = String(e.message ?? e);
        }
        return out;
      });
      assert(/not a GGUF file or a single-file lowbit model/.test(msgs.garbage), `garbage: ${msgs.garbage}`);
      assert(/corrupt or truncated lowbit pack/.test(msgs.truncatedPack), `pack: ${msgs.truncatedPack}`);
      assert(/corrupt or truncated GGUF/.test(msgs.truncatedGguf), `gguf: ${msgs.truncatedGguf}`);
      assert(/4096 MiB/.test(msgs.tooLarge), `too large: ${msgs.tooLarge}`);
      return { messages: msgs };
    });

    if (!haveModel) {
      skip("smollm2", `no native fixtures (run: python wasm/test/prepare.py DIR, then --fixtures DIR)`);
      return;
    }
    const native = JSON.parse(readFileSync(join(fixtures, "native.json"), "utf8"));
    for (const v of variants) {
      // (b) greedy tokens equal the native build's; (c) perplexity within 1e-4
      await check(`smollm2-w4-${v}`, async () => {
        const r = await page.evaluate(
          async ({ v, native }) => {
            const t0 = performance.now();
            const m = await window.lowbit.Model.load("/fixtures/smollm2-w4.lowbit", { variant: v });
            const loadSeconds = (performance.now() - t0) / 1000;
            const streamed = [];
            const g = m.generate(native.prompt, {
              maxNewTokens: native.max_new_tokens,
              onToken: (text, id) => {
                streamed.push(id);
              },
            });
            const p = m.perplexity(native.perplexity_text, { window: native.window, windows: native.windows });
            const truncated = await fetch("/fixtures/smollm2-w4.lowbit").then((r) => r.arrayBuffer());
            let refused = "";
            try {
              await window.lowbit.Model.load(new Uint8Array(truncated, 0, truncated.byteLength - 1000), { variant: v });
            } catch (e) {
              refused = String(e.message ?? e);
            }
            const level = m.kernelLevel;
            m.free();
            return { tokens: g.tokens, text: g.text, streamed, ppl: p.perplexity, level, loadSeconds, refused };
          },
          { v, native },
        );
        assert(JSON.stringify(r.tokens) === JSON.stringify(native.tokens), `tokens ${r.tokens} != native ${native.tokens}`);
        assert(JSON.stringify(r.streamed) === JSON.stringify(native.tokens), `streamed tokens differ: ${r.streamed}`);
        const rel = Math.abs(r.ppl - native.perplexity) / native.perplexity;
        assert(rel <= 1e-4, `perplexity ${r.ppl} vs native ${native.perplexity} (relative ${rel})`);
        assert(/corrupt or truncated/.test(r.refused), `a truncated pack was not refused clearly: ${r.refused}`);
        return { level: r.level, text: r.text, ppl: r.ppl, nativePpl: native.perplexity, relDiff: rel, loadSeconds: r.loadSeconds };
      });
    }

    if (bench) {
      for (const v of variants) {
        const r = await page.evaluate(
          async ({ v, prompt, n }) => {
            const t0 = performance.now();
            const m = await window.lowbit.Model.load("/fixtures/smollm2-w4.lowbit", { variant: v });
            const load = (performance.now() - t0) / 1000;
            m.generate(prompt, { maxNewTokens: 4 }); // warm up
            const times = [];
            const start = performance.now();
            const g = m.generate(prompt, { maxNewTokens: n, stopOnEos: false, onToken: () => times.push(performance.now()) });
            const first = (times[0] - start) / 1000;
            const decode = (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000);
            m.free();
            return { decode, prefill: g.promptTokens / first, first, load, tokens: g.tokens.length };
          },
          { v, prompt: native.prompt.repeat(8), n: native.bench_tokens ?? 64 },
        );
        report({
          runtime: "lowbit-wasm-st",
          variant: v,
          decode_tok_s: r.decode,
          prefill_tok_s: r.prefill,
          first_token_s: r.first,
          load_s: r.load,
        });
      }
      if (native.bench) {
        report({ runtime: "lowbit-native", threads: 1, ...native.bench });
      }
    }
  } finally {
    await browser.close();
    server.close();
  }
}

await main();
if (failed) process.exit(1);
if (skipped) process.exit(77);
