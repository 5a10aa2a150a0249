// The operator page in headless Chromium (Debian's), driven by playwright-core,
// against the real binary on a free loopback port: log in, browse a pushed image
// and its referrer, a failed delivery redelivered to a receiver that checks the
// signature with the Standard Webhooks library, a collection run from the page,
// a non-administrator without webhook actions, an annotation carrying markup
// shown as text, and a cross-site form post refused. Screenshots of each view go
// to ANGOS_UI_SCREENSHOTS (default target/ui-screenshots).
//
// Run: node --test tests/ui/ (after `cargo build`; ANGOS_BIN names another binary,
// CHROMIUM another browser).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, pbkdf2Sync, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Webhook } from "standardwebhooks";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.ANGOS_BIN || join(ROOT, "target/debug/angos");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.ANGOS_UI_SCREENSHOTS || join(ROOT, "target/ui-screenshots");
const SOON = 15_000;
const PASSWORDS = { admin: "admin-secret-1", dev: "dev-secret-2" };
const MARKUP = `<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">`;

const secret = `whsec_${randomBytes(32).toString("base64")}`;
let work, registry, base, receiver, receiverPort, received, browser, gone;

// ---- helpers ------------------------------------------------------------------

function freePort() {
  return new Promise((done) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

// A PBKDF2 hash in the PHC form the registry reads, made with node's crypto.
function passwordHash(password) {
  const salt = randomBytes(16);
  const hash = pbkdf2Sync(password, salt, 10_000, 32, "sha256");
  const b64 = (bytes) => bytes.toString("base64").replace(/=+$/, "");
  return `$pbkdf2-sha256$i=10000,l=32$${b64(salt)}$${b64(hash)}`;
}

function sha256(bytes) {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

function basic(user) {
  return `Basic ${Buffer.from(`${user}:${PASSWORDS[user]}`).toString("base64")}`;
}

async function call(method, path, { user = "admin", body, type } = {}) {
  const headers = { Authorization: basic(user) };
  if (type) headers["Content-Type"] = type;
  const response = await fetch(`${base}${path}`, { method, headers, body });
  const text = await response.text();
  return { status: response.status, text, json: () => JSON.parse(text) };
}

async function pushBlob(name, bytes) {
  const digest = sha256(bytes);
  const answer = await call("POST", `/v2/${name}/blobs/uploads/?digest=${digest}`, { body: bytes, type: "application/octet-stream" });
  assert.equal(answer.status, 201, `blob push: ${answer.text}`);
  return { digest, size: bytes.length };
}

// Pushes `manifest` by tag, or by its digest when `reference` is null.
async function pushManifest(name, reference, manifest) {
  const bytes = Buffer.from(JSON.stringify(manifest));
  const target = reference ?? sha256(bytes);
  const answer = await call("PUT", `/v2/${name}/manifests/${target}`, { body: bytes, type: manifest.mediaType });
  assert.equal(answer.status, 201, `manifest push: ${answer.text}`);
  return { mediaType: manifest.mediaType, digest: sha256(bytes), size: bytes.length };
}

async function pushImage(name, tag, architecture, annotations) {
  const config = await pushBlob(name, Buffer.from(JSON.stringify({ architecture, os: "linux" })));
  const layer = await pushBlob(name, randomBytes(2048));
  return pushManifest(name, tag, {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layer }],
    annotations,
  });
}

async function until(what, probe) {
  const deadline = Date.now() + SOON;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`waited ${SOON} ms for ${what}`);
    await new Promise((done) => setTimeout(done, 100));
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

// A page whose console must stay free of errors (a policy violation included);
// a refused request (the 401 before logging in) is the page working as meant.
async function newPage(context) {
  const page = await context.newPage();
  page.errors = [];
  page.on("console", (message) => {
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) page.errors.push(message.text());
  });
  page.on("pageerror", (error) => page.errors.push(String(error)));
  return page;
}

async function logIn(page, user) {
  await page.goto(`${base}/ui/`);
  await page.fill("#login-user", user);
  await page.fill("#login-password", PASSWORDS[user]);
  await page.click("#login-submit");
  await page.waitForSelector("#repository-list");
}

