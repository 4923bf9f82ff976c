// The API reference page (/docs): renders /openapi.json of this server with plain DOM, nothing
// loaded from elsewhere. Everything in the document is put into the page as text
// (textContent / text nodes / attribute values), never as HTML.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);

  const { el } = window.mmsearchDom;  // dom.js

  const refName = (ref) => ref.split("/").pop();

  // A schema as a short type expression; named schemas link to their entry below.
  function typeOf(schema) {
    if (!schema) return el("span", { class: "type", text: "any" });
    if (schema.$ref) {
      const name = refName(schema.$ref);
      return el("span", { class: "type" }, el("a", { href: `#schema-${name}`, text: name }));
    }
    const span = el("span", { class: "type" });
    const parts = schema.oneOf || schema.anyOf || schema.allOf;
    if (parts) {
      parts.forEach((part, i) => span.append(...(i ? [" | "] : []), typeOf(part)));
    } else if (schema.type === "array") {
      span.append(typeOf(schema.items), "[]");
    } else if (schema.enum) {
      span.append(schema.enum.map((v) => JSON.stringify(v)).join(" | "));
    } else {
      span.append(schema.type || "object");
    }
    if (schema.nullable) span.append(" | null");
    return span;
  }

  function limits(schema) {
    if (!schema) return "";
    const out = [];
    for (const key of ["minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "pattern", "default"]) {
      if (schema[key] !== undefined) out.push(`${key} ${JSON.stringify(schema[key])}`);
    }
    return out.join(", ");
  }

  function propertiesTable(schema) {
    const required = new Set(schema.required || []);
    const rows = Object.entries(schema.properties || {}).map(([name, prop]) => el("tr", {},
      el("td", {}, el("code", { text: name }), required.has(name) ? " *" : ""),
      el("td", {}, typeOf(prop)),
      el("td", {}, prop.description || "", limits(prop) ? el("div", { class: "muted", text: limits(prop) }) : null)));
    return el("table", {}, el("tr", {}, el("th", { text: "field (* required)" }), el("th", { text: "type" }),
      el("th", { text: "description" })), rows);
  }

  function schemaBlock(name, schema) {
    const block = el("div", { class: "schema", id: `schema-${name}` }, el("h3", { text: name }));
    if (schema.description) block.append(el("p", { class: "muted", text: schema.description }));
    if (schema.properties) block.append(propertiesTable(schema));
    else block.append(el("p", {}, typeOf(schema), " ", el("span", { class: "muted", text: limits(schema) })));
    return block;
  }

  // A parameter, or the shared one it refers to.
  const parameterOf = (spec, node) => (node.$ref ? spec.components.parameters[refName(node.$ref)] : node);

  function parametersTable(spec, params) {
    return el("table", {}, el("tr", {}, el("th", { text: "name" }), el("th", { text: "in" }),
      el("th", { text: "type" }), el("th", { text: "description" })),
    params.map((ref) => {
      const p = parameterOf(spec, ref);
      return el("tr", {}, el("td", {}, el("code", { text: p.name }), p.required ? " *" : ""),
        el("td", { text: p.in }), el("td", {}, typeOf(p.schema)),
        el("td", {}, p.description || "", limits(p.schema) ? el("div", { class: "muted", text: limits(p.schema) }) : null));
    }));
  }

  function contentList(content) {
    return Object.entries(content || {}).map(([type, media]) => el("div", {}, el("code", { text: type }), " ",
      typeOf(media.schema)));
  }

  function responsesTable(spec, responses) {
    return el("table", {}, el("tr", {}, el("th", { text: "status" }), el("th", { text: "body" }),
      el("th", { text: "description" })),
    Object.entries(responses).map(([status, response]) => {
      const shared = response.$ref ? spec.components.responses[refName(response.$ref)] : response;
      return el("tr", {}, el("td", {}, el("code", { text: status })), el("td", {}, contentList(shared.content)),
        el("td", { text: shared.description || "" }));
    }));
  }

  function operation(spec, path, method, op) {
    const secured = (op.security || []).length > 0;
    const body = el("div", { class: "op-body" });
    if (op.parameters) body.append(el("h3", { text: "Parameters" }), parametersTable(spec, op.parameters));
    if (op.requestBody) {
      body.append(el("h3", { text: "Request body" }), el("p", { class: "muted", text: op.requestBody.description || "" }),
        ...contentList(op.requestBody.content));
    }
    body.append(el("h3", { text: "Responses" }), responsesTable(spec, op.responses));
    return el("details", { class: "op", id: `op-${method}-${path}` },
      el("summary", {}, el("span", { class: `method method-${method}`, text: method }),
        el("span", { class: "path", text: path }), el("span", { class: "summary", text: op.summary || "" }),
        secured ? el("span", { class: "lock", text: "needs a key" }) : null),
      body);
  }

  function render(spec) {
    document.title = `${spec.info.title} API ${spec.info.version}`;
    $("#version").textContent = `OpenAPI ${spec.openapi}, version ${spec.info.version}`;
    $("#description").textContent = spec.info.description || "";
    const byTag = new Map((spec.tags || []).map((t) => [t.name, []]));
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        const tag = (op.tags || ["other"])[0];
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push(operation(spec, path, method, op));
      }
    }
    for (const [tag, ops] of byTag) {
      $("#toc").append(el("a", { href: `#tag-${tag}`, text: `${tag} (${ops.length})` }));
      $("#operations").append(el("h2", { id: `tag-${tag}`, text: tag }), ...ops);
    }
    $("#toc").append(el("a", { href: "#schemas-title", text: "schemas" }));
    $("#schemas-title").hidden = false;
    for (const [name, schema] of Object.entries(spec.components.schemas)) $("#schemas").append(schemaBlock(name, schema));
    const target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (target) target.scrollIntoView();
  }

  fetch("/openapi.json", { headers: { Accept: "application/json" } })
    .then((resp) => {
      if (!resp.ok) throw new Error(`GET /openapi.json answered ${resp.status}`);
      return resp.json();
    })
    .then(render)
    .catch((err) => {
      const note = $("#description");
      note.className = "description error";
      note.textContent = `Cannot show the API: ${err.message}`;
    });
})();
