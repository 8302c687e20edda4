#!/usr/bin/env node
// lowbit-pack DIR OUT: packs a model directory (lowbit's own output, or a Hugging Face one) into
// the single file lowbit's wasm build loads (format: crates/lowbit-model/src/bytes.rs; the same
// as lowbit_model::bytes::pack_dir writes).
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const TEXT_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];

export function packDir(dir) {
  if (!existsSync(join(dir, "config.json"))) throw new Error(`${dir}: no config.json`);
  const names = TEXT_FILES.filter((n) => existsSync(join(dir, n)));
  if (existsSync(join(dir, "model.safetensors"))) {
    names.push("model.safetensors");
  } else if (existsSync(join(dir, "model.safetensors.index.json"))) {
    names.push("model.safetensors.index.json");
    const index = JSON.parse(readFileSync(join(dir, "model.safetensors.index.json"), "utf8"));
    const shards = [...new Set(Object.values(index.weight_map ?? {}))].sort();
    for (const s of shards) {
      if (typeof s !== "string" || s.includes("/") || s.startsWith(".")) throw new Error(`bad shard name ${s}`);
      names.push(s);
    }
  } else {
    throw new Error(`${dir}: no model.safetensors or model.safetensors.index.json`);
  }
  const files = [];
  const parts = [];
  let at = 0;
  for (const name of names) {
    const bytes = readFileSync(join(dir, name));
    const pad = (8 - (at % 8)) % 8;
    if (pad) parts.push(Buffer.alloc(pad));
    at += pad;
    files.push({ name, offset: at, len: bytes.length });
    parts.push(bytes);
    at += bytes.length;
  }
  const index = Buffer.from(JSON.stringify({ version: 1, files }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(index.length));
  return Buffer.concat([Buffer.from("LOWBITPK"), len, index, ...parts]);
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith("lowbit-pack.mjs")) {
  const [dir, out] = process.argv.slice(2);
  if (!dir || !out) {
    console.error("usage: lowbit-pack DIR OUT");
    process.exit(2);
  }
  const bytes = packDir(dir);
  writeFileSync(out, bytes);
  console.log(`${out}: ${bytes.length} bytes`);
}
