// lowbit in the browser: a thin wrapper over the wasm-bindgen glue of the builds in pkg/
// (simd128 runs on every engine with SIMD128; relaxed adds relaxed SIMD, which Safari rejects
// at validation, so it is a separate module picked by feature detection; threads is relaxed on
// shared memory with Web Workers, picked in a cross-origin isolated worker; quantize is loaded
// only by quantize()).

const SIMD128 = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);
// (func (result v128) i32.const 1 i8x16.splat i32.const 2 i8x16.splat i8x16.relaxed_swizzle)
const RELAXED = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 15, 1, 13, 0, 65, 1, 253, 15, 65, 2, 253,
  15, 253, 128, 2, 11,
]);

/**
 * Whether this context can run the threaded build: shared memory (a cross-origin isolated page,
 * COOP/COEP) and a worker, since the page's own thread may not block on a lock.
 */
export function canUseThreads() {
  return (
    typeof SharedArrayBuffer !== "undefined" &&
    globalThis.crossOriginIsolated === true &&
    typeof WorkerGlobalScope !== "undefined" &&
    globalThis instanceof WorkerGlobalScope &&
    WebAssembly.validate(RELAXED)
  );
}

/** The builds this engine can run here, best first. */
export function supportedVariants() {
  const out = [];
  if (canUseThreads()) out.push("threads");
  if (WebAssembly.validate(RELAXED)) out.push("relaxed");
  if (WebAssembly.validate(SIMD128)) out.push("simd128");
  return out;
}

const loaded = new Map();
/** Threads of the threaded build once started (its pools are global to the module). */
let threadCount = 1;

/**
 * Starts `count` idle workers on the threaded module's memory, then lets the module hand them
 * its threads (`globalThis.lowbitSpawnThread`, called from Rust).
 */
async function startThreads(glue, threads) {
  const [module, memory] = glue.threadSetup();
  const idle = [];
  const count = 2 * threads - 1; // rayon's workers and the decode pool's (the caller is one)
  await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise((ok, fail) => {
          const w = new Worker(new URL("./thread.js", import.meta.url), { type: "module" });
          w.onmessage = (e) => {
            if (e.data === "ready") {
              idle.push(w);
              ok();
            } else fail(new Error(`lowbit thread: ${e.data}`));
          };
          w.onerror = (e) => fail(new Error(`a lowbit thread failed to start: ${e.message}`));
          w.postMessage({ module, memory });
        }),
    ),
  );
  globalThis.lowbitSpawnThread = (id) => {
    const w = idle.shift();
    if (!w) throw new Error("no idle worker left");
    w.postMessage({ id });
  };
  return glue.initThreadPool(threads);
}

/**
 * Loads (once) and returns the bindings of `variant` ("threads", "relaxed", "simd128"; default:
 * the best this engine supports here). The threaded build runs `threads` threads (default: the
 * cores, at most 8).
 */
export async function init(variant, { threads } = {}) {
  const v = variant ?? supportedVariants()[0];
  if (!v) throw new Error("lowbit needs WebAssembly SIMD128 (Chrome 91+, Firefox 89+, Safari 16.4+)");
  if (!supportedVariants().includes(v)) throw new Error(`this engine cannot run the ${v} build of lowbit`);
  if (!loaded.has(v)) {
    loaded.set(
      v,
      (async () => {
        const glue =
          v === "threads"
            ? await import("./pkg/threads/lowbit_wasm.js")
            : v === "relaxed"
              ? await import("./pkg/relaxed/lowbit_wasm.js")
              : await import("./pkg/simd128/lowbit_wasm.js");
        const url = new URL(`./pkg/${v}/lowbit_wasm_bg.wasm`, import.meta.url);
        await glue.default({ module_or_path: url });
        if (v === "threads") {
          threadCount = await startThreads(glue, threads ?? Math.min(navigator.hardwareConcurrency || 4, 8));
        }
        return glue;
      })(),
    );
  }
  return loaded.get(v);
}

/** The Cache API cache models downloaded by URL are kept in. */
export const CACHE_NAME = "lowbit-models-v1";

/** Streams a response into one buffer of its announced size, with progress. */
async function readResponse(res, label, onProgress, checkSize, from) {
  const total = Number(res.headers.get("content-length") ?? 0);
  if (total) checkSize(total);
  if (!res.body || !total) {
    const bytes = new Uint8Array(await res.arrayBuffer());
    checkSize(bytes.byteLength);
    onProgress?.({ loaded: bytes.byteLength, total: bytes.byteLength, from });
    return bytes;
  }
  // One buffer of the announced size: no second copy of the file.
  const bytes = new Uint8Array(total);
  const reader = res.body.getReader();
  let at = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.byteLength > total) throw new Error(`${label}: more bytes than its Content-Length ${total}`);
    bytes.set(value, at);
    at += value.byteLength;
    onProgress?.({ loaded: at, total, from });
  }
  if (at !== total) throw new Error(`${label}: truncated download (${at} of ${total} bytes)`);
  return bytes;
}

