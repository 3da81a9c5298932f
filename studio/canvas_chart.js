// PiMoE Studio's live charts: one <canvas> per chart, drawn from a spec that studio/figures/canvas.py builds.
// Why not plotly here: under eight sessions on two cores, plotly's 4.7 MB bundle and its per-redraw layout cost the
// browser 0.31 s per Routing-lab key press and 0.22 s per second of a live-training page (chromium's counters,
// bench/browser_cost.py); a canvas redraw of the same data is a few milliseconds.
const FONT = '12px "Source Sans Pro", sans-serif';
const SMALL = '11px "Source Sans Pro", sans-serif';
const INK = '#31333f', GRID = '#e5e7eb', MUTED = '#6b7280';
const SCALES = {
  blues: ['#f7fbff', '#c6dbef', '#6baed6', '#2171b5', '#08306b'],
  viridis: ['#440154', '#3b528b', '#21918c', '#5ec962', '#fde725'],
};

function hexRgb(hex) { const v = parseInt(hex.slice(1), 16); return [(v >> 16) & 255, (v >> 8) & 255, v & 255]; }
const RGB = Object.fromEntries(Object.entries(SCALES).map(([k, v]) => [k, v.map(hexRgb)]));

function colour(scale, t) {
  const stops = RGB[scale] || RGB.blues;
  t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i, a = stops[i], b = stops[i + 1];
  return [0, 1, 2].map((c) => Math.round(a[c] + (b[c] - a[c]) * f));
}

