// nbsecrets UI: the live name check and the live rollout view. No value
// ever passes through this file.
"use strict";
(function () {
  const base = document.body.dataset.base || "/";

  // Name rules, as the user types: the service's own words (GET api/v1/names/{name}).
  const name = document.querySelector("[data-name-check]");
  const hint = document.getElementById("name-check");
  if (name && hint) {
    let timer = null;
    let seq = 0;
    const check = async () => {
      const n = name.value.trim();
      if (n === "") { hint.textContent = ""; return; }
      const mine = ++seq;
      try {
        const r = await fetch(base + "api/v1/names/" + encodeURIComponent(n), { credentials: "same-origin" });
        const j = await r.json();
        if (mine !== seq) return;
        hint.className = "hint" + (j.valid ? (j.message ? " warn" : "") : " bad");
        hint.textContent = j.valid ? (j.message || "✓ " + n + " is a valid name") : j.message;
        name.setCustomValidity(j.valid ? "" : j.message);
      } catch (e) { /* the service checks again on submit */ }
    };
    name.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(check, 120); });
    if (name.value) check();
  }

  // The project select follows the Private / Project choice.
  const project = document.getElementById("project");
  if (project) {
    const sync = () => {
      const p = document.querySelector("input[name=scope][value=project]");
      project.disabled = !(p && p.checked);
    };
    document.querySelectorAll("input[name=scope]").forEach((r) => r.addEventListener("change", sync));
    sync();
  }

  // The live rollout: a short poll of api/v1/secrets/{id}/rollout.
  const box = document.getElementById("rollout");
  if (box) {
    const tbody = box.querySelector("tbody");
    const cell = (tr, text, cls) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
      return td;
    };
    let last = "";
    const render = (ro) => {
      const key = JSON.stringify(ro.workspaces) + ro.version;
      if (key === last) return;
      last = key;
      const v = document.getElementById("version");
      if (v) v.textContent = ro.version;
      tbody.textContent = "";
      if (!ro.workspaces.length) {
        const tr = document.createElement("tr");
        cell(tr, "no workspace receives it", "muted").colSpan = 6;
        tbody.appendChild(tr);
      }
      for (const ws of ro.workspaces) {
        if (!ws.kernels.length) {
          const tr = document.createElement("tr");
          cell(tr, ws.id);
          cell(tr, ws.reporting ? "no kernel running" : "its agent has not reported", "muted").colSpan = 5;
          tbody.appendChild(tr);
        }
        for (const k of ws.kernels) {
          const tr = document.createElement("tr");
          tr.dataset.kernel = k.id;
          tr.dataset.version = k.version || 0;
          cell(tr, ws.id);
          cell(tr, k.id.slice(0, 8));
          cell(tr, k.language || "-");
          cell(tr, k.mode || "-");
          cell(tr, k.version ? "v" + k.version : "-");
          cell(tr, k.current && !ws.silent ? "current" : "waiting: " + (k.waiting || "its agent is silent"), k.current && !ws.silent ? "current" : "waiting");
          tbody.appendChild(tr);
        }
      }
    };
    // Server-sent events (rollout/events) when the browser has them; a
    // short poll of the same view otherwise.
    const poll = async () => {
      try {
        const r = await fetch(box.dataset.rollout, { credentials: "same-origin" });
        if (r.ok) render(await r.json());
      } catch (e) { /* try again */ }
      setTimeout(poll, 250);
    };
    if (window.EventSource) {
      const es = new EventSource(box.dataset.rollout + "/events");
      es.onmessage = (e) => render(JSON.parse(e.data));
      es.addEventListener("gone", () => { es.close(); box.dataset.gone = "1"; });
    } else {
      poll();
    }
  }
})();