/**
 * Reads a model URL: from the Cache API when it holds it, else from the network, then stores it
 * there. A cache that cannot be opened or refuses the file (QuotaExceededError) leaves the model
 * in memory only. Returns `{ bytes, from: "cache" | "network", cached, cacheError }`.
 */
async function readUrl(source, onProgress, checkSize, cacheOpt) {
  const url = new URL(source, globalThis.location?.href).href;
  let cache = null;
  let cacheError;
  if (cacheOpt !== false && typeof caches !== "undefined") {
    try {
      cache = await caches.open(typeof cacheOpt === "string" ? cacheOpt : CACHE_NAME);
    } catch (e) {
      cacheError = `${e?.name ?? "Error"}: ${e?.message ?? e}`;
    }
  }
  const hit = cache && (await cache.match(url));
  if (hit) {
    return { bytes: await readResponse(hit, url, onProgress, checkSize, "cache"), from: "cache", cached: true };
  }
  const res = await fetch(url);
  if (!res.ok) throw new Error(`fetching ${url}: HTTP ${res.status}`);
  const bytes = await readResponse(res, url, onProgress, checkSize, "network");
  let cached = false;
  if (cache) {
    const headers = { "content-type": "application/octet-stream", "content-length": String(bytes.byteLength) };
    try {
      await cache.put(url, new Response(bytes, { headers }));
      cached = true;
    } catch (e) {
      // Over quota (or private mode): keep going from memory.
      cacheError = `${e?.name ?? "Error"}: ${e?.message ?? e}`;
    }
  }
  return { bytes, from: "network", cached, cacheError };
}

/** Removes every model kept in the Cache API by `Model.load`. */
export async function clearCache(name = CACHE_NAME) {
  return typeof caches === "undefined" ? false : caches.delete(name);
}

/** Reads `source` (URL, string URL, Blob/File, ArrayBuffer, typed array) into a Uint8Array. */
async function readBytes(source, onProgress, checkSize, cacheOpt = false) {
  if (source instanceof Uint8Array) {
    checkSize(source.byteLength);
    return source;
  }
  if (source instanceof ArrayBuffer) {
    checkSize(source.byteLength);
    return new Uint8Array(source);
  }
  if (ArrayBuffer.isView(source)) {
    checkSize(source.byteLength);
    return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  }
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    checkSize(source.size);
    onProgress?.({ loaded: 0, total: source.size });
    const bytes = new Uint8Array(await source.arrayBuffer());
    onProgress?.({ loaded: bytes.byteLength, total: bytes.byteLength });
    return bytes;
  }
  if (typeof source === "string" || source instanceof URL) {
    return (await readUrl(source, onProgress, checkSize, cacheOpt)).bytes;
  }
  throw new TypeError("Model.load takes a URL, a Blob/File, an ArrayBuffer or a Uint8Array");
}

export class Model {
  #inner;
  #glue;
  /** Where the last load read the file: `{ from: "cache" | "network" | "file" | "memory", cached, cacheError?, bytes, seconds }`. */
  loadInfo;

  constructor(inner, glue) {
    this.#inner = inner;
    this.#glue = glue;
  }

  /**
   * Loads a GGUF file or a single-file lowbit model (made by `lowbit-pack DIR OUT`).
   * A file too large for the wasm memory is refused before it is copied in.
   */
  static async load(source, { onProgress, variant, threads, cache = true } = {}) {
    const t0 = performance.now();
    const glue = await init(variant, { threads });
    const checkSize = (n) => glue.checkFileSize(n);
    let origin = { from: "memory", cached: false };
    let bytes;
    if (typeof source === "string" || source instanceof URL) {
      const r = await readUrl(source, onProgress, checkSize, cache);
      bytes = r.bytes;
      origin = { from: r.from, cached: r.cached, cacheError: r.cacheError };
    } else {
      bytes = await readBytes(source, onProgress, checkSize);
      origin.from = typeof Blob !== "undefined" && source instanceof Blob ? "file" : "memory";
    }
    const model = new Model(glue.Model.fromBytes(bytes), glue);
    model.loadInfo = { ...origin, bytes: bytes.byteLength, seconds: (performance.now() - t0) / 1000 };
    return model;
  }

