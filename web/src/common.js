// Helpers shared by the map and the pipeline monitor. Every string from a feed reaches the
// page through textContent (never innerHTML), so a hostile `place` shows as text.
'use strict';

window.qs = (function () {
  /**
   * An element with attributes and children; strings become text nodes. Children may be
   * nested in arrays to any depth (a list of rows, each a list of cells): all are appended in
   * order, never stringified as a list.
   */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** An SVG element. */
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function mag(m) {
    return typeof m === 'number' && isFinite(m) ? m.toFixed(1) : '?';
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  /** `2025-05-04 13:40:18 UTC` */
  function utc(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return '–';
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
  }

  function local(iso) {
    const d = new Date(iso);
    return isNaN(d) ? '–' : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  }

  /** `5 min ago`, `3 h ago`, `2 d ago`. */
  function ago(iso, now) {
    const t = new Date(iso).getTime();
    if (isNaN(t)) return '–';
    const s = Math.max(0, ((now || Date.now()) - t) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function seconds(s) {
    if (typeof s !== 'number' || !isFinite(s)) return '–';
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  /** Only http(s) links are followed; anything else (javascript:, data:) is not a link. */
  function safeUrl(u) {
    try {
      const url = new URL(u, window.location.href);
      return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { accept: 'application/json' } });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const why = body && body.error ? body.error : response.statusText;
      throw new Error(`${path}: ${response.status} ${why}`);
    }
    return body;
  }

  function setText(id, value) {
    const node = document.getElementById(id);
    if (node) node.textContent = value;
  }

  const number = new Intl.NumberFormat();

  return { el, svg, mag, utc, local, ago, seconds, safeUrl, getJSON, setText, number };
})();
