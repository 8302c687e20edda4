// The demo page: all model work runs in worker.js, so the page keeps drawing while a model loads,
// generates or quantizes. URL parameters: ?model=URL (load it at once), &prompt=TEXT (then send
// it; &max=N tokens), ?tab=quantize, ?quantize=URL (the quantize tab's input).
const $ = (id) => document.getElementById(id);
const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
let nextId = 1;
const pending = new Map();

/** Sends a request to the worker; `onEvent` sees its progress and token messages. */
function request(msg, onEvent, transfer) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onEvent });
    worker.postMessage({ id, ...msg }, transfer ?? []);
  });
}

worker.onmessage = ({ data }) => {
  if (data.type === "ready") {
    $("engine").textContent = `wasm: ${data.variants.join(", ")}${data.crossOriginIsolated ? ", cross-origin isolated" : ""}`;
    document.body.dataset.worker = "ready";
    return;
  }
  const p = pending.get(data.id);
  if (!p) return;
  if (data.type === "done") {
    pending.delete(data.id);
    p.resolve(data.result);
  } else if (data.type === "error") {
    pending.delete(data.id);
    p.reject(new Error(data.message));
  } else p.onEvent?.(data);
};

// ---- tabs
for (const b of document.querySelectorAll(".tab")) {
  b.onclick = () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === b);
    for (const s of document.querySelectorAll(".panel")) s.classList.toggle("active", s.id === b.dataset.tab);
  };
}

// ---- chat
const history = [];

async function loadModel(source, label) {
  $("send").disabled = true;
  $("load-status").textContent = `loading ${label} ...`;
  $("load-progress").value = 0;
  try {
    const r = await request({ type: "load", source }, (e) => {
      if (e.type === "progress" && e.total) $("load-progress").value = e.loaded / e.total;
    });
    $("load-progress").value = 1;
    const mib = (r.loadInfo.bytes / 2 ** 20).toFixed(1);
    $("load-status").textContent = `${label}: ${mib} MiB in ${r.loadInfo.seconds.toFixed(2)} s (${r.loadInfo.from}), ${r.kernelLevel}, ${r.threads} thread${r.threads > 1 ? "s" : ""}`;
    history.length = 0;
    $("log").textContent = "";
    $("send").disabled = false;
    document.body.dataset.model = "loaded";
  } catch (e) {
    $("load-status").textContent = `failed: ${e.message}`;
    document.body.dataset.model = "error";
  }
}

$("load-url").onclick = () => {
  const url = $("model-url").value.trim();
  if (url) loadModel(url, url.split("/").pop());
};
$("model-file").onchange = (e) => {
  const f = e.target.files[0];
  if (f) loadModel(f, f.name);
};

$("chat-form").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  $("send").disabled = true;
  history.push({ role: "user", content: text });
  const user = document.createElement("div");
  user.className = "msg user";
  user.textContent = text;
  const out = document.createElement("div");
  out.className = "msg assistant";
  $("log").append(user, out);
  document.body.dataset.tokens = "0";
  let n = 0;
  try {
    const r = await request({ type: "chat", messages: history, maxNewTokens: Number($("max-tokens").value) }, (ev) => {
      if (ev.type !== "token") return;
      out.textContent += ev.text;
      // Time from the page's navigation to its first token (the benchmark reads it).
      document.body.dataset.firstTokenMs ??= String(performance.now());
      document.body.dataset.tokens = String(++n);
      $("speed").textContent = `${n} tokens, ${ev.tokS.toFixed(1)} tok/s`;
      $("log").scrollTop = $("log").scrollHeight;
    });
    history.push({ role: "assistant", content: r.text });
    $("speed").textContent = `${r.tokens} tokens, ${r.decodeTokS.toFixed(1)} tok/s decode, first token ${r.firstTokenS.toFixed(2)} s (${r.stopReason})`;
    document.body.dataset.chat = "done";
  } catch (err) {
    out.textContent += ` [error: ${err.message}]`;
    document.body.dataset.chat = "error";
  }
  $("send").disabled = false;
};

// ---- quantize here
$("q-eval").value =
  "The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest structure in Paris. Its base is square, measuring 125 metres on each side. During its construction, the Eiffel Tower surpassed the Washington Monument to become the tallest man-made structure in the world.";
$("q-calib").value = $("q-eval").value;

$("q-run").onclick = async () => {
  const files = $("q-files").files;
  let source = $("q-url").value.trim();
  $("q-run").disabled = true;
  $("q-table").hidden = true;
  $("q-download").hidden = true;
  $("q-progress").value = 0;
  try {
    if (files.length === 1) source = files[0];
    else if (files.length > 1) {
      const { packFiles } = await import("../lowbit.js");
      source = await packFiles(files);
    }
    if (!source) throw new Error("give a model URL or files");
    $("q-status").textContent = "running ...";
    const r = await request(
      {
        type: "quantize",
        source,
        method: $("q-method").value,
        bits: Number($("q-bits").value),
        groupSize: Number($("q-group").value),
        calibText: $("q-calib").value,
        evalText: $("q-eval").value,
        prompt: $("q-prompt").value,
        maxNewTokens: Number($("q-max").value),
      },
      (e) => {
        if (e.type !== "progress") return;
        if (e.total) $("q-progress").value = (e.done ?? e.loaded) / e.total;
        $("q-status").textContent = `${e.phase ?? "loading"} ${e.done ?? e.loaded ?? ""}/${e.total ?? ""}`;
      },
    );
    const fmt = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    $("q-ppl-a").textContent = r.original.perplexity.toFixed(3);
    $("q-ppl-b").textContent = r.quantized.perplexity.toFixed(3);
    $("q-bytes-a").textContent = fmt(r.original.weightBytes);
    $("q-bytes-b").textContent = fmt(r.quantized.weightBytes);
    $("q-ans-a").textContent = r.original.answer;
    $("q-ans-b").textContent = r.quantized.answer;
    $("q-table").hidden = false;
    $("q-progress").value = 1;
    $("q-status").textContent = `quantized in ${r.seconds.toFixed(1)} s, ${fmt(r.packBytes)}`;
    const a = $("q-download");
    a.href = URL.createObjectURL(new Blob([r.bytes], { type: "application/octet-stream" }));
    a.hidden = false;
    document.body.dataset.quantize = "done";
  } catch (e) {
    $("q-status").textContent = `failed: ${e.message}`;
    document.body.dataset.quantize = "error";
  }
  $("q-run").disabled = false;
};

const params = new URLSearchParams(location.search);
if (params.get("tab") === "quantize") $("tab-quantize").click();
if (params.get("quantize")) $("q-url").value = params.get("quantize");
if (params.get("model")) {
  $("model-url").value = params.get("model");
  loadModel(params.get("model"), params.get("model").split("/").pop()).then(() => {
    // ?prompt=...: send it at once (time to first token of the page).
    if (params.get("prompt") && document.body.dataset.model === "loaded") {
      $("prompt").value = params.get("prompt");
      if (params.get("max")) $("max-tokens").value = params.get("max");
      $("chat-form").requestSubmit();
    }
  });
}