function fmt(v, style) {
  if (v === null || v === undefined || !Number.isFinite(v)) return 'n/a';
  if (style === 'percent') return (100 * v).toFixed(1) + '%';
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toLocaleString('en-US');
  if (a >= 1) return String(+v.toPrecision(4));
  if (a === 0) return '0';
  return a >= 1e-3 ? String(+v.toPrecision(3)) : v.toExponential(2);
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function finite(values) { return values.filter((v) => v !== null && Number.isFinite(v)); }

function xExtent(spec) {
  if (spec.x_labels && spec.x_labels.length) return [-0.5, spec.x_labels.length - 0.5];
  const across = spec.panels.find((p) => p.hbars);
  if (across) return across.hbars.x_range;
  const xs = [];
  for (const p of spec.panels) {
    for (const s of p.series || []) xs.push(...finite(s.x));
    if (p.heatmap) { const e = cellEdges(p.heatmap.x); if (e.length) xs.push(e[0], e[e.length - 1]); }
    if (p.bars) xs.push(-0.5, p.bars.values.length - 0.5);
  }
  if (!xs.length) return [0, 1];
  const lo = Math.min(...xs), hi = Math.max(...xs);
  return hi > lo ? [lo, hi] : [lo - 0.5, hi + 0.5];
}

function cellEdges(xs) {
  if (!xs.length) return [];
  if (xs.length === 1) return [xs[0] - 0.5, xs[0] + 0.5];
  const edges = [xs[0] - (xs[1] - xs[0]) / 2];
  for (let i = 1; i < xs.length; i++) edges.push((xs[i - 1] + xs[i]) / 2);
  edges.push(xs[xs.length - 1] + (xs[xs.length - 1] - xs[xs.length - 2]) / 2);
  return edges;
}

function yExtent(panel) {
  if (panel.y_range) return panel.log_y ? panel.y_range.map(Math.log10) : panel.y_range.slice();
  let ys = [];
  for (const s of panel.series || []) ys.push(...finite(s.y));
  if (panel.bars) ys.push(0, ...finite(panel.bars.values));
  for (const h of panel.hlines || []) ys.push(h.y);
  if (panel.log_y) ys = ys.filter((v) => v > 0).map(Math.log10);
  if (!ys.length) return panel.log_y ? [-3, 1] : [0, 1];
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (panel.log_y) return [Math.floor(lo), Math.max(Math.ceil(hi), Math.floor(lo) + 1)];
  if (panel.from_zero) lo = Math.min(0, lo);
  if (hi === lo) { const d = Math.abs(hi) * 0.1 || 0.5; return [lo - d, hi + d]; }
  const pad = (hi - lo) * 0.05;
  return [panel.bars || (panel.from_zero && lo === 0) ? lo : lo - pad, hi + pad];
}

function layout(ctx, spec, width) {
  ctx.font = SMALL;
  let left = 0;
  const panels = spec.panels.map((p) => {
    const [lo, hi] = yExtent(p);
    const rows = p.heatmap ? p.heatmap.y_labels : p.hbars ? p.hbars.labels : null;
    const ticks = rows ? [] : (p.log_y ? Array.from({ length: hi - lo + 1 }, (_, i) => lo + i) : niceTicks(lo, hi, 4));
    const labels = rows || ticks.map((t) => (p.log_y ? fmt(Math.pow(10, t)) : fmt(t)));
    left = Math.max(left, ...labels.map((l) => ctx.measureText(l).width), 0);
    return { p, lo, hi, ticks, labels };
  });
  // Legend entries flow left to right and wrap; each is placed here so the panels start below the last row.
  const legend = [];
  let lx = 4, ly = 33;
  for (const [name, color, marker] of spec.legend ? legendItems(spec) : []) {
    const w = 28 + ctx.measureText(name).width;
    if (lx > 4 && lx + w > width) { lx = 4; ly += 16; }
    legend.push({ name, color, marker, x: lx, y: ly }); lx += w;
  }
  const hasBar = spec.panels.some((p) => p.heatmap && p.heatmap.colorbar !== false);
  const box = { left: Math.ceil(left) + 30, right: width - (hasBar ? 64 : 14) };
  // Labelled x positions (experts, tokens) that do not fit side by side are written at 40 degrees, and the plot
  // gives up the height they need.
  let slant = 0;
  if (spec.x_labels && spec.x_labels.length) {
    const widest = Math.max(...spec.x_labels.map((l) => ctx.measureText(l).width));
    if (widest > 0.95 * (box.right - box.left) / spec.x_labels.length) slant = Math.min(90, Math.ceil(widest * 0.64));
  }
  box.top = legend.length ? ly + 14 : 26; box.bottom = spec.height - 40 - slant; box.slant = slant;
  const gaps = spec.panels.map((p, i) => (p.subtitle ? 18 : 0) + (i ? 14 : 0));
  const free = box.bottom - box.top - gaps.reduce((a, b) => a + b, 0);
  const weights = spec.panels.map((p) => p.weight || 1), total = weights.reduce((a, b) => a + b, 0);
  let y = box.top;
  panels.forEach((q, i) => { y += gaps[i]; q.top = y; q.height = free * weights[i] / total; y += q.height; });
  return { box, panels, legend };
}

function legendItems(spec) {
  if (spec.legend_items) return spec.legend_items;
  const items = [];
  for (const p of spec.panels) for (const s of p.series || []) if (s.name) items.push([s.name, s.color, s.marker]);
  if (spec.panels.some((p) => p.heatmap && p.heatmap.marks && p.heatmap.marks.length)) {
    const h = spec.panels.find((p) => p.heatmap && p.heatmap.marks && p.heatmap.marks.length).heatmap;
    items.push([h.mark_name, '#dc2626', 'x']);
  }
  return items;
}

function cross(ctx, x, y, r, color) {
  ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
  ctx.moveTo(x - r, y - r); ctx.lineTo(x + r, y + r); ctx.moveTo(x - r, y + r); ctx.lineTo(x + r, y - r); ctx.stroke();
}

function drawMarker(ctx, kind, x, y, color) {
  if (kind === 'x') { cross(ctx, x, y, 4, color); return; }
  const points = kind === 'star' ? 10 : 4, r = kind === 'star' ? 8 : 5;
  ctx.beginPath();
  for (let i = 0; i < points; i++) {
    const a = -Math.PI / 2 + i * 2 * Math.PI / points, rr = kind === 'star' && i % 2 ? r * 0.45 : r;
    ctx.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
  }
  ctx.closePath(); ctx.fillStyle = color; ctx.fill(); ctx.strokeStyle = INK; ctx.lineWidth = 1; ctx.stroke();
}

function draw(canvas, spec) {
  const width = Math.max(240, canvas.parentElement.clientWidth), dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr); canvas.height = Math.round(spec.height * dpr);
  canvas.style.width = width + 'px'; canvas.style.height = spec.height + 'px';
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, spec.height);
  const L = layout(ctx, spec, width), box = L.box;
  const [x0, x1] = xExtent(spec);
  const X = (v) => box.left + (v - x0) / (x1 - x0) * (box.right - box.left);
  ctx.fillStyle = INK; ctx.font = 'bold 14px "Source Sans Pro", sans-serif'; ctx.textBaseline = 'top';
  ctx.textAlign = 'left'; ctx.fillText(spec.title, 4, 4);
  ctx.font = SMALL; ctx.textBaseline = 'middle';
  for (const { name, color, marker, x, y } of L.legend) {
    if (marker) drawMarker(ctx, marker, x + 6, y, color);
    else { ctx.fillStyle = color; ctx.fillRect(x, y - 1, 14, 3); }
    ctx.fillStyle = INK; ctx.fillText(name, x + 18, y);
  }
  const state = { spec, box, panels: [], X, x0, x1 };
  for (const q of L.panels) {
    const p = q.p, Y = (v) => q.top + q.height - (v - q.lo) / (q.hi - q.lo) * q.height;
    const Yv = (v) => Y(p.log_y ? Math.log10(v) : v);
    state.panels.push({ q, Y, Yv });
    if (p.subtitle) { ctx.fillStyle = INK; ctx.font = FONT; ctx.textBaseline = 'bottom'; ctx.textAlign = 'left';
      ctx.fillText(p.subtitle, box.left, q.top - 3); }
    ctx.font = SMALL; ctx.textBaseline = 'middle'; ctx.textAlign = 'right';
    if (p.heatmap) drawHeatmap(ctx, p.heatmap, q, box, X);
    else if (p.hbars) drawHBars(ctx, p.hbars, q, box, X);
    else q.ticks.forEach((t, i) => {
      const y = Y(t); ctx.strokeStyle = GRID; ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(box.left, y);
      ctx.lineTo(box.right, y); ctx.stroke(); ctx.fillStyle = MUTED; ctx.fillText(q.labels[i], box.left - 5, y);
    });
    if (p.bars) p.bars.values.forEach((v, i) => {
      if (v === null) return;
      const b = p.bars, w = (X(1) - X(0)) * (b.width || 0.7), y = Y(Math.max(v, q.lo));
      ctx.globalAlpha = b.opacity ? b.opacity[i] : 1; ctx.fillStyle = b.colors[i];
      ctx.fillRect(X(i) - w / 2, y, w, Y(Math.max(0, q.lo)) - y); ctx.globalAlpha = 1;
      if (b.text) { ctx.fillStyle = INK; ctx.textAlign = 'center'; ctx.textBaseline = 'bottom';
        ctx.fillText(b.text[i], X(i), y - 2); ctx.textAlign = 'right'; ctx.textBaseline = 'middle'; }
    });
    for (const s of p.series || []) {
      ctx.strokeStyle = s.color; ctx.lineWidth = s.width || 2;
      if (s.marker) { s.x.forEach((x, i) => s.y[i] !== null && drawMarker(ctx, s.marker, X(x), Yv(s.y[i]), s.color)); continue; }
      ctx.beginPath(); let pen = false;
      s.x.forEach((x, i) => { const v = s.y[i];
        if (v === null || (p.log_y && v <= 0)) { pen = false; return; }
        const px = X(x), py = Yv(v); if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py); pen = true; });
      if (s.x.length === 1 && s.y[0] !== null) { ctx.fillStyle = s.color; ctx.fillRect(X(s.x[0]) - 2, Yv(s.y[0]) - 2, 4, 4); }
      ctx.stroke();
    }
    for (const h of p.hlines || []) {
      const y = Yv(h.y); ctx.strokeStyle = h.color || INK; ctx.lineWidth = 1; ctx.setLineDash(h.dash === 'dot' ? [2, 3] : [6, 4]);
      ctx.beginPath(); ctx.moveTo(box.left, y); ctx.lineTo(box.right, y); ctx.stroke(); ctx.setLineDash([]);
      ctx.fillStyle = h.color || INK; ctx.textBaseline = 'bottom'; ctx.textAlign = h.align === 'right' ? 'right' : 'left';
      ctx.fillText(h.label || '', h.align === 'right' ? box.right - 2 : box.left + 2, y - 2);
    }
    if (p.y_title) { ctx.save(); ctx.translate(10, q.top + q.height / 2); ctx.rotate(-Math.PI / 2); ctx.fillStyle = INK;
      ctx.font = FONT; ctx.textAlign = 'center'; ctx.textBaseline = 'middle'; ctx.fillText(p.y_title, 0, 0); ctx.restore(); }
    if (!hasData(p)) { ctx.fillStyle = MUTED; ctx.font = FONT; ctx.textAlign = 'center';
      ctx.fillText(spec.empty_note || 'no data yet', (box.left + box.right) / 2, q.top + q.height / 2); }
  }
  drawXAxis(ctx, spec, box, X, x0, x1);
  drawEvents(ctx, spec, L, box, X);
  return state;
}

