// Types of lowbit.js (the bindings' own types are in pkg/<variant>/lowbit_wasm.d.ts).

/** A build of the module: relaxed SIMD (Chromium, Firefox 146+) or plain SIMD128 (everywhere). */
export type Variant = "relaxed" | "simd128";

export interface LoadProgress {
  loaded: number;
  total: number;
}

export interface LoadOptions {
  onProgress?: (p: LoadProgress) => void;
  /** Force a build (default: the best this engine validates). */
  variant?: Variant;
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
export declare function init(variant?: Variant): Promise<unknown>;
export declare function kernelSelfCheck(variant?: Variant): Promise<string>;

export declare class Model {
  private constructor();
  /** A GGUF file or a single-file lowbit model (`lowbit-pack DIR OUT`). */
  static load(source: ModelSource, options?: LoadOptions): Promise<Model>;
  readonly info: ModelInfo;
  readonly kernelLevel: string;
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  decode(ids: number[]): string;
  generate(prompt: string, options?: GenerateOptions): Generation;
  chat(messages: ChatMessage[], options?: GenerateOptions): Generation;
  perplexity(text: string, options?: PerplexityOptions): PerplexityResult;
  free(): void;
}