// ---- the registry, its receiver, its content ------------------------------------

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  work = mkdtempSync(join(tmpdir(), "angos-ui-"));
  const port = await freePort();
  receiverPort = await freePort();
  // A receiver that has moved away for good: its 410 disables its webhook.
  gone = createServer((request, response) => {
    request.resume();
    request.on("end", () => response.writeHead(410).end());
  });
  await new Promise((done) => gone.listen(0, "127.0.0.1", done));
  base = `http://127.0.0.1:${port}`;
  writeFileSync(
    join(work, "config.toml"),
    `[server]
bind_address = "127.0.0.1"
port = ${port}

[blob_store.fs]
root_dir = ${JSON.stringify(join(work, "data"))}

[ui]
enabled = true
name = "Edge registry"

[auth]
administrators = ["admin"]

[auth.identity.admin]
username = "admin"
password = "${passwordHash(PASSWORDS.admin)}"

[auth.identity.dev]
username = "dev"
password = "${passwordHash(PASSWORDS.dev)}"

[global]
pull = ["authenticated"]
push = ["admin"]
event_webhooks = ["hooks", "retired"]

[event_webhook.hooks]
url = "http://127.0.0.1:${receiverPort}/hook"
policy = "async"
events = ["manifest.push"]
signing_secrets = ["${secret}"]
max_retries = 0
timeout_ms = 2000

[event_webhook.retired]
url = "http://127.0.0.1:${gone.address().port}/old"
policy = "async"
events = ["manifest.push"]
max_retries = 0
timeout_ms = 2000
`,
  );
  registry = spawn(BIN, ["-c", join(work, "config.toml"), "server"], { stdio: ["ignore", "inherit", "inherit"] });
  await until("the registry to answer", async () => (await fetch(`${base}/v2/`).catch(() => null))?.status === 401);

  // What the receiver got, once it is up (it is not, at first: deliveries fail).
  received = [];
  receiver = createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      received.push({ headers: request.headers, body: Buffer.concat(chunks).toString("utf8") });
      response.writeHead(204).end();
    });
  });

  // An image whose annotation is markup, an index of two platforms, and a
  // referrer (an SBOM) of the image.
  const image = await pushImage("team/app", "v1", "amd64", {
    "org.opencontainers.image.title": "app",
    "org.opencontainers.image.description": MARKUP,
  });
  const amd64 = await pushImage("team/app", "amd64", "amd64", {});
  const arm64 = await pushImage("team/app", "arm64", "arm64", {});
  await pushManifest("team/app", "multi", {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [
      { ...amd64, platform: { os: "linux", architecture: "amd64" } },
      { ...arm64, platform: { os: "linux", architecture: "arm64", variant: "v8" } },
    ],
  });
  const empty = await pushBlob("team/app", Buffer.from("{}"));
  const sbom = await pushBlob("team/app", Buffer.from(JSON.stringify({ spdxVersion: "SPDX-2.3" })));
  await pushManifest("team/app", null, {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    artifactType: "application/spdx+json",
    config: { mediaType: "application/vnd.oci.empty.v1+json", ...empty },
    layers: [{ mediaType: "application/spdx+json", ...sbom }],
    subject: image,
    annotations: { "org.example.kind": "sbom" },
  });
  await pushImage("other/tool", "latest", "amd64", {});

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  registry?.kill("SIGKILL");
  receiver?.close();
  gone?.close();
  rmSync(work, { recursive: true, force: true });
});

// ---- the views ------------------------------------------------------------------

test("an administrator logs in, finds the image, its tags, platforms and referrer; markup stays text", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await page.goto(`${base}/ui/`);
  await page.waitForSelector("#login-form");
  await page.fill("#login-user", "admin");
  await page.fill("#login-password", "wrong");
  await page.click("#login-submit");
  await page.waitForSelector("text=Wrong user or password.");
  await shot(page, "login");
  await logIn(page, "admin");
  assert.equal(await page.textContent("#registry-name"), "Edge registry");
  await page.waitForSelector("#repository-list >> text=team/app");
  await page.fill("#search", "tool");
  await page.waitForSelector("#repository-list >> text=other/tool");
  assert.equal(await page.locator("#repository-list >> text=team/app").count(), 0, "the search filters");
  await page.fill("#search", "");
  await shot(page, "repositories");

  await page.click("#repository-list >> text=team/app");
  await page.waitForSelector('#tags tr[data-tag="v1"]');
  const multi = page.locator('#tags tr[data-tag="multi"]');
  assert.match(await multi.textContent(), /linux\/amd64/);
  assert.match(await multi.textContent(), /linux\/arm64\/v8/);
  assert.match(await multi.textContent(), /image\.index/);
  await page.click('#tags tr[data-tag="v1"] >> text=Details');
  await page.waitForSelector("tr.referrer");
  assert.match(await page.locator("tr.referrer").textContent(), /application\/spdx\+json/);
  assert.match(await page.locator("tr.referrer").textContent(), /org\.example\.kind/);
  // The annotation is on the page as the very text it is, and ran nothing.
  await page.locator(".annotations dd", { hasText: MARKUP }).waitFor();
  assert.equal(await page.evaluate(() => window.pwned), undefined);
  assert.equal(await page.locator(".annotations img").count(), 0);
  const pull = await page.locator("input.command").first().inputValue();
  assert.equal(pull, `docker pull 127.0.0.1:${new URL(base).port}/team/app:v1`);
  await shot(page, "repository");
  assert.deepEqual(page.errors, []);
  await context.close();
});