function hasData(p) {
  if (p.heatmap) return p.heatmap.z.length > 0 && p.heatmap.z[0].length > 0;
  if (p.hbars) return p.hbars.values.length > 0;
  if (p.bars) return p.bars.values.length > 0;
  return (p.series || []).some((s) => s.x.length > 0);
}

// One horizontal bar per labelled row (values along x), a marker per row (e.g. its baseline) and vertical reference lines.
function drawHBars(ctx, b, q, box, X) {
  const band = q.height / Math.max(1, b.values.length);
  for (const t of niceTicks(b.x_range[0], b.x_range[1], 5)) {
    ctx.strokeStyle = GRID; ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(X(t), q.top); ctx.lineTo(X(t), q.top + q.height); ctx.stroke();
  }
  b.values.forEach((v, i) => {
    const y = q.top + i * band;
    ctx.fillStyle = INK; ctx.textAlign = 'right'; ctx.fillText(b.labels[i], box.left - 5, y + band / 2);
    if (v !== null) { ctx.fillStyle = b.colors[i]; ctx.fillRect(X(0), y + band * 0.15, X(v) - X(0), band * 0.7); }
    if (b.marks && b.marks[i] !== null) drawMarker(ctx, 'diamond', X(b.marks[i]), y + band / 2, b.mark_color || INK);
  });
  for (const v of b.vlines || []) {
    ctx.strokeStyle = MUTED; ctx.setLineDash([6, 4]); ctx.beginPath(); ctx.moveTo(X(v.x), q.top);
    ctx.lineTo(X(v.x), q.top + q.height); ctx.stroke(); ctx.setLineDash([]);
    // inside the plot, beside the line's foot: above it sit the legend and the first row's label
    const w = ctx.measureText(v.label).width;
    ctx.fillStyle = 'rgba(255,255,255,0.85)'; ctx.fillRect(X(v.x) + 2, q.top + q.height - 16, w + 4, 14);
    ctx.fillStyle = INK; ctx.textAlign = 'left'; ctx.textBaseline = 'bottom';
    ctx.fillText(v.label, X(v.x) + 4, q.top + q.height - 3); ctx.textBaseline = 'middle';
  }
  ctx.textAlign = 'right';
}

