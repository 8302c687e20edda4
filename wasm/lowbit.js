// lowbit in the browser: a thin wrapper over the wasm-bindgen glue of the two builds in pkg/
// (simd128 runs on every engine with SIMD128; relaxed adds relaxed SIMD, which Safari rejects
// at validation, so it is a separate module picked by feature detection).

const SIMD128 = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);
// (func (result v128) i32.const 1 i8x16.splat i32.const 2 i8x16.splat i8x16.relaxed_swizzle)
const RELAXED = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 15, 1, 13, 0, 65, 1, 253, 15, 65, 2, 253,
  15, 253, 128, 2, 11,
]);

/** The builds this engine can run, best first. */
export function supportedVariants() {
  const out = [];
  if (WebAssembly.validate(RELAXED)) out.push("relaxed");
  if (WebAssembly.validate(SIMD128)) out.push("simd128");
  return out;
}

const loaded = new Map();

/**
 * Loads (once) and returns the bindings of `variant` ("relaxed", "simd128"; default: the best
 * this engine supports).
 */
export async function init(variant) {
  const v = variant ?? supportedVariants()[0];
  if (!v) throw new Error("lowbit needs WebAssembly SIMD128 (Chrome 91+, Firefox 89+, Safari 16.4+)");
  if (!supportedVariants().includes(v)) throw new Error(`this engine cannot run the ${v} build of lowbit`);
  if (!loaded.has(v)) {
    loaded.set(
      v,
      (async () => {
        const glue =
          v === "relaxed"
            ? await import("./pkg/relaxed/lowbit_wasm.js")
            : await import("./pkg/simd128/lowbit_wasm.js");
        const url = new URL(`./pkg/${v}/lowbit_wasm_bg.wasm`, import.meta.url);
        await glue.default({ module_or_path: url });
        return glue;
      })(),
    );
  }
  return loaded.get(v);
}

/** Reads `source` (URL, string URL, Blob/File, ArrayBuffer, typed array) into a Uint8Array. */
async function readBytes(source, onProgress, checkSize) {
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
    const res = await fetch(source);
    if (!res.ok) throw new Error(`fetching ${source}: HTTP ${res.status}`);
    const total = Number(res.headers.get("content-length") ?? 0);
    if (total) checkSize(total);
    if (!res.body || !total) {
      const bytes = new Uint8Array(await res.arrayBuffer());
      checkSize(bytes.byteLength);
      onProgress?.({ loaded: bytes.byteLength, total: bytes.byteLength });
      return bytes;
    }
    // Stream into one buffer of the announced size (no second copy of the file).
    const bytes = new Uint8Array(total);
    const reader = res.body.getReader();
    let at = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (at + value.byteLength > total) throw new Error(`${source}: more bytes than its Content-Length ${total}`);
      bytes.set(value, at);
      at += value.byteLength;
      onProgress?.({ loaded: at, total });
    }
    if (at !== total) throw new Error(`${source}: truncated download (${at} of ${total} bytes)`);
    return bytes;
  }
  throw new TypeError("Model.load takes a URL, a Blob/File, an ArrayBuffer or a Uint8Array");
}

export class Model {
  #inner;
  #glue;

  constructor(inner, glue) {
    this.#inner = inner;
    this.#glue = glue;
  }

  /**
   * Loads a GGUF file or a single-file lowbit model (made by `lowbit-pack DIR OUT`).
   * A file too large for the wasm memory is refused before it is copied in.
   */
  static async load(source, { onProgress, variant } = {}) {
    const glue = await init(variant);
    const bytes = await readBytes(source, onProgress, (n) => glue.checkFileSize(n));
    return new Model(glue.Model.fromBytes(bytes), glue);
  }

  /** Config, kernel level, weight bytes. */
  get info() {
    return JSON.parse(this.#inner.info());
  }

  /** The kernel level of the build in use ("relaxed-simd" or "simd128"). */
  get kernelLevel() {
    return this.#glue.kernelLevel();
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

/** Runs the kernel checks of a build (test use): a summary, or throws on a mismatch. */
export async function kernelSelfCheck(variant) {
  const glue = await init(variant);
  return glue.kernelSelfCheck();
}
