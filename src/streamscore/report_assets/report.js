(function () {
const R = JSON.parse(document.getElementById('report-data').textContent);
const NS = 'http://www.w3.org/2000/svg';
const W = 440, H = 290, M = {l: 54, r: 14, t: 12, b: 42};
function el(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(v) {
  if (Math.abs(v) >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + 'k';
  return Math.abs(v) >= 10 ? v.toFixed(0) : +v.toFixed(2) + '';
}
function day(ms) { return new Date(ms).toISOString().slice(0, 10); }
function frame(id, xr, yr, xl, yl, xfmt, xticks) {
  const svg = el('svg', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img'});
  document.getElementById(id).appendChild(svg);
  const sx = v => M.l + (v - xr[0]) / ((xr[1] - xr[0]) || 1) * (W - M.l - M.r);
  const sy = v => H - M.b - (v - yr[0]) / ((yr[1] - yr[0]) || 1) * (H - M.t - M.b);
  for (let i = 0; i <= 4; i++) {
    const yv = yr[0] + (yr[1] - yr[0]) * i / 4;
    el('line', {x1: M.l, x2: W - M.r, y1: sy(yv), y2: sy(yv), class: 'grid-line'}, svg);
    el('text', {x: M.l - 6, y: sy(yv) + 4, 'text-anchor': 'end', class: 'tick'}, svg, fmt(yv));
  }
  for (const xv of xticks || [0, 1, 2, 3, 4].map(i => xr[0] + (xr[1] - xr[0]) * i / 4)) {
    el('text', {x: sx(xv), y: H - M.b + 16, 'text-anchor': 'middle', class: 'tick'}, svg,
       (xfmt || fmt)(xv));
  }
  el('line', {x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, class: 'axis'}, svg);
  el('line', {x1: M.l, x2: M.l, y1: M.t, y2: H - M.b, class: 'axis'}, svg);
  el('text', {x: (M.l + W - M.r) / 2, y: H - 6, 'text-anchor': 'middle', class: 'label'}, svg, xl);
  el('text', {x: 14, y: (M.t + H - M.b) / 2, 'text-anchor': 'middle', class: 'label',
              transform: `rotate(-90 14 ${(M.t + H - M.b) / 2})`}, svg, yl);
  return {svg, sx, sy};
}
function line(f, pts, cls, name) {
  if (!pts.length) return;
  const d = pts.map((p, i) => (i ? 'L' : 'M') + f.sx(p[0]).toFixed(1) + ' ' + f.sy(p[1]).toFixed(1));
  el('path', {d: d.join(' '), class: cls, 'data-series': name, 'data-points': pts.length}, f.svg);
}
function dots(f, pts, name, sizes) {
  const g = el('g', {'data-series': name, 'data-points': pts.length}, f.svg);
  pts.forEach((p, i) => el('circle', {cx: f.sx(p[0]), cy: f.sy(p[1]), r: sizes ? sizes[i] : 3.5,
                                      class: 'dot'}, g));
}
function empty(id, why) {
  const svg = el('svg', {width: W, height: 60, 'data-empty': 'true'});
  document.getElementById(id).appendChild(svg);
  el('text', {x: 10, y: 34, class: 'empty'}, svg, why);
}
function hbars(id, counts, name) {
  const keys = Object.keys(counts || {});
  if (!keys.length) return empty(id, 'no users scored');
  const max = Math.max(...keys.map(k => counts[k])), row = 22, left = 150;
  const svg = el('svg', {width: W, height: keys.length * row + 8});
  document.getElementById(id).appendChild(svg);
  const g = el('g', {'data-series': name, 'data-points': keys.length}, svg);
  keys.forEach((k, i) => {
    const w = counts[k] / max * (W - left - 60);
    el('text', {x: left - 8, y: i * row + 16, 'text-anchor': 'end', class: 'label'}, svg, k);
    el('rect', {x: left, y: i * row + 4, width: Math.max(w, 1), height: row - 7, class: 'bar'}, g);
    el('text', {x: left + w + 6, y: i * row + 16, class: 'tick'}, svg, counts[k].toLocaleString());
  });
}
const churn = R.churn || {}, value = R.value || {};
function roc() {
  const pts = churn.roc_curve || [];
  if (!pts.length) return empty('plot-roc', 'no churn labels of both kinds yet');
  const f = frame('plot-roc', [0, 1], [0, 1], 'false positive rate', 'true positive rate');
  line(f, [[0, 0], [1, 1]], 'ref', 'chance');
  line(f, pts, 'model', 'roc');
}
function calibration() {
  const rows = churn.calibration || [];
  if (!rows.length) return empty('plot-calibration', 'no churn labels yet');
  const f = frame('plot-calibration', [0, 1], [0, 1], 'mean predicted probability',
                  'observed churn rate');
  line(f, [[0, 0], [1, 1]], 'ref', 'perfect');
  const most = Math.max(...rows.map(r => r.n));
  line(f, rows.map(r => [r.mean_predicted, r.observed_rate]), 'model', 'calibration-line');
  dots(f, rows.map(r => [r.mean_predicted, r.observed_rate]), 'calibration',
       rows.map(r => 3 + 6 * Math.sqrt(r.n / most)));
}
function aucOverTime() {
  // The newest block is still filling: drawn only once it holds half a block's labels.
  const all = churn.auc_over_time || [];
  const full = Math.max(0, ...all.map(r => r.labels));
  const rows = all.filter(r => r.roc_auc !== null && r.labels >= full / 2);
  if (rows.length < 2) return empty('plot-auc-time', 'fewer than two blocks of labels yet');
  const xs = rows.map(r => (Date.parse(r.from) + Date.parse(r.to)) / 2);
  const f = frame('plot-auc-time', [Math.min(...xs), Math.max(...xs)], [0, 1],
                  'prediction time (blocks of equal label counts)', 'ROC AUC / churn rate', day);
  line(f, rows.map((r, i) => [xs[i], r.churn_rate]), 'rate', 'churn-rate');
  line(f, rows.map((r, i) => [xs[i], r.roc_auc]), 'model', 'auc-over-time');
  dots(f, rows.map((r, i) => [xs[i], r.roc_auc]), 'auc-over-time-dots');
}
function gain() {
  const g = value.gain_curve || {share: []};
  if (!g.share.length) return empty('plot-gain', 'no spend labels yet');
  const f = frame('plot-gain', [0, 1], [0, 1], 'share of customers, highest predicted first',
                  'share of realised spend');
  line(f, [[0, 0], [1, 1]], 'ref', 'random');
  line(f, g.share.map((s, i) => [s, g.perfect[i]]), 'best', 'gain-perfect');
  line(f, g.share.map((s, i) => [s, g.model[i]]), 'model', 'gain');
}
function lift() {
  const rows = value.lift_by_decile || [];
  if (!rows.length) return empty('plot-lift', 'fewer than ten spend labels yet');
  const top = Math.max(...rows.map(r => Math.max(r.mean_actual, r.mean_predicted))) || 1;
  const f = frame('plot-lift', [0.5, 10.5], [0, top], 'decile of predicted value (1: highest)',
                  'mean spend in the horizon', String, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  const g = el('g', {'data-series': 'lift', 'data-points': rows.length}, f.svg);
  const bw = (f.sx(1) - f.sx(0)) * 0.36;
  rows.forEach(r => {
    el('rect', {x: f.sx(r.decile) - bw, y: f.sy(r.mean_actual), width: bw,
                height: f.sy(0) - f.sy(r.mean_actual), class: 'bar'}, g);
    el('rect', {x: f.sx(r.decile), y: f.sy(r.mean_predicted), width: bw,
                height: f.sy(0) - f.sy(r.mean_predicted), class: 'bar2'}, g);
  });
}
const errors = [];
for (const draw of [roc, calibration, aucOverTime, gain, lift,
                    () => hbars('plot-segments', R.segments, 'segments'),
                    () => hbars('plot-lifecycles', R.lifecycles, 'lifecycles')]) {
  try { draw(); } catch (e) { errors.push(String(e && e.stack || e)); }
}
document.getElementById('errors').textContent = errors.join('\n');
document.body.setAttribute('data-drawn', errors.length ? 'with-errors' : 'yes');
})();
