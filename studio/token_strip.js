// The Routing lab's token strip (studio/strip.py builds its data). Why a component and not st.html: st.html sanitises
// its markup on every rerun, and for 512 tokens that sanitising and parsing was a quarter of the browser's work per key
// press in the lab (bench/browser_cost.py, this project's 2-core machine). Tokens go in as text nodes, never as HTML.
const STYLE = `
.pimoe-strip{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:15px;line-height:2.0;
  overflow-wrap:anywhere;padding:8px 10px;border:1px solid #e5e7eb;border-radius:6px}
.pimoe-strip span{padding:1px 0;border-bottom:3px solid}
.pimoe-strip span.dropped{outline:1px dashed #dc2626}
.pimoe-strip-legend{font-size:13px;margin-top:6px}
.pimoe-strip-legend .item{display:inline-flex;align-items:center;margin-right:14px;white-space:nowrap}
.pimoe-strip-legend .swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px}
.pimoe-strip-legend .muted{color:#6b7280;margin-left:4px}`;

function hex2(v) { return v.toString(16).padStart(2, '0'); }

function drawStrip(strip, d) {
  // The same text with new routing (a temperature or layer change): restyle the spans that changed, keep the rest.
  const layout = JSON.stringify([d.text, d.breaks]);
  const spans = strip.layout === layout ? strip.spans : null;
  const dropped = new Set(d.dropped);
  if (spans) {
    for (let i = 0; i < spans.length; i++) style(spans[i], d, i, dropped.has(i));
    return;
  }
  const wbr = new Set(d.breaks.wbr), br = new Set(d.breaks.br), out = document.createDocumentFragment();
  strip.spans = d.text.map((text, i) => {
    const span = document.createElement('span');
    span.textContent = text;
    style(span, d, i, dropped.has(i));
    out.appendChild(span);
    if (wbr.has(i)) out.appendChild(document.createElement('wbr'));
    else if (br.has(i)) out.appendChild(document.createElement('br'));
    return span;
  });
  strip.layout = layout;
  strip.replaceChildren(out);
}

function style(span, d, i, isDropped) {
  const colour = d.colors[d.color[i]], background = colour + hex2(d.alpha[i]);
  if (span.dataset.bg !== background) {
    span.dataset.bg = background; span.style.background = background; span.style.borderBottomColor = colour;
  }
  if (span.title !== d.titles[i]) span.title = d.titles[i];
  if (span.classList.contains('dropped') !== isDropped) span.classList.toggle('dropped', isDropped);
}

function drawLegend(legend, d) {
  const head = document.createElement('span');
  head.className = 'muted'; head.style.marginRight = '10px'; head.textContent = 'top-1 expert type (tokens):';
  const items = d.legend.map(([type, colour, count]) => {
    const item = document.createElement('span'), swatch = document.createElement('span'), n = document.createElement('span');
    item.className = 'item'; swatch.className = 'swatch'; swatch.style.background = colour; n.className = 'muted';
    n.textContent = String(count);
    item.append(swatch, document.createTextNode(type + ' '), n);
    return item;
  });
  legend.replaceChildren(head, ...items);
}

export default function (component) {
  const { data, parentElement } = component;
  let root = parentElement.querySelector('.pimoe-strip-root');
  if (!root) {
    root = document.createElement('div'); root.className = 'pimoe-strip-root';
    const style = document.createElement('style'), strip = document.createElement('div'), legend = document.createElement('div');
    style.textContent = STYLE; strip.className = 'pimoe-strip'; legend.className = 'pimoe-strip-legend';
    root.append(style, strip, legend); parentElement.appendChild(root);
  }
  const key = JSON.stringify(data);
  if (key !== root.key) {
    root.key = key;
    drawStrip(root.children[1], data);
    drawLegend(root.children[2], data);
  }
}