  /** Config, kernel level, weight bytes. */
  get info() {
    return JSON.parse(this.#inner.info());
  }

  /** The kernel level of the build in use ("relaxed-simd" or "simd128"). */
  get kernelLevel() {
    return this.#glue.kernelLevel();
  }

  /** Threads the products run on (1 but in the threaded build). */
  get threads() {
    return this.#glue.initThreadPool ? threadCount : 1;
  }

  encode(text, { addSpecialTokens = false } = {}) {
    return Array.from(this.#inner.encode(text, addSpecialTokens));
  }

  decode(ids) {
    return this.#inner.decode(Uint32Array.from(ids));
  }

  /**
   * Generates from `prompt`; `onToken(text, tokenId)` sees every new token (return false, or
   * abort `signal`, to stop). Greedy when `temperature` is 0.
   */
  generate(
    prompt,
    { maxNewTokens = 128, temperature = 0, topP = 1, topK = 0, seed = 0, stopOnEos = true, onToken, signal } = {},
  ) {
    signal?.throwIfAborted?.();
    const cb = (text, id) => {
      if (signal?.aborted) return false;
      return onToken ? onToken(text, id) !== false : true;
    };
    return JSON.parse(this.#inner.generate(prompt, maxNewTokens, temperature, topP, topK, seed >>> 0, stopOnEos, cb));
  }

  /** `generate` on `messages` ([{role, content}]) rendered with the model's chat template. */
  chat(messages, options = {}) {
    return this.generate(this.#inner.chatPrompt(JSON.stringify(messages)), options);
  }

  /**
   * Perplexity under lowbit's protocol: `text` tokenized whole (no special tokens), the first
   * `windows` windows of `window` tokens (0: every full window).
   */
  perplexity(text, { window = 2048, windows = 32 } = {}) {
    return JSON.parse(this.#inner.perplexity(text, window, windows));
  }

  /** Frees the model's wasm memory. */
  free() {
    this.#inner.free();
  }
}

let quantizeGlue;

/**
 * Loads (once) the quantization module (pkg/quantize/: the inference runtime plus lowbit's
 * quantization pipeline and solvers). It is separate so pages that only run models never
 * download the solvers.
 */
export async function initQuantize() {
  quantizeGlue ??= (async () => {
    const glue = await import("./pkg/quantize/lowbit_wasm.js");
    await glue.default({ module_or_path: new URL("./pkg/quantize/lowbit_wasm_bg.wasm", import.meta.url) });
    return glue;
  })();
  return quantizeGlue;
}

const PACK_TEXT_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];

/**
 * Packs a model directory's files into the single file `Model.load` and `quantize` read (format:
 * crates/lowbit-model/src/bytes.rs). `files`: a FileList/array of File (e.g. from
 * `<input type=file multiple>`), or an object/Map of name -> bytes.
 */
export async function packFiles(files) {
  const byName = new Map();
  if (files instanceof Map) for (const [k, v] of files) byName.set(k, v);
  else if (Array.isArray(files) || (typeof FileList !== "undefined" && files instanceof FileList))
    for (const f of files) byName.set(f.name, f);
  else for (const [k, v] of Object.entries(files)) byName.set(k, v);
  const read = async (v) => (v instanceof Blob ? new Uint8Array(await v.arrayBuffer()) : await readBytes(v, undefined, () => {}));
  if (!byName.has("config.json")) throw new Error("packFiles: no config.json among the files");
  const names = PACK_TEXT_FILES.filter((n) => byName.has(n));
  if (byName.has("model.safetensors")) names.push("model.safetensors");
  else if (byName.has("model.safetensors.index.json")) {
    names.push("model.safetensors.index.json");
    const index = JSON.parse(new TextDecoder().decode(await read(byName.get("model.safetensors.index.json"))));
    for (const s of [...new Set(Object.values(index.weight_map ?? {}))].sort()) {
      if (!byName.has(s)) throw new Error(`packFiles: no ${s}, which the index lists`);
      names.push(s);
    }
  } else throw new Error("packFiles: no model.safetensors or model.safetensors.index.json");
  const parts = [];
  const entries = [];
  let at = 0;
  for (const name of names) {
    const bytes = await read(byName.get(name));
    at += (8 - (at % 8)) % 8;
    entries.push({ name, offset: at, len: bytes.byteLength });
    parts.push([at, bytes]);
    at += bytes.byteLength;
  }
  const index = new TextEncoder().encode(JSON.stringify({ version: 1, files: entries }));
  const out = new Uint8Array(16 + index.byteLength + at);
  out.set(new TextEncoder().encode("LOWBITPK"));
  new DataView(out.buffer).setBigUint64(8, BigInt(index.byteLength), true);
  out.set(index, 16);
  for (const [off, bytes] of parts) out.set(bytes, 16 + index.byteLength + off);
  return out;
}

/**
 * Quantizes a model in the page: `input` is a GGUF or a single-file lowbit model (`packFiles` of
 * a Hugging Face directory with f32/f16/bf16 safetensors), as bytes, a Blob or a URL. Runs the
 * native pipeline (same files as `lowbit quantize`): `method` "rtn" or "gptq" (any method and
 * option of `lowbit quantize`, in camelCase, is passed on), `calibText` the calibration text of
 * GPTQ. Returns `{ bytes, manifest }`: the single-file lowbit model (`Model.load(bytes)`, or a
 * download) and `lowbit_manifest.json`.
 */
export async function quantize(input, { method = "rtn", bits = 4, groupSize = 128, calibText, onProgress, ...rest } = {}) {
  const glue = await initQuantize();
  const bytes = await readBytes(input, undefined, (n) => glue.checkFileSize(n));
  const options = { method, bits, groupSize, ...rest };
  if (calibText !== undefined) options.calibText = calibText;
  const q = glue.quantize(bytes, JSON.stringify(options), onProgress);
  try {
    return { bytes: q.takePack(), manifest: JSON.parse(q.manifest) };
  } finally {
    q.free();
  }
}

/** Runs the kernel checks of a build (test use): a summary, or throws on a mismatch. */
export async function kernelSelfCheck(variant) {
  const glue = await init(variant);
  return glue.kernelSelfCheck();
}
