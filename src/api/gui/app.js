// kuma-secrets GUI: one page over the HTTP API, no library, no build step.
//
// - Every request goes to this server's API with the tab's user token, if any
//   (sessionStorage: kept for this tab only, never a cookie), and `cache: "no-store"`.
// - Text reaches the page through textContent only (never innerHTML): a secret's name,
//   label or value cannot become markup.
// - A secret's value is put on the page only when "Reveal" is pressed, read by a request of
//   its own; a list's values are dropped as the page is built (only their size is kept).
"use strict";

(() => {
  const TOKEN_KEY = "kuma-secrets-token";
  const PAGE_SIZE = 100;
  const main = document.getElementById("main");
  let token = sessionStorage.getItem(TOKEN_KEY);
  let stopFeed = null;

  // ---- the API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      let detail = body && typeof body === "object" ? body.detail || body.title : body;
      // A validation error's reasons, each with its field (the delete guard's among them).
      const reasons = (body && body.invalid_parameters) || [];
      if (reasons.length) {
        detail = `${detail}: ${reasons.map((p) => (p.field ? `${p.field}: ${p.reason}` : p.reason)).join("; ")}`;
      }
      super(detail || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    let body;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    const response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body,
      cache: "no-store",
      credentials: "omit",
    });
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch (_) {
      parsed = text;
    }
    if (!response.ok) throw new ApiError(response.status, parsed);
    return { body: parsed, headers: response.headers };
  }

  const enc = encodeURIComponent;

  // The path and query of a list's absolute `next` link.
  function pathOf(url) {
    const parsed = new URL(url, location.origin);
    return parsed.pathname + parsed.search;
  }

  // ---- building the page --------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function show(...nodes) {
    main.replaceChildren(...nodes);
  }

  function table(headers, rows, caption) {
    return h(
      "table",
      {},
      caption ? h("caption", { class: "sr-only" }, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    );
  }

  function labelsOf(labels) {
    const entries = Object.entries(labels || {});
    if (!entries.length) return h("span", { class: "muted" }, "none");
    return h("span", { class: "labels" }, entries.map(([k, v]) => h("span", {}, `${k}: ${v}`)));
  }

  function when(iso) {
    if (!iso) return "";
    const t = new Date(iso);
    return h("time", { datetime: iso, title: iso }, t.toISOString().replace("T", " ").slice(0, 19) + " UTC");
  }

  function daysLeft(iso) {
    return Math.floor((new Date(iso).getTime() - Date.now()) / 86400000);
  }

  // "expires in 9 days" (red under 30 days, amber under 90), or "expired".
  function expiry(iso) {
    if (!iso) return h("span", { class: "muted" }, "");
    const days = daysLeft(iso);
    const text = days < 0 ? `expired ${iso.slice(0, 10)}` : `${iso.slice(0, 10)} (${days} days left)`;
    const cls = days < 30 ? "expiry-soon" : days < 90 ? "expiry-near" : "";
    return h("span", { class: cls, "data-not-after": iso }, text);
  }

  function sizeOf(base64) {
    if (!base64) return 0;
    const padding = base64.endsWith("==") ? 2 : base64.endsWith("=") ? 1 : 0;
    return (base64.length / 4) * 3 - padding;
  }

  // What an API failure shows: the sign-in form for a 401, the API's words otherwise.
  function failure(err, what) {
    if (err instanceof ApiError && err.status === 401) return signIn("That token was refused.");
    if (err instanceof ApiError && err.status === 403) {
      return show(h("h1", {}, what), h("p", { class: "error", role: "alert" }, `Access denied: ${err.message}`), anonymousHint());
    }
    show(h("h1", {}, what), h("p", { class: "error", role: "alert" }, err.message));
  }

  function anonymousHint() {
    if (token) return h("p", {}, "Your token does not allow this.");
    const button = h("button", { type: "button", class: "primary", onclick: () => signIn() }, "Sign in");
    return h("p", {}, "Sign in with a user token to see secrets. ", button);
  }

  // ---- who is signed in -----------------------------------------------------------------

  function tokenName() {
    try {
      const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      return claims.Name || "signed in";
    } catch (_) {
      return "signed in";
    }
  }

  // Who this tab is: the token's user, or, without one, the admin when the server treats
  // this browser as local (a list then carries the change-feed revision, which only
  // readers of secrets are shown), else nobody.
  async function renderWho() {
    const who = document.getElementById("who");
    const out = document.getElementById("sign-out");
    out.hidden = !token;
    if (token) {
      who.textContent = `Signed in as ${tokenName()}`;
      return;
    }
    who.textContent = "Not signed in";
    try {
      const { headers } = await api("/meshes?size=1");
      if (!token && headers.get("Kuma-Secrets-Revision")) who.textContent = "Admin (this machine)";
    } catch (_) {
      /* stays "Not signed in" */
    }
  }

  function signIn(message) {
    const form = document.getElementById("sign-in-template").content.cloneNode(true);
    show(form);
    const error = document.getElementById("sign-in-error");
    if (message) error.textContent = message;
    document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const given = document.getElementById("token").value.trim();
      token = given;
      try {
        await api("/meshes?size=1");
        sessionStorage.setItem(TOKEN_KEY, given);
        renderWho();
        route();
      } catch (err) {
        token = null;
        sessionStorage.removeItem(TOKEN_KEY);
        renderWho();
        error.textContent = err instanceof ApiError && err.status === 401 ? "That token was refused." : err.message;
      }
    });
    document.getElementById("token").focus();
  }

  document.getElementById("sign-out").addEventListener("click", () => {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    renderWho();
    location.hash = "#/";
    route();
  });

  // ---- pages -------------------------------------------------------------------------------

  async function meshesPage(params) {
    const next = params.get("next");
    let page;
    try {
      page = (await api(next || `/meshes?size=${PAGE_SIZE}`)).body;
    } catch (err) {
      return failure(err, "Meshes");
    }
    const rows = [];
    for (const mesh of page.items) {
      const mtls = mesh.mtls && mesh.mtls.enabledBackend ? mesh.mtls.enabledBackend : "off";
      const cell = h("td", {}, "");
      rows.push(
        h("tr", {}, h("td", {}, h("a", { href: `#/meshes/${enc(mesh.name)}` }, mesh.name)), h("td", {}, mtls), cell),
      );
      if (mesh.mtls && (mesh.mtls.backends || []).length) {
        api(`/meshes/${enc(mesh.name)}/_certificates`)
          .then(({ body }) => cell.replaceChildren(expiry(body.earliestNotAfter)))
          .catch(() => {});
      }
    }
    show(
      h("h1", {}, "Meshes"),
      page.items.length ? table(["Mesh", "mTLS backend", "Earliest CA expiry"], rows, "Meshes") : h("p", {}, "No Meshes."),
      pager(page, "#/"),
    );
  }

  function pager(page, base) {
    if (!page.next) return h("p", { class: "muted" }, `${page.total} in all`);
    const href = `${base}${base.includes("?") ? "&" : "?"}next=${enc(pathOf(page.next))}`;
    return h("div", { class: "pager" }, h("span", { class: "muted" }, `${page.total} in all`), h("a", { href, id: "next-page" }, "Next page"));
  }

  async function meshPage(name) {
    let mesh;
    try {
      mesh = (await api(`/meshes/${enc(name)}`)).body;
    } catch (err) {
      return failure(err, `Mesh ${name}`);
    }
    const parts = [
      h("h1", {}, `Mesh ${name}`),
      h("p", {}, h("a", { href: `#/meshes/${enc(name)}/secrets`, id: "mesh-secrets" }, `Secrets of ${name}`)),
      h("h2", {}, "mTLS backends"),
    ];
    let certificates = null;
    try {
      certificates = (await api(`/meshes/${enc(name)}/_certificates`)).body;
    } catch (err) {
      if (!(err instanceof ApiError && (err.status === 403 || err.status === 401))) throw err;
    }
    const backends = (mesh.mtls && mesh.mtls.backends) || [];
    if (!backends.length) {
      parts.push(h("p", {}, "mTLS is off: no backends."));
    } else {
      const byName = new Map(((certificates && certificates.items) || []).map((b) => [b.backend, b]));
      parts.push(
        certificates
          ? h("p", { id: "earliest-expiry" }, "Earliest CA expiry: ", expiry(certificates.earliestNotAfter))
          : anonymousHint(),
        table(
          ["Backend", "Type", "Enabled", "CA certificate secret", "Expires"],
          backends.map((b) => {
            const cert = byName.get(b.name);
            const secret = cert && cert.secret;
            return h(
              "tr",
              {},
              h("td", {}, b.name),
              h("td", {}, b.type),
              h("td", {}, mesh.mtls.enabledBackend === b.name ? "yes" : "no"),
              h("td", {}, secret ? h("a", { href: `#/secret/${enc(name)}/${enc(secret)}` }, secret) : ""),
              h("td", {}, cert ? expiry(cert.notAfter) : ""),
            );
          }),
          "mTLS backends",
        ),
      );
    }
    show(...parts);
  }

  async function secretsPage(mesh, params) {
    const title = mesh ? `Secrets of ${mesh}` : "GlobalSecrets";
    const base = mesh ? `/meshes/${enc(mesh)}/secrets` : "/global-secrets";
    const here = mesh ? `#/meshes/${enc(mesh)}/secrets` : "#/global-secrets";
    const name = params.get("name") || "";
    const label = params.get("label") || "";
    let query = `size=${PAGE_SIZE}`;
    if (name) query += `&name=${enc(name)}`;
    const [lk, ...lv] = label.split("=");
    if (label && lv.length) query += `&${enc(`filter[labels.${lk}]`)}=${enc(lv.join("="))}`;
    const next = params.get("next");
    let page;
    try {
      page = (await api(next || `${base}?${query}`)).body;
    } catch (err) {
      return failure(err, title);
    }
    const filter = h(
      "form",
      {
        class: "toolbar",
        id: "filter",
        onsubmit: (event) => {
          event.preventDefault();
          const form = new FormData(event.target);
          const search = new URLSearchParams();
          if (form.get("name")) search.set("name", form.get("name"));
          if (form.get("label")) search.set("label", form.get("label"));
          location.hash = `${here}?${search}`;
        },
      },
      h("label", { for: "filter-name" }, "Name contains", h("input", { id: "filter-name", name: "name", value: name })),
      h("label", { for: "filter-label" }, "Label (key=value)", h("input", { id: "filter-label", name: "label", value: label })),
      h("button", { type: "submit" }, "Filter"),
    );
    const uses = [];
    const rows = page.items.map((s) => {
      const href = mesh ? `#/secret/${enc(mesh)}/${enc(s.name)}` : `#/global-secret/${enc(s.name)}`;
      const usedBy = h("td", { class: "used-by" });
      if (mesh) uses.push([s.name, usedBy]);
      const row = h(
        "tr",
        {},
        h("td", {}, h("a", { href }, s.name)),
        h("td", {}, labelsOf(s.labels)),
        h("td", { class: "nowrap" }, `${sizeOf(s.data)} B`),
        h("td", {}, when(s.modificationTime)),
        h("td", {}, expiry(s.notAfter)),
        mesh ? usedBy : null,
      );
      delete s.data; // the value never outlives the row it was measured for
      return row;
    });
    // What uses each secret of the page, filled in as the answers come, 8 at a time.
    const fillUses = async () => {
      while (uses.length) {
        const [secret, cell] = uses.shift();
        try {
          const { body } = await api(`${base}/${enc(secret)}/_usage`);
          cell.textContent = body.items
            .map((u) => (u.backend ? `mTLS ${u.backend}` : `${u.referrerType} ${u.name}`))
            .join(", ");
        } catch (_) {
          /* left empty */
        }
      }
    };
    for (let i = 0; i < 8; i += 1) fillUses();
    const pageBase = `${here}?${new URLSearchParams(
      [...params.entries()].filter(([k]) => k !== "next"),
    )}`;
    show(
      h("h1", {}, title),
      mesh ? h("p", {}, h("a", { href: `#/meshes/${enc(mesh)}` }, `Mesh ${mesh}`)) : null,
      filter,
      rows.length
        ? table(["Name", "Labels", "Size", "Modified", "Certificate expires", ...(mesh ? ["Used by"] : [])], rows, title)
        : h("p", {}, "No secrets match."),
      pager(page, pageBase),
    );
  }

  async function secretPage(mesh, name) {
    const base = mesh ? `/meshes/${enc(mesh)}/secrets/${enc(name)}` : `/global-secrets/${enc(name)}`;
    const title = mesh ? `Secret ${name}` : `GlobalSecret ${name}`;
    const listHref = mesh ? `#/meshes/${enc(mesh)}/secrets` : "#/global-secrets";
    const status = h("p", { id: "status", role: "status", "aria-live": "polite" });
    let item = null;
    let version = null;
    try {
      const answer = await api(base);
      item = answer.body;
      version = (answer.headers.get("ETag") || "").replace(/"/g, "");
      delete item.data; // read again, on its own, by "Reveal"
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) return failure(err, title);
    }
    let versions = [];
    try {
      versions = (await api(`${base}/_versions`)).body.items || [];
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) return failure(err, title);
    }
    if (!item && !versions.length) {
      return show(h("h1", {}, title), h("p", { class: "error" }, "No such secret, and no history of one."));
    }
    const parts = [h("h1", {}, title), h("p", {}, h("a", { href: listHref }, mesh ? `Secrets of ${mesh}` : "GlobalSecrets")), status];
    if (item) {
      parts.push(
        h(
          "dl",
          { class: "meta" },
          h("dt", {}, "Type"), h("dd", {}, item.type),
          mesh ? [h("dt", {}, "Mesh"), h("dd", {}, mesh)] : null,
          h("dt", {}, "Version"), h("dd", { id: "version" }, version),
          h("dt", {}, "Labels"), h("dd", {}, labelsOf(item.labels)),
          h("dt", {}, "Created"), h("dd", {}, when(item.creationTime)),
          h("dt", {}, "Modified"), h("dd", {}, when(item.modificationTime)),
          item.notAfter ? [h("dt", {}, "Certificate expires"), h("dd", {}, expiry(item.notAfter))] : null,
        ),
      );
      const valueBox = h("div", { id: "value" });
      const copy = h("button", { type: "button", id: "copy", disabled: true }, "Copy");
      let revealed = null;
      const reveal = h(
        "button",
        {
          type: "button",
          id: "reveal",
          class: "primary",
          onclick: async () => {
            try {
              const { body } = await api(base);
              const bytes = Uint8Array.from(atob(body.data || ""), (c) => c.charCodeAt(0));
              revealed = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
              valueBox.replaceChildren(h("pre", { class: "value", "aria-label": "Value" }, revealed));
              copy.disabled = false;
              reveal.disabled = true;
            } catch (err) {
              status.textContent = err.message;
            }
          },
        },
        "Reveal",
      );
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(revealed);
          status.textContent = "Copied to the clipboard.";
        } catch (err) {
          status.textContent = `Could not copy: ${err.message}`;
        }
      });
      const remove = h(
        "button",
        {
          type: "button",
          id: "delete",
          class: "danger",
          onclick: async () => {
            if (!window.confirm(`Delete ${title}? Its history is kept and it can be restored.`)) return;
            try {
              await api(base, { method: "DELETE" });
              location.hash = listHref;
            } catch (err) {
              status.replaceChildren(h("span", { class: "error", id: "delete-error" }, err.message));
            }
          },
        },
        "Delete",
      );
      parts.push(h("h2", {}, "Value"), h("div", { class: "toolbar" }, reveal, copy, remove), valueBox);
    } else {
      parts.push(h("p", { class: "error", id: "deleted" }, "This secret is deleted; its history is below."));
    }
    // Used by (a Mesh's secrets), and certificates.
    if (mesh && item) {
      try {
        const usage = (await api(`${base}/_usage`)).body;
        parts.push(
          h("h2", {}, "Used by"),
          usage.items.length
            ? h(
                "ul",
                { id: "used-by" },
                usage.items.map((u) =>
                  h(
                    "li",
                    {},
                    u.backend
                      ? `Mesh ${u.mesh} mTLS backend ${u.backend} (${u.backendType}${u.enabled ? ", enabled" : ""})`
                      : `${u.referrerType} ${u.name} (${u.field})`,
                  ),
                ),
              )
            : h("p", { class: "muted" }, "Nothing uses it."),
        );
      } catch (_) {
        /* shown without */
      }
    }
    if (item) {
      try {
        const certs = (await api(`${base}/_certificates`)).body.items;
        if (certs.length) {
          parts.push(
            h("h2", {}, "Certificates"),
            table(
              ["Subject", "Issuer", "SANs", "Not before", "Not after", "CA"],
              certs.map((c) =>
                h(
                  "tr",
                  {},
                  h("td", {}, c.subject),
                  h("td", {}, c.issuer),
                  h("td", {}, c.sans.join(", ")),
                  h("td", {}, when(c.notBefore)),
                  h("td", {}, expiry(c.notAfter)),
                  h("td", {}, c.isCa ? "yes" : "no"),
                ),
              ),
              "Certificates",
            ),
          );
        }
      } catch (_) {
        /* shown without */
      }
    }
    // History: each version, who wrote it and when; roll back to one, or restore.
    parts.push(h("h2", {}, "History"));
    parts.push(
      versions.length
        ? table(
            ["Version", "Written", "By", ""],
            versions.map((v) => {
              let action = v.current ? h("span", { class: "muted" }, "current") : "";
              if (!v.current) {
                const verb = item ? "Roll back" : "Restore";
                action = h(
                  "button",
                  {
                    type: "button",
                    class: "version-action",
                    "data-version": v.version,
                    onclick: async () => {
                      const question = item
                        ? `Roll ${title} back to version ${v.version}? This writes a new version holding its value.`
                        : `Restore ${title} at version ${v.version}?`;
                      if (!window.confirm(question)) return;
                      try {
                        await api(`${base}/${item ? "_rollback" : "_restore"}`, { method: "POST", body: { version: v.version } });
                        await secretPage(mesh, name);
                        document.getElementById("status").textContent = item
                          ? `Rolled back to version ${v.version}.`
                          : `Restored version ${v.version}.`;
                      } catch (err) {
                        status.textContent = err.message;
                      }
                    },
                  },
                  `${verb} to ${v.version}`,
                );
              }
              return h(
                "tr",
                {},
                h("td", {}, String(v.version)),
                h("td", {}, when(v.modificationTime)),
                h("td", {}, v.actor ? v.actor.name : h("span", { class: "muted" }, "unknown")),
                h("td", {}, action),
              );
            }),
            "History",
          )
        : h("p", { class: "muted" }, "No history kept."),
    );
    parts.push(h("h2", {}, "Audit"), await auditOf(mesh, name));
    show(...parts);
  }

  // The change feed's entries for one secret (its first pages), newest first.
  async function auditOf(mesh, name) {
    const type = mesh ? "Secret" : "GlobalSecret";
    const entries = [];
    let after = 0;
    for (let pages = 0; pages < 5; pages += 1) {
      let page;
      try {
        page = (await api(`/_changes?after=${after}&limit=1000&type=${type}${mesh ? `&mesh=${enc(mesh)}` : ""}`)).body;
      } catch (_) {
        return h("p", { class: "muted" }, "The change feed cannot be read.");
      }
      entries.push(...page.events.filter((e) => e.name === name));
      if (page.revision === after || page.events.length < 1000) break;
      after = page.revision;
    }
    if (!entries.length) return h("p", { class: "muted" }, "No entries kept.");
    return table(
      ["When", "What", "Version", "By", "Request"],
      entries.reverse().map((e) =>
        h(
          "tr",
          {},
          h("td", {}, when(e.time)),
          h("td", {}, e.operation),
          h("td", {}, String(e.version)),
          h("td", {}, e.actor ? e.actor.name : ""),
          h("td", { class: "mono" }, e.requestId || ""),
        ),
      ),
      "Audit",
    );
  }

  // The live change feed: /_watch read as a stream (fetch, so the token goes in a header).
  async function changesPage(params) {
    const mesh = params.get("mesh") || "";
    const type = params.get("type") || "";
    let head;
    try {
      const answer = await api("/global-secrets?size=1");
      head = answer.headers.get("Kuma-Secrets-Revision") || "0";
    } catch (err) {
      return failure(err, "Changes");
    }
    const body = h("tbody", { id: "feed-rows" });
    const state = h("p", { id: "feed-state", role: "status", class: "muted" }, "Following the change feed…");
    const filter = h(
      "form",
      {
        class: "toolbar",
        onsubmit: (event) => {
          event.preventDefault();
          const form = new FormData(event.target);
          const search = new URLSearchParams();
          if (form.get("mesh")) search.set("mesh", form.get("mesh"));
          if (form.get("type")) search.set("type", form.get("type"));
          location.hash = `#/changes?${search}`;
        },
      },
      h("label", { for: "feed-mesh" }, "Mesh", h("input", { id: "feed-mesh", name: "mesh", value: mesh })),
      h(
        "label",
        { for: "feed-type" },
        "Type",
        h(
          "select",
          { id: "feed-type", name: "type" },
          ["", "Secret", "GlobalSecret", "Mesh", "ExternalService"].map((t) =>
            h("option", { value: t, selected: t === type }, t || "any"),
          ),
        ),
      ),
      h("button", { type: "submit" }, "Filter"),
    );
    show(
      h("h1", {}, "Changes"),
      filter,
      state,
      h(
        "table",
        { class: "feed" },
        h("caption", { class: "sr-only" }, "Changes, newest first"),
        h("thead", {}, h("tr", {}, ["When", "What", "Type", "Mesh", "Name", "Version", "By"].map((t) => h("th", { scope: "col" }, t)))),
        body,
      ),
    );
    const controller = new AbortController();
    stopFeed = () => controller.abort();
    let query = `after=${enc(head)}`;
    if (mesh) query += `&mesh=${enc(mesh)}`;
    if (type) query += `&type=${enc(type)}`;
    follow(query, controller, body, state); // runs until the page changes
  }

  async function follow(query, controller, body, state) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await fetch(`/_watch?${query}`, { headers, cache: "no-store", credentials: "omit", signal: controller.signal });
      if (!response.ok) {
        state.textContent = `The change feed answered ${response.status}.`;
        return;
      }
      state.textContent = "Live: new changes appear at the top.";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffered.indexOf("\n\n")) >= 0) {
          const message = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          const data = message
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).trimStart())
            .join("\n");
          if (!data || !message.includes("event: change")) continue;
          const e = JSON.parse(data);
          body.prepend(
            h(
              "tr",
              { "data-revision": e.revision },
              h("td", {}, when(e.time)),
              h("td", {}, e.operation),
              h("td", {}, e.type),
              h("td", {}, e.mesh || ""),
              h("td", {}, e.name),
              h("td", {}, String(e.version)),
              h("td", {}, e.actor ? e.actor.name : ""),
            ),
          );
        }
      }
      state.textContent = "The change feed ended; reload to follow it again.";
    } catch (err) {
      if (err.name !== "AbortError") state.textContent = `The change feed stopped: ${err.message}`;
    }
  }

  // ---- routing -------------------------------------------------------------------------------

  async function route() {
    if (stopFeed) {
      stopFeed();
      stopFeed = null;
    }
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, search] = hash.split("?");
    const params = new URLSearchParams(search || "");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    try {
      if (parts.length === 0) await meshesPage(params);
      else if (parts[0] === "meshes" && parts.length === 2) await meshPage(parts[1]);
      else if (parts[0] === "meshes" && parts[2] === "secrets") await secretsPage(parts[1], params);
      else if (parts[0] === "global-secrets") await secretsPage(null, params);
      else if (parts[0] === "secret" && parts.length === 3) await secretPage(parts[1], parts[2]);
      else if (parts[0] === "global-secret" && parts.length === 2) await secretPage(null, parts[1]);
      else if (parts[0] === "changes") await changesPage(params);
      else show(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Meshes")));
    } catch (err) {
      failure(err, "Error");
    }
    document.title = `${(main.querySelector("h1") || {}).textContent || ""} · kuma-secrets`;
    document.body.setAttribute("data-ready", location.hash);
  }

  window.addEventListener("hashchange", route);
  renderWho();
  route();
})();