test("a failed delivery to a dead receiver is redelivered from the page and verifies", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await logIn(page, "admin");
  await page.click("#nav-webhooks");
  const row = page.locator('tr[data-webhook="hooks"]');
  await row.waitFor();
  // Live: a push made while the page is open shows without a reload.
  const failedBefore = Number(await row.locator("td").nth(7).textContent());
  await pushImage("team/app", "live", "amd64", {});
  await until("the new failure on the page", async () => Number(await row.locator("td").nth(7).textContent()) > failedBefore);
  assert.match(await row.textContent(), /async/);
  await shot(page, "webhooks");

  await page.click('tr[data-webhook="hooks"] >> text=hooks');
  const failed = page.locator("tr.dead_letter, tr.failed").first();
  await failed.waitFor();
  await failed.locator("text=Request").click();
  const head = await page.locator("pre.request-head").first().textContent();
  assert.match(head, /^POST \/hook HTTP\/1\.1/);
  assert.match(head, /webhook-signature: \(elided\)/);
  assert.doesNotMatch(head, /v1,/, "no signature value on the page");
  assert.match(await page.locator("pre.request-body").first().textContent(), /"manifest.push"|manifest\.push/);
  await shot(page, "deliveries");

  // The receiver comes up; Redeliver sends the event again, signed.
  await new Promise((done) => receiver.listen(receiverPort, "127.0.0.1", done));
  await failed.locator("button.redeliver").click();
  const delivery = await until("the redelivery at the receiver", () => received[0]);
  // Throws unless the signature, id and timestamp check out.
  new Webhook(secret).verify(delivery.body, delivery.headers);
  assert.match(delivery.body, /manifest\.push/);
  await page.waitForSelector("tr.delivery.success");
  await shot(page, "redelivered");
  assert.deepEqual(page.errors, []);
  await context.close();
});

test("a webhook a 410 disabled is re-enabled from the page, and a test ping reports its answer", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await logIn(page, "admin");
  await page.click("#nav-webhooks");
  const retired = page.locator('tr[data-webhook="retired"]');
  await retired.locator("td.state", { hasText: /^disabled/ }).waitFor();
  await shot(page, "webhooks-disabled");
  await retired.locator("button.enable").click();
  await page.waitForSelector("#notice >> text=retired is enabled again.");
  await retired.locator("td.state", { hasText: /^enabled$/ }).waitFor();
  assert.equal(await retired.locator("button.enable").count(), 0, "no re-enable button once enabled");
  // The receiver of `hooks` is up since the redelivery test.
  await page.click('tr[data-webhook="hooks"] button.ping');
  await page.waitForSelector("#notice >> text=Ping to hooks: HTTP 204");
  await shot(page, "webhooks-ping");
  assert.deepEqual(page.errors, []);
  await context.close();
});

test("a collection runs from the storage page and its report shows", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await logIn(page, "admin");
  await page.click("#nav-storage");
  await page.waitForSelector("#space-used");
  assert.doesNotMatch(await page.textContent("#space-used"), /unknown/);
  await page.click("#run-gc");
  await page.waitForSelector("#gc-last");
  assert.match(await page.textContent("#gc-last"), /demand/);
  await shot(page, "storage");
  assert.deepEqual(page.errors, []);
  await context.close();
});

test("a non-administrator sees no webhook or storage actions, and the API refuses them", async () => {
  const context = await browser.newContext();
  const page = await newPage(context);
  await logIn(page, "dev");
  await page.waitForSelector("#repository-list >> text=team/app");
  for (const view of ["#nav-webhooks", "#nav-storage"]) {
    await page.click(view);
    await page.waitForSelector("#admins-only");
    assert.equal(await page.locator("button.redeliver, button.ping, button.enable, #run-gc").count(), 0);
  }
  await shot(page, "non-administrator");
  const refused = await page.evaluate(async () => {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem("angos-token")}`, "X-Angos-Page": "1" };
    const statuses = [];
    for (const path of ["/v2/_angos/webhooks/hooks/test", "/v2/_angos/gc", "/v2/_angos/webhooks/hooks/enable"]) {
      statuses.push((await fetch(path, { method: "POST", headers })).status);
    }
    statuses.push((await fetch("/v2/_angos/webhooks", { headers })).status);
    return statuses;
  });
  assert.deepEqual(refused, [403, 403, 403, 403]);
  await context.close();
});

test("a cross-site form post with the browser's credentials is refused", async () => {
  const before = (await call("GET", "/v2/_angos/gc")).json();
  const evil = createServer((request, response) => {
    response.writeHead(200, { "Content-Type": "text/html" });
    response.end(`<form id="f" method="POST" action="${base}/v2/_angos/gc"></form><script>document.getElementById("f").submit()</script>`);
  });
  await new Promise((done) => evil.listen(0, "127.0.0.1", done));
  // A browser that remembers the administrator's Basic credentials for the
  // registry and sends them with every request to it.
  const context = await browser.newContext({
    httpCredentials: { username: "admin", password: PASSWORDS.admin, origin: base, send: "always" },
  });
  const page = await context.newPage();
  const answer = page.waitForResponse((response) => response.url() === `${base}/v2/_angos/gc`);
  await page.goto(`http://127.0.0.1:${evil.address().port}/`);
  const response = await answer;
  assert.equal(response.status(), 403);
  assert.match(await response.text(), /cross-origin/);
  const after = (await call("GET", "/v2/_angos/gc")).json();
  assert.equal(after.running, false);
  assert.deepEqual(after.last, before.last, "no collection was started");
  await context.close();
  evil.close();
});
