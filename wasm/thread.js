// A worker of lowbit's threaded build: instantiates the module on the shared memory it is sent,
// says "ready", then runs the one thread it is handed (a loop that never returns).
import init, { threadEntry } from "./pkg/threads/lowbit_wasm.js";

self.onmessage = async ({ data }) => {
  if (data.module) {
    try {
      await init({ module_or_path: data.module, memory: data.memory });
      self.postMessage("ready");
    } catch (e) {
      self.postMessage(String(e?.message ?? e));
    }
  } else {
    threadEntry(data.id);
  }
};
