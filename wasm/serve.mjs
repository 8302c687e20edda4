#!/usr/bin/env node
// A static server on 127.0.0.1 for the package and its tests: .wasm as application/wasm, and
// COOP/COEP so pages are cross-origin isolated (SharedArrayBuffer, for the threaded build).
//   node serve.mjs [ROOT] [PORT] [--mount /models=DIR]
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".ts": "text/plain; charset=utf-8",
  ".css": "text/css; charset=utf-8",
};

/** Serves `root` (and each `mounts[prefix] = dir`) on 127.0.0.1:`port` (0: any free port). */
export function serve(root, port = 0, mounts = {}) {
  const server = createServer((req, res) => {
    let path = decodeURIComponent(new URL(req.url, "http://127.0.0.1").pathname);
    // The demo page is the site's front page; a directory serves its index.html.
    if (path === "/") {
      res.writeHead(302, { Location: "/www/" }).end();
      return;
    }
    if (path.endsWith("/")) path += "index.html";
    let base = resolve(root);
    let rel = path;
    for (const [prefix, dir] of Object.entries(mounts)) {
      if (path.startsWith(prefix + "/")) {
        base = resolve(dir);
        rel = path.slice(prefix.length);
      }
    }
    const file = normalize(join(base, rel));
    res.setHeader("Cross-Origin-Opener-Policy", "same-origin");
    res.setHeader("Cross-Origin-Embedder-Policy", "require-corp");
    res.setHeader("Cross-Origin-Resource-Policy", "same-origin");
    res.setHeader("Cache-Control", "no-store");
    let st;
    try {
      st = statSync(file);
    } catch {
      st = null;
    }
    if (!(file === base || file.startsWith(base + sep)) || !st?.isFile()) {
      res.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
      return;
    }
    res.writeHead(200, {
      "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
      "Content-Length": st.size,
    });
    createReadStream(file).pipe(res);
  });
  return new Promise((ok) => server.listen(port, "127.0.0.1", () => ok(server)));
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const mounts = {};
  const pos = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--mount") {
      const [prefix, dir] = args[++i].split("=");
      mounts[prefix] = dir;
    } else pos.push(args[i]);
  }
  const root = pos[0] ?? fileURLToPath(new URL(".", import.meta.url));
  const server = await serve(root, Number(pos[1] ?? 8080), mounts);
  console.log(`serving ${root} on http://127.0.0.1:${server.address().port}/ (the demo: /www/)`);
}
