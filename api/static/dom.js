// What the web page (app.js) and the API reference page (docs.js) share: building DOM nodes
// from untrusted text without ever parsing HTML. Loaded before either script (defer keeps order).
"use strict";

window.mmsearchDom = Object.freeze({
  // Properties become attributes, text, dataset entries or listeners ("onclick"); children
  // (nested lists flattened) become nodes, strings and numbers as text nodes.
  el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) if (child !== null && child !== undefined) node.append(child);
    return node;
  },
});