function drawHeatmap(ctx, h, q, box, X) {
  const rows = h.z.length, cols = rows ? h.z[0].length : 0, edges = cellEdges(h.x);
  const zmin = h.zmin, zmax = h.zmax !== null && h.zmax !== undefined ? h.zmax
    : Math.max(zmin + 1e-12, ...h.z.map((r) => Math.max(...finite(r))));
  const cellH = q.height / Math.max(rows, 1);
  for (let r = 0; r < rows; r++) {
    const y = q.top + r * cellH;
    for (let c = 0; c < cols; c++) {
      const v = h.z[r][c]; if (v === null) continue;
      const [R, G, B] = colour(h.scale, (v - zmin) / (zmax - zmin));
      const xa = X(edges[c]), xb = X(edges[c + 1]);
      ctx.fillStyle = `rgb(${R},${G},${B})`; ctx.fillRect(xa, y, xb - xa + 0.6, cellH + 0.6);
      if (h.cell_text) { ctx.fillStyle = (R + G + B) / 3 < 128 ? '#fff' : INK; ctx.textAlign = 'center';
        ctx.fillText(v.toFixed(2), (xa + xb) / 2, y + cellH / 2); ctx.textAlign = 'right'; }
    }
    ctx.fillStyle = INK; ctx.fillText(h.y_labels[r], box.left - 5, y + cellH / 2);
  }
  for (const [c, r] of h.marks || []) cross(ctx, X(h.x[c]), q.top + (r + 0.5) * cellH, 4, '#dc2626');
  if (h.colorbar === false) return;
  const bx = box.right + 12, steps = 40;
  for (let i = 0; i < steps; i++) { const [R, G, B] = colour(h.scale, 1 - i / steps);
    ctx.fillStyle = `rgb(${R},${G},${B})`; ctx.fillRect(bx, q.top + i * q.height / steps, 12, q.height / steps + 0.6); }
  ctx.fillStyle = MUTED; ctx.textAlign = 'left';
  if (cols) {  // an empty heatmap's scale has no top value yet
    ctx.fillText(fmt(zmax, h.value_format), bx + 15, q.top + 5);
    ctx.fillText(fmt(zmin, h.value_format), bx + 15, q.top + q.height - 5);
  }
  ctx.save(); ctx.translate(bx + 6, q.top - 8); ctx.textAlign = 'center'; ctx.fillText(h.value_label, 0, 0); ctx.restore();
  ctx.textAlign = 'right';
}

