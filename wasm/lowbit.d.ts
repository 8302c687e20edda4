// Types of lowbit.js (the bindings' own types are in pkg/<variant>/lowbit_wasm.d.ts).

/**
 * A build of the module: threads (relaxed SIMD on shared memory with Web Workers; needs a
 * cross-origin isolated page and a worker), relaxed SIMD (Chromium, Firefox 146+) or plain
 * SIMD128 (everywhere).
 */
export type Variant = "threads" | "relaxed" | "simd128";

export interface LoadProgress {
  loaded: number;
  total: number;
  /** Where the bytes come from (URLs): the Cache API or the network. */
  from?: "cache" | "network";
}

export interface LoadInfo {
  from: "cache" | "network" | "file" | "memory";
  /** The file is in the Cache API now. */
  cached: boolean;
  /** Why it could not be cached (e.g. "QuotaExceededError: ..."); the model then lives in memory only. */
  cacheError?: string;
  bytes: number;
  /** Wall time of the whole load, runtime included. */
  seconds: number;
}

export interface LoadOptions {
  onProgress?: (p: LoadProgress) => void;
  /** Force a build (default: the best this engine validates). */
  variant?: Variant;
  /** Threads of the threaded build (default: the cores, at most 8). */
  threads?: number;
  /** Cache a URL's file in the Cache API (default true; a string names the cache; false: never). */
  cache?: boolean | string;
}

export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0 = greedy. */
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  /** Stop at the end-of-sequence token (default true). */
  stopOnEos?: boolean;
  /** Called for every new token with the text it completed; return false to stop. */
  onToken?: (text: string, tokenId: number) => boolean | void;
  signal?: AbortSignal;
}

export interface Generation {
  tokens: number[];
  text: string;
  stopReason: "max_tokens" | "eos" | "stop_string" | "callback" | "context_full";
  promptTokens: number;
  prefillSeconds: number;
  decodeSeconds: number;
}

export interface ChatMessage {
  role: string;
  content: string;
}

export interface PerplexityOptions {
  /** Tokens per window (default 2048). */
  window?: number;
  /** Windows scored (default 32; 0 = every full window). */
  windows?: number;
}

export interface PerplexityResult {
  perplexity: number;
  nll: number;
  tokens: number;
  windows: number;
  windowNll: number[];
  seconds: number;
}

export interface ModelInfo {
  config: Record<string, unknown>;
  kernelLevel: string;
  weightBytes: number;
  hasTokenizer: boolean;
  hasChatTemplate: boolean;
}

export type ModelSource = string | URL | Blob | ArrayBuffer | ArrayBufferView;

export declare function supportedVariants(): Variant[];
export declare function init(variant?: Variant, options?: { threads?: number }): Promise<unknown>;
/** Whether the threaded build can run here (cross-origin isolated, in a worker, relaxed SIMD). */
export declare function canUseThreads(): boolean;
export declare const CACHE_NAME: string;
/** Removes the models `Model.load` cached. */
export declare function clearCache(name?: string): Promise<boolean>;
export declare function kernelSelfCheck(variant?: Variant): Promise<string>;

export declare class Model {
  private constructor();
  /** A GGUF file or a single-file lowbit model (`lowbit-pack DIR OUT`). */
  static load(source: ModelSource, options?: LoadOptions): Promise<Model>;
  readonly info: ModelInfo;
  /** How the last load got its file. */
  loadInfo: LoadInfo;
  readonly kernelLevel: string;
  /** Threads the products run on (1 but in the threaded build). */
  readonly threads: number;
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  decode(ids: number[]): string;
  generate(prompt: string, options?: GenerateOptions): Generation;
  chat(messages: ChatMessage[], options?: GenerateOptions): Generation;
  perplexity(text: string, options?: PerplexityOptions): PerplexityResult;
  free(): void;
}

export interface QuantizeProgress {
  /** "load", "calibrate", "blocks", "write", ... */
  phase: string;
  done: number;
  total: number;
  /** Set on metric events (e.g. "loss" of the last block). */
  metric?: string;
  value?: number;
}

export interface QuantizeOptions {
  /** "rtn" (default) or "gptq" (needs calibText); any `lowbit quantize` method works. */
  method?: string;
  /** Default 4. */
  bits?: number;
  /** Default 128. */
  groupSize?: number;
  /** Calibration text for the calibrated methods (GPTQ). */
  calibText?: string;
  onProgress?: (p: QuantizeProgress) => void;
  /** Any other `lowbit quantize` option, camelCase (nsamples, seqlen, actOrder, ...). */
  [option: string]: unknown;
}

export interface Quantized {
  /** The single-file lowbit model: `Model.load(bytes)`, or offer it as a download. */
  bytes: Uint8Array;
  /** lowbit_manifest.json. */
  manifest: Record<string, unknown>;
}

/** Quantizes a GGUF or packed Hugging Face model (f32/f16/bf16) in the page (loads pkg/quantize/ on first use). */
export declare function quantize(input: ModelSource, options?: QuantizeOptions): Promise<Quantized>;
/** Packs a model directory's files (config.json, safetensors, tokenizer files) into one file. */
export declare function packFiles(files: File[] | FileList | Map<string, ModelSource> | Record<string, ModelSource>): Promise<Uint8Array>;
export declare function initQuantize(): Promise<unknown>;
