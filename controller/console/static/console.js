// kiln console: charts drawn as SVG from JSON the page carries (or polls). No libraries, no
// network beyond the console itself. Each <figure data-chart="KIND"> is drawn by DRAW[KIND].
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
  const W = 640, H = 260, PAD = {l: 52, r: 12, t: 12, b: 36};

  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, anchor) {
    const t = el("text", {x: x, y: y, "text-anchor": anchor || "middle"}, parent);
    t.textContent = s;
    return t;
  }
  function fmt(v) { return Math.abs(v) >= 1000 || v === Math.round(v) ? String(Math.round(v * 100) / 100) : v.toPrecision(3); }
  function svg(fig) {
    fig.textContent = "";
    return el("svg", {viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img"}, fig);
  }
  function scale(lo, hi, a, b) {
    if (hi === lo) { hi = lo + 1; lo = lo - 1; }
    return (v) => a + (v - lo) * (b - a) / (hi - lo);
  }
  function axes(s, xs, ys, xlabel, ylabel) {
    el("line", {x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, class: "axis"}, s);
    el("line", {x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b, class: "axis"}, s);
    for (const [v, y] of ys) { text(s, PAD.l - 4, y + 4, fmt(v), "end"); el("line", {x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "grid"}, s); }
    for (const [v, x] of xs) text(s, x, H - PAD.b + 14, fmt(v));
    if (xlabel) text(s, (W + PAD.l) / 2, H - 4, xlabel);
    if (ylabel) { const t = text(s, 12, H / 2, ylabel); t.setAttribute("transform", `rotate(-90 12 ${H / 2})`); }
  }
  function ticks(lo, hi, f) {
    const out = [];
    for (let i = 0; i <= 4; i++) { const v = lo + (hi - lo) * i / 4; out.push([v, f(v)]); }
    return out;
  }

  // lines: [{name, points: [[x, y], ...]}]
  function lines(fig, series, xlabel, ylabel) {
    const all = series.flatMap((s) => s.points);
    const s = svg(fig);
    let n = 0;
    if (!all.length) { text(s, W / 2, H / 2, "no points yet"); fig.dataset.points = "0"; return; }
    const xlo = Math.min(...all.map((p) => p[0])), xhi = Math.max(...all.map((p) => p[0]));
    const ylo = Math.min(...all.map((p) => p[1])), yhi = Math.max(...all.map((p) => p[1]));
    const fx = scale(xlo, xhi, PAD.l + 6, W - PAD.r - 6), fy = scale(ylo, yhi, H - PAD.b - 6, PAD.t + 6);
    axes(s, ticks(xlo, xhi, fx), ticks(ylo, yhi, fy), xlabel, ylabel);
    series.forEach((ser, i) => {
      const c = ser.color || COLORS[i % COLORS.length];
      if (ser.points.length > 1) el("polyline", {points: ser.points.map((p) => `${fx(p[0])},${fy(p[1])}`).join(" "), stroke: c, class: "line"}, s);
      for (const p of ser.points) {
        const dot = el("circle", {cx: fx(p[0]), cy: fy(p[1]), r: 3, fill: c, class: "pt"}, s);
        el("title", {}, dot).textContent = `${ser.name}: ${p[0]} → ${p[1]}`;
        n++;
      }
    });
    fig.dataset.points = String(n);
    const legend = document.createElement("div");
    legend.className = "legend";
    series.slice(0, 24).forEach((ser, i) => {
      const item = document.createElement("span");
      item.style.setProperty("--c", ser.color || COLORS[i % COLORS.length]);
      item.textContent = ser.name;
      legend.appendChild(item);
    });
    if (series.length > 24) legend.appendChild(document.createTextNode(`… and ${series.length - 24} more`));
    fig.appendChild(legend);
  }

  function data(fig) { return JSON.parse(document.getElementById(fig.id + "-data").textContent); }

  const DRAW = {
    bars(fig) {
      const d = data(fig), s = svg(fig), n = d.values.length;
      const hi = Math.max(1, ...d.values), fy = scale(0, hi, H - PAD.b, PAD.t);
      axes(s, [], ticks(0, hi, fy), "", "items");
      const bw = (W - PAD.l - PAD.r) / Math.max(n, 1);
      d.values.forEach((v, i) => {
        const x = PAD.l + i * bw + bw * 0.15;
        const r = el("rect", {x: x, y: fy(v), width: bw * 0.7, height: H - PAD.b - fy(v), class: "bar"}, s);
        el("title", {}, r).textContent = `${d.labels[i]}: ${v}`;
        text(s, x + bw * 0.35, fy(v) - 3, String(v));
        if (n <= 40) text(s, x + bw * 0.35, H - PAD.b + 14, d.labels[i]);
      });
      fig.dataset.points = String(n);
    },
    history(fig) {
      const d = data(fig), max = d.direction !== "minimize";
      const best = [];
      let b = null;
      for (const [x, y] of d.points) { b = b === null ? y : (max ? Math.max(b, y) : Math.min(b, y)); best.push([x, b]); }
      lines(fig, [{name: "trial", points: d.points, color: "#64748b"}, {name: "best so far", points: best, color: "#16a34a"}], "trial", d.metric);
    },
    pr(fig) {
      const d = data(fig);
      lines(fig, Object.entries(d).map(([c, pts]) => ({name: c, points: pts})), "recall", "precision");
    },
    importance(fig) {
      fetch(fig.dataset.src, {cache: "no-store"}).then((r) => r.json()).then((d) => {
        if (!d.importances) { fig.textContent = d.error || "not available"; fig.dataset.points = "0"; return; }
        const items = Object.entries(d.importances).sort((a, b) => b[1] - a[1]);
        const s = svg(fig), hi = Math.max(...items.map((x) => x[1]), 1e-9);
        const fx = scale(0, hi, 140, W - PAD.r - 40), bh = Math.min(28, (H - 10) / Math.max(items.length, 1));
        items.forEach(([k, v], i) => {
          const y = 5 + i * bh;
          text(s, 134, y + bh * 0.65, k, "end");
          el("rect", {x: 140, y: y + bh * 0.15, width: Math.max(1, fx(v) - 140), height: bh * 0.7, class: "bar"}, s);
          text(s, fx(v) + 4, y + bh * 0.65, v.toFixed(3), "start");
        });
        s.setAttribute("viewBox", `0 0 ${W} ${10 + items.length * bh}`);  // as tall as its bars
        fig.dataset.points = String(items.length);
      }).catch((e) => { fig.textContent = "not available: " + e; fig.dataset.points = "0"; });
    },
    masks(fig) {
      // each thumbnail's mask: category ids as pixel values, drawn in a colour per id over the image
      // (0 is the background) and the names of the categories it shows written under it
      const names = data(fig);
      let drawn = 0;
      for (const c of document.querySelectorAll("canvas[data-mask]")) {
        const img = new Image();
        img.onload = () => {
          const w = img.naturalWidth, h = img.naturalHeight;
          c.width = w; c.height = h;
          const ctx = c.getContext("2d");
          ctx.drawImage(img, 0, 0);
          const px = ctx.getImageData(0, 0, w, h), seen = new Set();
          for (let i = 0; i < px.data.length; i += 4) {
            const id = px.data[i];
            if (id === 0) { px.data[i + 3] = 0; continue; }
            seen.add(id);
            const rgb = COLORS[id % COLORS.length].match(/\w\w/g).map((x) => parseInt(x, 16));
            px.data[i] = rgb[0]; px.data[i + 1] = rgb[1]; px.data[i + 2] = rgb[2]; px.data[i + 3] = 140;
          }
          ctx.putImageData(px, 0, 0);
          const label = c.closest(".thumb").querySelector("span");
          label.textContent = [...seen].sort((a, b) => a - b).map((id) => names[String(id)] || String(id)).join(", ");
          fig.dataset.points = String(++drawn);
        };
        img.src = c.dataset.mask;
      }
      if (!document.querySelector("canvas[data-mask]")) fig.dataset.points = "0";
    },
    curves(fig) {
      const state = document.getElementById("curves-state");
      let timer = null;
      const poll = () => fetch(fig.dataset.src, {cache: "no-store"}).then((r) => r.json()).then((d) => {
        // a curve is a metric some trial reported more than once: the objective first, then
        // the losses (a metric evaluated once per trial is in the trials table instead)
        const metrics = new Set();
        for (const per of Object.values(d.series)) for (const [m, pts] of Object.entries(per)) if (pts.length > 1) metrics.add(m);
        const order = [d.objective, ...[...metrics].filter((m) => m !== d.objective && m.includes("loss")).sort()].filter((m) => metrics.has(m));
        fig.textContent = "";
        if (!order.length && !d.running) {
          fig.textContent = "Each trial reported its metrics once (no per-step curve): see the trials table.";
        }
        let total = 0;
        for (const m of order.length || !d.running ? order : [d.objective]) {
          const sub = document.createElement("div");
          sub.className = "sub";
          const h = document.createElement("h3");
          h.textContent = m;
          fig.appendChild(h);
          fig.appendChild(sub);
          lines(sub, Object.entries(d.series).filter(([, per]) => per[m]).map(([t, per]) => ({name: t, points: per[m]})), "step", m);
          total += Number(sub.dataset.points || 0);
        }
        fig.dataset.points = String(d.points);
        fig.dataset.running = String(d.running);
        if (state) state.textContent = d.running ? `training: ${d.points} points so far (updates every second)` : `${d.points} points`;
        // every second while it trains; every few seconds otherwise, to see the next training start
        const every = d.running ? 1000 : 3000;
        if (timer && timer.every !== every) { clearInterval(timer.id); timer = null; }
        if (!timer) timer = {every: every, id: setInterval(poll, every)};
      }).catch((e) => { if (state) state.textContent = "curves not available: " + e; });
      poll();
    },
  };

  for (const fig of document.querySelectorAll("figure[data-chart]")) {
    const draw = DRAW[fig.dataset.chart];
    if (draw) draw(fig);
  }
})();