function drawXAxis(ctx, spec, box, X, x0, x1) {
  ctx.font = SMALL; ctx.fillStyle = MUTED; ctx.textAlign = 'center'; ctx.textBaseline = 'top';
  ctx.strokeStyle = INK; ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(box.left, box.bottom); ctx.lineTo(box.right, box.bottom); ctx.stroke();
  const labels = spec.x_labels;
  if (labels && labels.length) {
    if (box.slant) {
      const every = Math.max(1, Math.ceil(16 / ((box.right - box.left) / labels.length)));  // rows of text 16 px apart
      ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
      labels.forEach((l, i) => { if (i % every) return; ctx.save(); ctx.translate(X(i), box.bottom + 6);
        ctx.rotate(-0.7); ctx.fillText(l, 0, 0); ctx.restore(); });
      ctx.textAlign = 'center'; ctx.textBaseline = 'top';
    } else labels.forEach((l, i) => ctx.fillText(l, X(i), box.bottom + 4));
  } else {
    const integer = spec.x_integer;
    for (const t of niceTicks(x0, x1, Math.max(2, Math.floor((box.right - box.left) / 80))))
      if (!integer || Number.isInteger(t)) ctx.fillText(fmt(t), X(t), box.bottom + 4);
  }
  ctx.fillStyle = INK; ctx.font = FONT; ctx.fillText(spec.x_title || '', (box.left + box.right) / 2, box.bottom + box.slant + 22);
}

function drawEvents(ctx, spec, L, box, X) {
  const events = spec.events || [];
  if (!events.length || !L.panels.length) return;
  const middle = (box.left + box.right) / 2, top = L.panels[0].top;
  ctx.font = SMALL; ctx.textBaseline = 'top';
  events.forEach(([x, label], i) => {
    const px = X(x); if (px < box.left - 1 || px > box.right + 1) return;
    ctx.strokeStyle = MUTED; ctx.setLineDash([2, 3]); ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(px, top);
    ctx.lineTo(px, box.bottom); ctx.stroke(); ctx.setLineDash([]);
    const right = px > middle, w = ctx.measureText(label).width, y = top + 2 + 13 * (i % 3);
    ctx.fillStyle = 'rgba(255,255,255,0.8)'; ctx.fillRect(right ? px - w - 4 : px, y - 1, w + 4, 13);
    ctx.fillStyle = '#374151'; ctx.textAlign = right ? 'right' : 'left'; ctx.fillText(label, right ? px - 2 : px + 2, y);
  });
}

function nearest(xs, x) {
  let lo = 0, hi = xs.length - 1;
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid; else hi = mid; }
  return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
}

