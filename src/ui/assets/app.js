// The operator page. Everything it shows comes from the registry API and
// the admin API, asked with the visitor's own token; every value is put in
// the page as text (textContent), never as markup.

const TOKEN_KEY = "angos-token";
const USER_KEY = "angos-user";
const REFRESH_MS = 2000;
const MANIFEST_TYPES = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");

const state = { admin: false, refresh: null, expanded: new Set(), requests: new Map() };
const main = document.getElementById("main");

// ---- building the page -----------------------------------------------------

// An element with attributes and children; strings become text nodes.
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") element.textContent = String(value);
    else if (key === "on") for (const [event, handler] of Object.entries(value)) element.addEventListener(event, handler);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function table(headings, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, headings.map((heading) => h("th", { text: heading })))), h("tbody", {}, rows));
}

function bytes(count) {
  if (count === null || count === undefined) return "unknown";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(count);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function shortDigest(digest) {
  return digest ? digest.replace(/^(sha256:|sha512:)?(.{12}).*$/, "$1$2…") : "";
}

// A read-only field with the text and a button that copies it.
function copyable(text, label = "Copy") {
  const field = h("input", { class: "command mono", readonly: true, value: text });
  const button = h("button", {
    type: "button",
    text: label,
    on: {
      click: async () => {
        field.select();
        try {
          await navigator.clipboard.writeText(text);
          button.textContent = "Copied";
        } catch {
          document.execCommand("copy");
          button.textContent = "Selected";
        }
      },
    },
  });
  return h("span", { class: "row" }, field, button);
}

function notice(message, kind = "bad") {
  const element = document.getElementById("notice");
  if (element) element.replaceChildren(h("p", { class: kind, text: message }));
}

// ---- talking to the registry ----------------------------------------------

async function api(method, path, { accept } = {}) {
  const headers = { "X-Angos-Page": "1" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (accept) headers.Accept = accept;
  const response = await fetch(path, { method, headers, credentials: "omit", cache: "no-store" });
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (response.status === 401 && token) {
    // The token expired (or the server restarted with other keys): log in again.
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(state.refresh);
    loginView("Your session has ended; log in again.");
  }
  return { status: response.status, body, headers: response.headers };
}

function problem(answer) {
  const errors = answer.body && answer.body.errors;
  const message = errors && errors.length ? errors.map((error) => error.message).join("; ") : "";
  return `HTTP ${answer.status}${message ? `: ${message}` : ""}`;
}

function encodeName(name) {
  return name.split("/").map(encodeURIComponent).join("/");
}

// ---- logging in ------------------------------------------------------------

function loginView(message) {
  const user = h("input", { id: "login-user", name: "username", autocomplete: "username", required: true });
  const password = h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h(
    "form",
    { class: "login", id: "login-form" },
    h("h2", { text: "Log in" }),
    message ? h("p", { class: "bad", text: message }) : null,
    h("label", { for: "login-user", text: "User" }),
    user,
    h("label", { for: "login-password", text: "Password" }),
    password,
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary", id: "login-submit", text: "Log in" })),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const credentials = btoa(unescape(encodeURIComponent(`${user.value}:${password.value}`)));
    const response = await fetch("/v2/token", {
      headers: { Authorization: `Basic ${credentials}`, "X-Angos-Page": "1" },
      credentials: "omit",
      cache: "no-store",
    });
    if (response.status !== 200) {
      loginView("Wrong user or password.");
      return;
    }
    const answer = await response.json();
    sessionStorage.setItem(TOKEN_KEY, answer.token);
    sessionStorage.setItem(USER_KEY, user.value);
    await start();
  });
  show(form);
  user.focus();
}

// ---- repositories ------------------------------------------------------------

async function repositoriesView() {
  const search = h("input", { id: "search", type: "search", placeholder: "Search repositories" });
  const list = h("div", { id: "repository-list" });
  show(h("h2", { text: "Repositories" }), h("div", { id: "notice" }), h("div", { class: "row" }, search), list);
  const names = [];
  let path = "/v2/_catalog?n=1000";
  for (let page = 0; path && page < 20; page += 1) {
    const answer = await api("GET", path);
    if (answer.status !== 200) {
      notice(`The catalog could not be read: ${problem(answer)}`);
      return;
    }
    names.push(...answer.body.repositories);
    const link = answer.headers.get("Link");
    path = link ? link.replace(/^<([^>]*)>.*$/, "$1") : null;
  }
  const render = () => {
    const wanted = search.value.trim().toLowerCase();
    const shown = names.filter((name) => name.toLowerCase().includes(wanted));
    list.replaceChildren(
      shown.length
        ? table(["Repository"], shown.map((name) => h("tr", {}, h("td", {}, h("a", { href: `#/repositories/${name}`, text: name })))))
        : h("p", { class: "muted", text: names.length ? "No repository matches." : "No repositories yet." }),
    );
  };
  search.addEventListener("input", render);
  render();
}

async function repositoryView(name) {
  const rows = h("tbody");
  const more = h("div", { class: "row" });
  show(
    h("p", {}, h("a", { href: "#/repositories", text: "Repositories" }), " / ", h("span", { class: "mono", text: name })),
    h("h2", { text: name }),
    h("div", { id: "notice" }),
    h(
      "table",
      { id: "tags" },
      h("thead", {}, h("tr", {}, ["Tag", "Digest", "Media type", "Size", "Platforms", "Pushed", ""].map((heading) => h("th", { text: heading })))),
      rows,
    ),
    more,
  );
  const load = async (path) => {
    const answer = await api("GET", path);
    if (answer.status !== 200) {
      notice(`The tags could not be read: ${problem(answer)}`);
      return;
    }
    for (const tag of answer.body.tags) rows.append(...tagRows(name, tag));
    if (!rows.children.length) notice("No tags.", "muted");
    const link = answer.headers.get("Link");
    more.replaceChildren(link ? h("button", { type: "button", text: "More tags", on: { click: () => load(link.replace(/^<([^>]*)>.*$/, "$1")) } }) : "");
  };
  await load(`/v2/${encodeName(name)}/_angos/tags?n=100`);
}

function tagRows(name, tag) {
  const detail = h("tr", { class: "detail", hidden: true }, h("td", { colspan: 7 }));
  const toggle = h("button", {
    type: "button",
    text: "Details",
    on: {
      click: async () => {
        detail.hidden = !detail.hidden;
        if (!detail.hidden) detail.firstChild.replaceChildren(await manifestDetails(name, tag));
      },
    },
  });
  const row = h(
    "tr",
    { "data-tag": tag.tag },
    h("td", { class: "mono", text: tag.tag }),
    h("td", { class: "mono", title: tag.digest, text: shortDigest(tag.digest) }),
    h("td", { class: "mono", text: tag.mediaType }),
    h("td", { text: bytes(tag.size) }),
    h("td", {}, tag.platforms.map((platform) => h("span", { class: "badge", text: platform }))),
    h("td", { text: tag.pushed ? new Date(tag.pushed).toLocaleString() : "" }),
    h("td", {}, toggle),
  );
  return [row, detail];
}

async function manifestDetails(name, tag) {
  const host = location.host;
  const parts = [
    h("h3", { text: "Pull" }),
    copyable(`docker pull ${host}/${name}:${tag.tag}`),
    copyable(`docker pull ${host}/${name}@${tag.digest}`),
    h("dl", {}, h("dt", { text: "Digest" }), h("dd", { class: "mono", text: tag.digest })),
  ];
  const manifest = await api("GET", `/v2/${encodeName(name)}/manifests/${tag.digest}`, { accept: MANIFEST_TYPES });
  if (manifest.status === 200 && manifest.body && typeof manifest.body === "object") {
    parts.push(annotationList("Annotations", manifest.body.annotations));
    if (Array.isArray(manifest.body.layers)) {
      const count = manifest.body.layers.length;
      const total = manifest.body.layers.reduce((sum, layer) => sum + (layer.size || 0), 0);
      parts.push(h("p", { class: "muted", text: `${count} ${count === 1 ? "layer" : "layers"}, ${bytes(total)}` }));
    }
  }
  const referrers = await api("GET", `/v2/${encodeName(name)}/referrers/${tag.digest}`);
  parts.push(h("h3", { text: "Referrers" }));
  const found = referrers.status === 200 && referrers.body ? referrers.body.manifests || [] : [];
  parts.push(
    found.length
      ? table(
          ["Artifact type", "Digest", "Annotations"],
          found.map((referrer) =>
            h(
              "tr",
              { class: "referrer" },
              h("td", { class: "mono", text: referrer.artifactType || referrer.mediaType }),
              h("td", { class: "mono", title: referrer.digest, text: shortDigest(referrer.digest) }),
              h("td", {}, annotationList(null, referrer.annotations)),
            ),
          ),
        )
      : h("p", { class: "muted", text: referrers.status === 200 ? "None (no signature, SBOM or other artifact refers to it)." : problem(referrers) }),
  );
  return h("div", {}, parts);
}

function annotationList(title, annotations) {
  const entries = Object.entries(annotations || {});
  if (!entries.length) return title ? h("p", { class: "muted", text: "No annotations." }) : "";
  return h(
    "div",
    { class: "annotations" },
    title ? h("h3", { text: title }) : null,
    h("dl", {}, entries.map(([key, value]) => [h("dt", { class: "mono", text: key }), h("dd", { text: value })])),
  );
}

// ---- webhooks ----------------------------------------------------------------

function adminsOnly(what) {
  show(h("h2", { text: what }), h("p", { class: "muted", id: "admins-only", text: "Only administrators see this page." }));
}

async function webhooksView() {
  if (!state.admin) return adminsOnly("Webhooks");
  const body = h("div", { id: "webhooks" });
  show(h("h2", { text: "Webhooks" }), h("div", { id: "notice" }), body);
  const render = async () => {
    const answer = await api("GET", "/v2/_angos/webhooks");
    if (answer.status !== 200) return notice(`The webhooks could not be read: ${problem(answer)}`);
    const rows = answer.body.webhooks.map((webhook) =>
      h(
        "tr",
        { "data-webhook": webhook.name },
        h("td", {}, h("a", { href: `#/webhooks/${webhook.name}`, text: webhook.name })),
        h("td", { text: webhook.policy }),
        h("td", { text: webhook.format }),
        h("td", { class: webhook.disabled ? "state bad" : "state good", text: webhook.disabled ? `disabled (${webhook.disabled_reason || "410 Gone"})` : "enabled" }),
        h("td", { class: "queue-depth", text: webhook.queue_depth }),
        h("td", { text: webhook.oldest_pending_age_seconds === null ? "" : `${webhook.oldest_pending_age_seconds.toFixed(1)} s` }),
        h("td", { class: "good", text: webhook.succeeded }),
        h("td", { class: webhook.failed ? "bad" : "", text: webhook.failed }),
        h("td", { text: webhook.dead_letters }),
        h("td", { class: "bad", text: webhook.last_error ? webhook.last_error.message : "" }),
        h("td", {}, webhookActions(webhook)),
      ),
    );
    body.replaceChildren(
      table(["Webhook", "Policy", "Format", "State", "Queue", "Oldest pending", "Succeeded", "Failed", "Dead letters", "Last error", ""], rows),
    );
  };
  await render();
  schedule(render);
}

function webhookActions(webhook) {
  const name = encodeURIComponent(webhook.name);
  const actions = [
    h("button", {
      type: "button",
      class: "ping",
      text: "Send test ping",
      on: {
        click: async () => {
          const answer = await api("POST", `/v2/_angos/webhooks/${name}/test`);
          const ok = answer.status === 200 && answer.body && answer.body.success;
          notice(ok ? `Ping to ${webhook.name}: HTTP ${answer.body.http_status}` : `Ping to ${webhook.name} failed: ${(answer.body && answer.body.error) || problem(answer)}`, ok ? "good" : "bad");
        },
      },
    }),
  ];
  if (webhook.disabled) {
    actions.push(
      h("button", {
        type: "button",
        class: "enable",
        text: "Re-enable",
        on: { click: async () => notice((await api("POST", `/v2/_angos/webhooks/${name}/enable`)).status === 200 ? `${webhook.name} is enabled again.` : "Re-enabling failed.", "good") },
      }),
    );
  }
  return h("span", { class: "row" }, actions);
}

async function deliveriesView(webhook) {
  if (!state.admin) return adminsOnly("Webhooks");
  const body = h("div", { id: "deliveries" });
  show(
    h("p", {}, h("a", { href: "#/webhooks", text: "Webhooks" }), " / ", h("span", { text: webhook })),
    h("h2", { text: `Deliveries to ${webhook}` }),
    h("div", { id: "notice" }),
    body,
  );
  const name = encodeURIComponent(webhook);
  const render = async () => {
    const answer = await api("GET", `/v2/_angos/webhooks/${name}/deliveries`);
    if (answer.status !== 200) return notice(`The deliveries could not be read: ${problem(answer)}`);
    const redeliver = (delivery) =>
      h("button", {
        type: "button",
        class: "redeliver",
        text: "Redeliver",
        on: {
          click: async () => {
            const done = await api("POST", `/v2/_angos/webhooks/${name}/deliveries/${encodeURIComponent(delivery.id)}/redeliver`);
            notice(done.status === 202 || done.status === 200 ? `Delivery ${delivery.id} is queued again.` : `Redelivery failed: ${problem(done)}`, done.status < 300 ? "good" : "bad");
            await render();
          },
        },
      });
    const rows = [];
    for (const delivery of answer.body.deliveries) {
      const key = delivery.id + delivery.finished;
      const cell = h("td", { colspan: 9 });
      const detail = h("tr", { class: "detail", hidden: true }, cell);
      // The request as sent, asked for when first opened (a record's never changes).
      const open = async () => {
        if (!state.requests.has(key)) {
          const shown = await api("GET", `/v2/_angos/webhooks/${name}/deliveries/${encodeURIComponent(delivery.id)}`);
          if (shown.status !== 200) return notice(`The request could not be read: ${problem(shown)}`);
          state.requests.set(key, shown.body.request);
        }
        cell.replaceChildren(requestView(state.requests.get(key)));
        detail.hidden = false;
      };
      if (state.expanded.has(key)) await open();
      const toggle = h("button", {
        type: "button",
        text: "Request",
        on: {
          click: async () => {
            if (detail.hidden) {
              state.expanded.add(key);
              await open();
            } else {
              state.expanded.delete(key);
              detail.hidden = true;
            }
          },
        },
      });
      rows.push(
        h(
          "tr",
          { class: `delivery ${delivery.status}`, "data-delivery": delivery.id },
          h("td", { text: new Date(delivery.finished).toLocaleTimeString() }),
          h("td", { text: delivery.kind }),
          h("td", { class: delivery.status === "success" ? "good" : "bad", text: delivery.status }),
          h("td", { text: delivery.attempts }),
          h("td", { text: `${delivery.duration_ms} ms` }),
          h("td", { text: delivery.http_status ?? "" }),
          h("td", { class: "bad", text: delivery.error || "" }),
          h("td", {}, toggle),
          h("td", {}, redeliver(delivery)),
        ),
        detail,
      );
    }
    const letters = answer.body.dead_letters.map((letter) =>
      h(
        "tr",
        { class: "dead-letter", "data-delivery": letter.id },
        h("td", { text: new Date(letter.finished).toLocaleString() }),
        h("td", { text: letter.kind }),
        h("td", { text: letter.attempts }),
        h("td", { class: "bad", text: letter.error || "" }),
        h("td", {}, redeliver(letter)),
      ),
    );
    body.replaceChildren(
      h("p", { class: "muted", text: `${answer.body.pending} waiting to be delivered.` }),
      rows.length ? table(["Finished", "Event", "Status", "Attempts", "Duration", "HTTP", "Error", "", ""], rows) : h("p", { class: "muted", text: "No deliveries yet." }),
      h("h3", { text: "Dead letters" }),
      letters.length ? table(["When", "Event", "Attempts", "Last error", ""], letters) : h("p", { class: "muted", text: "None." }),
    );
  };
  await render();
  schedule(render);
}

function requestView(request) {
  if (!request) return h("p", { class: "muted", text: "No request was sent." });
  const head = [request.line, ...request.headers.map(([name, value]) => `${name}: ${value}`)].join("\n");
  let body = request.body;
  try {
    body = JSON.stringify(JSON.parse(body), null, 2);
  } catch {
    // Not JSON: shown as it was sent.
  }
  return h("div", {}, h("pre", { class: "request-head", text: head }), h("pre", { class: "request-body", text: body }));
}

// ---- storage -----------------------------------------------------------------

async function storageView() {
  if (!state.admin) return adminsOnly("Storage");
  const body = h("div", { id: "storage" });
  show(h("h2", { text: "Storage" }), h("div", { id: "notice" }), body);
  const render = async () => {
    const answer = await api("GET", "/v2/_angos/storage");
    if (answer.status !== 200) return notice(`The storage could not be read: ${problem(answer)}`);
    const status = answer.body;
    const card = (label, value, id) => h("div", { class: "card", id }, h("div", { class: "muted", text: label }), h("div", { class: "value", text: value }));
    const gc = status.gc.last;
    const prune = status.prune.last;
    const run = (path, label, id) =>
      h("button", {
        type: "button",
        class: "primary",
        id,
        text: label,
        on: {
          click: async () => {
            const started = await api("POST", path);
            notice(started.status === 202 ? `${label}: started.` : `${label}: ${problem(started)}`, started.status === 202 ? "good" : "bad");
            await render();
          },
        },
      });
    body.replaceChildren(
      h(
        "div",
        { class: "cards" },
        card("Content", bytes(status.content_bytes), "space-used"),
        card("Free", status.disk ? bytes(status.disk.free_bytes) : "unknown", "space-free"),
        card("Disk", status.disk ? bytes(status.disk.total_bytes) : "unknown"),
        card("Kept free", bytes(status.min_free_bytes)),
        card("Reclaimable", bytes(status.reclaimable_bytes)),
      ),
      h("h3", { text: "Garbage collection" }),
      h("p", { id: "gc-state", text: status.gc.running ? "Running…" : "Idle." }),
      gc
        ? h(
            "dl",
            { id: "gc-last" },
            h("dt", { text: "Last run" }),
            h("dd", { text: `${new Date(gc.started).toLocaleString()} (${gc.trigger}, ${gc.mode}, ${gc.duration_ms} ms)` }),
            h("dt", { text: "Freed" }),
            h("dd", { text: `${bytes(gc.report.bytes_removed)} in ${gc.report.contents_removed} blobs; ${gc.manifests_removed} manifests, ${gc.report.links_removed} links` }),
          )
        : h("p", { class: "muted", text: "No collection has run since the start." }),
      h("div", { class: "row" }, run("/v2/_angos/gc", "Run garbage collection", "run-gc")),
      h("h3", { text: "Retention" }),
      prune
        ? h(
            "dl",
            { id: "prune-last" },
            h("dt", { text: "Last run" }),
            h("dd", { text: `${new Date(prune.started).toLocaleString()} (${prune.trigger}, ${prune.mode})` }),
            h("dt", { text: "Removed" }),
            h("dd", { text: `${prune.tags_removed} tags, ${prune.manifests_removed} manifests` }),
          )
        : h("p", { class: "muted", text: "No retention run since the start." }),
      h("div", { class: "row" }, run("/v2/_angos/prune?mode=dry-run", "Retention dry run", "run-prune-dry"), run("/v2/_angos/prune", "Run retention", "run-prune")),
      h("h3", { text: "Upstreams" }),
      status.upstreams.upstreams.length
        ? table(
            ["Repository", "Upstream", "State", "Failures", "Last error"],
            status.upstreams.upstreams.map((upstream) =>
              h(
                "tr",
                {},
                h("td", { text: upstream.repository }),
                h("td", { class: "mono", text: upstream.url }),
                h("td", { class: upstream.state === "down" ? "bad" : upstream.state === "up" ? "good" : "muted", text: upstream.state }),
                h("td", { text: upstream.consecutive_failures }),
                h("td", { class: "bad", text: upstream.last_error || "" }),
              ),
            ),
          )
        : h("p", { class: "muted", text: "No pull-through repositories." }),
    );
  };
  await render();
  schedule(render);
}

// ---- navigation --------------------------------------------------------------

// Runs `render` again every REFRESH_MS while its view is shown.
function schedule(render) {
  const view = location.hash;
  const again = async () => {
    if (location.hash !== view) return;
    await render();
    state.refresh = setTimeout(again, REFRESH_MS);
  };
  state.refresh = setTimeout(again, REFRESH_MS);
}

async function route() {
  clearTimeout(state.refresh);
  const path = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [section, ...rest] = path.split("/");
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.id === `nav-${section || "repositories"}`);
  }
  if (section === "webhooks" && rest.length) return deliveriesView(rest.join("/"));
  if (section === "webhooks") return webhooksView();
  if (section === "storage") return storageView();
  if (section === "repositories" && rest.length) return repositoryView(rest.join("/"));
  return repositoriesView();
}

async function start() {
  const base = await api("GET", "/v2/");
  if (base.status === 401) {
    document.getElementById("logout").hidden = true;
    document.getElementById("who").textContent = "";
    return loginView();
  }
  const user = sessionStorage.getItem(USER_KEY);
  document.getElementById("who").textContent = user ? `Logged in as ${user}` : "Anonymous";
  document.getElementById("logout").hidden = !user;
  state.admin = (await api("GET", "/v2/_angos/webhooks")).status === 200;
  document.body.classList.toggle("admin", state.admin);
  await route();
}

document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  start();
});
window.addEventListener("hashchange", route);

const config = await api("GET", "config.json");
if (config.status === 200 && config.body) {
  document.getElementById("registry-name").textContent = config.body.name;
  document.title = config.body.name;
}
await start();
