// Drive the official @fal-ai/client, configured only with proxyUrl, against a local server.
// Usage: node fal_js_driver.mjs PROXY_URL < ARGUMENTS_JSON  (FAL_KEY, NODE_EXTRA_CA_CERTS in env)
// Node is not a browser, so the proxy is asked for "always" (a browser proxies by default).
import { readFileSync } from "node:fs";

import { fal } from "@fal-ai/client";

const [proxyUrl] = process.argv.slice(2);
const input = JSON.parse(readFileSync(0, "utf8"));
const APP = "fal-ai/chrono-edit-lora-gallery/upscaler";

fal.config({ proxyUrl: { url: proxyUrl, when: "always" } });

const updates = [];
const subscribed = await fal.subscribe(APP, {
  input,
  logs: true,
  pollInterval: 100,
  onQueueUpdate: (update) => {
    updates.push({ status: update.status, logs: (update.logs ?? []).map((l) => l.message) });
  },
});

const { request_id: requestId } = await fal.queue.submit(APP, { input });
let status;
for (;;) {
  status = await fal.queue.status(APP, { requestId, logs: true });
  if (status.status === "COMPLETED") break;
  await new Promise((resolve) => setTimeout(resolve, 100));
}
const result = await fal.queue.result(APP, { requestId });

let validation = null;
try {
  await fal.subscribe(APP, { input: { ...input, upscale_factor: 9 } });
} catch (error) {
  validation = { status: error.status, name: error.constructor.name, body: error.body };
}

console.log(
  JSON.stringify({
    subscribed: { data: subscribed.data, requestId: subscribed.requestId },
    updates,
    queued: { requestId, status, data: result.data, resultRequestId: result.requestId },
    validation,
  }),
);