function hoverText(state, mx, my) {
  const { spec, box } = state;
  if (mx < box.left || mx > box.right) return null;
  const q = state.panels.find((e) => my >= e.q.top && my <= e.q.top + e.q.height);
  if (!q) return null;
  const p = q.q.p, x = state.x0 + (mx - box.left) / (box.right - box.left) * (state.x1 - state.x0);
  if (p.hbars) {
    const i = Math.floor((my - q.q.top) / (q.q.height / Math.max(1, p.hbars.values.length)));
    return i >= 0 && i < p.hbars.values.length ? p.hbars.hover[i] : null;
  }
  if (p.heatmap) {
    const h = p.heatmap, rows = h.z.length; if (!rows || !h.x.length) return null;
    const c = nearest(h.x, x), r = Math.min(rows - 1, Math.floor((my - q.q.top) / (q.q.height / rows)));
    return `${h.x_hover ? h.x_hover[c] : h.x[c]}\n${h.y_labels[r]}\n${h.value_label} = ${fmt(h.z[r][c], h.value_format)}`;
  }
  if (p.bars) {
    const i = Math.round(x); if (i < 0 || i >= p.bars.values.length) return null;
    return p.bars.hover ? p.bars.hover[i] : `${spec.x_labels[i]}: ${fmt(p.bars.values[i])}`;
  }
  const lines = (p.series || []).filter((s) => s.x.length && !s.marker);
  if (!lines.length) return null;
  const i = nearest(lines[0].x, x), head = lines[0].hover ? lines[0].hover[i] : `${spec.x_title} ${fmt(lines[0].x[i])}`;
  return [head, ...lines.map((s) => `${s.name}: ${fmt(s.y[i])}`)].join('\n');
}

export default function (component) {
  const { data, parentElement } = component;
  let root = parentElement.querySelector('.pimoe-chart');
  if (!root) {
    root = document.createElement('div'); root.className = 'pimoe-chart'; root.style.position = 'relative';
    const canvas = document.createElement('canvas'), tip = document.createElement('div');
    tip.style.cssText = 'position:absolute;display:none;pointer-events:none;white-space:pre;background:rgba(255,255,255,.95);' +
      'border:1px solid #d1d5db;border-radius:4px;padding:4px 6px;font:12px "Source Sans Pro",sans-serif;color:#31333f;z-index:5';
    // What the canvas shows, as text for screen readers (and for browser tests): the title and each event marker.
    const described = document.createElement('ul');
    described.className = 'pimoe-chart-text';
    described.style.cssText = 'position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);margin:0';
    canvas.setAttribute('role', 'img');
    root.append(canvas, tip, described); parentElement.appendChild(root);
    canvas.addEventListener('mousemove', (e) => {
      const text = root.state && hoverText(root.state, e.offsetX, e.offsetY);
      if (!text) { tip.style.display = 'none'; return; }
      tip.textContent = text; tip.style.display = 'block';
      const flip = e.offsetX > canvas.clientWidth * 0.6;
      tip.style.left = (flip ? e.offsetX - tip.offsetWidth - 12 : e.offsetX + 12) + 'px'; tip.style.top = (e.offsetY + 12) + 'px';
    });
    canvas.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
  }
  if (!root.observer) {
    root.observer = new ResizeObserver(() => { if (root.spec && parentElement.clientWidth !== root.drawnWidth) redraw(root); });
    root.observer.observe(parentElement);
  }
  const key = JSON.stringify(data);
  if (key !== root.key) { root.key = key; root.spec = data; redraw(root); }
  return () => { root.observer.disconnect(); root.observer = null; };
}

function redraw(root) {
  root.state = draw(root.firstChild, root.spec);
  root.firstChild.setAttribute('aria-label', root.spec.title);
  root.lastChild.replaceChildren(...(root.spec.events || []).map(([step, label]) => {
    const item = document.createElement('li'); item.textContent = `step ${step}: ${label}`; return item; }));
  root.drawnWidth = root.parentElement.clientWidth;
  // Read by the load bench (bench/load_sessions.py) to time a redraw in the browser.
  root.dataset.draws = String((+root.dataset.draws || 0) + 1);
}
