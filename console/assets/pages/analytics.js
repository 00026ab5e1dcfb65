// #/analytics: revenue over time, top products, the order funnel and delivery durations, from
// the sales_analytics projection. The chart library (uPlot) is loaded here only.

import { h, field, tableWrap, loadUPlot, money, major, num, fmtDuration, fmtTime, notice, errorMessage, isAbort, humanize } from '../app.js';

const RANGES = [['1', 'Last 24 hours'], ['7', 'Last 7 days'], ['30', 'Last 30 days'], ['90', 'Last 90 days'], ['365', 'Last year']];
const PALETTE = ['#2456c9', '#d9822b', '#1d7a46', '#b3261e', '#7c4dff', '#00838f', '#8d6e63'];

export default async function analytics(ctx) {
  const q = ctx.query;
  const range = h('select', { id: 'analytics-range' }, RANGES.map(([v, l]) => h('option', { value: v }, l)));
  range.value = RANGES.some(([v]) => v === q.get('days')) ? q.get('days') : '30';
  const bucket = h('select', { id: 'revenue-bucket' }, h('option', { value: 'hour' }, 'Per hour'), h('option', { value: 'day' }, 'Per day'));
  bucket.value = q.get('bucket') === 'hour' ? 'hour' : 'day';

  const revenueChart = h('div', { id: 'chart-revenue', class: 'chart', role: 'img', 'aria-label': 'Revenue over time' });
  const revenueNote = h('div');
  const revenueTotals = h('p', { class: 'muted small', id: 'revenue-totals' });
  const topChart = h('div', { id: 'chart-top-products', class: 'chart', role: 'img', 'aria-label': 'Top products by units sold' });
  const topNote = h('div');
  const topTable = h('div');
  const funnelArea = h('div');
  const durationsArea = h('div');

  ctx.content.replaceChildren(
    h('h1', null, 'Sales analytics'),
    h('form', { class: 'controls filters', 'aria-label': 'Analytics range', onsubmit: (e) => e.preventDefault() },
      field('Range', range), field('Revenue bucket', bucket)),
    h('section', { class: 'card', 'aria-labelledby': 'revenue-title' },
      h('h2', { id: 'revenue-title' }, 'Revenue'),
      h('p', { class: 'muted small' }, 'Confirmed, paid orders by placement time, net of refunds; per currency, never mixed.'),
      revenueNote, revenueChart, revenueTotals),
    h('div', { class: 'grid' },
      h('section', { class: 'card', 'aria-labelledby': 'top-title' },
        h('h2', { id: 'top-title' }, 'Top products'), topNote, topChart, topTable),
      h('section', { class: 'card', 'aria-labelledby': 'funnel-title' },
        h('h2', { id: 'funnel-title' }, 'Order funnel'), funnelArea),
      h('section', { class: 'card', 'aria-labelledby': 'durations-title' },
        h('h2', { id: 'durations-title' }, 'Placed → delivered'), durationsArea)),
  );

  const charts = new Map(); // container → uPlot
  const observer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const u = charts.get(entry.target);
      const width = Math.floor(entry.contentRect.width);
      if (u && width > 0 && Math.abs(u.width - width) > 1) u.setSize({ width, height: u.height });
    }
  });
  observer.observe(revenueChart);
  observer.observe(topChart);
  ctx.onCleanup(() => {
    observer.disconnect();
    for (const u of charts.values()) u.destroy();
    charts.clear();
  });

  const uPlotReady = loadUPlot();
  uPlotReady.catch(() => {}); // reported where it is awaited

  function bounds() {
    const to = new Date();
    const from = new Date(to.getTime() - Number(range.value) * 86400_000);
    return { from: from.toISOString(), to: to.toISOString() };
  }

  /** Draws a uPlot chart into `el`; resolves once it has drawn (data-points set). */
  function draw(el, opts, data) {
    const old = charts.get(el);
    if (old) { old.destroy(); charts.delete(el); }
    el.replaceChildren();
    return new Promise((resolve) => {
      const width = Math.max(200, Math.floor(el.clientWidth || el.parentElement.clientWidth || 600));
      let done = false;
      const u = new window.uPlot({
        ...opts,
        width,
        height: opts.height || 280,
        hooks: {
          draw: [(plot) => {
            if (charts.get(el) === plot || !charts.has(el)) el.dataset.points = String(plot.data[0].length);
            if (!done) { done = true; resolve(plot); }
          }],
        },
      }, data, el);
      charts.set(el, u);
      // A chart that has nothing to draw may not fire `draw`: settle anyway.
      requestAnimationFrame(() => requestAnimationFrame(() => {
        if (done) return;
        done = true;
        if (charts.get(el) === u) el.dataset.points = String(u.data[0].length); // not if replaced since
        resolve(u);
      }));
    });
  }

  function noData(el, message) {
    const old = charts.get(el);
    if (old) { old.destroy(); charts.delete(el); }
    el.replaceChildren(h('p', { class: 'chart-empty' }, message));
    el.dataset.points = '0';
  }

  // Each section's load gets `latest()` (still its section's newest load: may draw) and a signal
  // (aborted when a newer load of the section starts, or the page is left).
  async function loadRevenue(latest, signal) {
    const { from, to } = bounds();
    const answer = await ctx.api('/v1/analytics/revenue', { query: { from, to, bucket: bucket.value }, signal });
    const uPlot = await uPlotReady;
    if (!latest()) return;
    revenueNote.replaceChildren();
    // One point per bucket start the API answered (empty buckets are left out by the API, and
    // so here: data-points is the number of bucket starts).
    const xs = [...new Set(answer.buckets.map((b) => Math.floor(Date.parse(b.bucket_start) / 1000)))].sort((a, b) => a - b);
    const currencies = [...new Set(answer.buckets.map((b) => b.currency))].sort();
    if (!xs.length) {
      noData(revenueChart, 'No revenue in this range.');
      revenueTotals.textContent = '';
      return;
    }
    const index = new Map(xs.map((t, i) => [t, i]));
    const totals = new Map(currencies.map((c) => [c, { minor: 0, orders: 0 }]));
    const series = currencies.map(() => new Array(xs.length).fill(0));
    for (const b of answer.buckets) {
      const t = Math.floor(Date.parse(b.bucket_start) / 1000);
      const i = index.get(t);
      const c = currencies.indexOf(b.currency);
      if (i !== undefined) series[c][i] += major(b.revenue_minor, b.currency);
      const total = totals.get(b.currency);
      total.minor += b.revenue_minor;
      total.orders += b.orders;
    }
    revenueTotals.textContent = `In all: ${[...totals].map(([c, t]) => `${money(t.minor, c)} from ${num(t.orders)} orders`).join('; ')}. ${fmtTime(answer.from)} – ${fmtTime(answer.to)}.`;
    const formatters = new Map(currencies.map((c) => [c, new Intl.NumberFormat(undefined, { style: 'currency', currency: c })]));
    const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });
    await draw(revenueChart, {
      height: 300,
      scales: { x: { time: true } },
      series: [
        { label: answer.bucket === 'hour' ? 'Hour' : 'Day' },
        ...currencies.map((c, i) => ({
          label: c,
          stroke: PALETTE[i % PALETTE.length],
          width: 2,
          fill: `${PALETTE[i % PALETTE.length]}1a`,
          points: { show: xs.length <= 90 },
          value: (u, v) => (v === null || v === undefined ? '—' : formatters.get(c).format(v)),
        })),
      ],
      axes: [{}, { values: (u, splits) => splits.map((v) => compact.format(v)), size: 60 }],
    }, [xs, ...series]);
    void uPlot;
  }

  async function loadTop(latest, signal) {
    const { from, to } = bounds();
    const answer = await ctx.api('/v1/analytics/top-products', { query: { from, to, limit: 10 }, signal });
    await uPlotReady;
    if (!latest()) return;
    topNote.replaceChildren();
    const products = answer.products;
    topTable.replaceChildren(tableWrap(h('table', { class: 'data', id: 'top-products' },
      h('caption', { class: 'visually-hidden' }, 'Top products'),
      h('thead', null, h('tr', null, h('th', { scope: 'col', class: 'num' }, '#'), h('th', { scope: 'col' }, 'Product'), h('th', { scope: 'col', class: 'num' }, 'Units'), h('th', { scope: 'col', class: 'num' }, 'Revenue'))),
      h('tbody', null, products.map((p, i) => h('tr', { dataset: { productId: p.product_id } },
        h('td', { class: 'num' }, String(i + 1)),
        h('td', null, h('a', { href: `#/events?stream=product-${p.product_id}`, title: p.sku }, p.name), ' ', h('span', { class: 'muted small' }, p.sku)),
        h('td', { class: 'num' }, num(p.quantity)),
        h('td', { class: 'num' }, money(p.revenue_minor, p.currency))))))));
    if (!products.length) {
      noData(topChart, 'Nothing sold in this range.');
      return;
    }
    const xs = products.map((_, i) => i);
    const names = products.map((p) => p.name);
    await draw(topChart, {
      height: 280,
      legend: { show: false },
      cursor: { points: { show: false } },
      scales: { x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] }, y: { range: (u, min, max) => [0, max * 1.08 || 1] } },
      series: [
        { label: 'Product', value: (u, v) => (v === null ? '—' : names[v] ?? '') },
        {
          label: 'Units',
          fill: `${PALETTE[0]}cc`,
          stroke: PALETTE[0],
          width: 1,
          points: { show: false },
          paths: window.uPlot.paths.bars({ size: [0.65, 90] }),
        },
      ],
      axes: [
        {
          splits: () => xs,
          values: (u, splits) => {
            const room = u.bbox.width / (window.devicePixelRatio || 1) / Math.max(1, xs.length);
            return splits.map((i) => {
              if (!Number.isInteger(i) || names[i] === undefined) return '';
              if (room < 70) return String(i + 1);
              const max = Math.max(4, Math.floor(room / 7.5));
              return names[i].length > max ? `${names[i].slice(0, max - 1)}…` : names[i];
            });
          },
          grid: { show: false },
        },
        { size: 50 },
      ],
    }, [xs, products.map((p) => p.quantity)]);
  }

  async function loadFunnel(latest, signal) {
    const { from, to } = bounds();
    const f = await ctx.api('/v1/analytics/order-funnel', { query: { from, to }, signal });
    if (!latest()) return;
    const share = (n) => (f.placed ? `${((n / f.placed) * 100).toFixed(1)} %` : '—');
    const stages = ['placed', 'pending', 'confirmed', 'shipped', 'delivered', 'cancelled'];
    funnelArea.replaceChildren(
      tableWrap(h('table', { class: 'data', id: 'funnel' },
        h('caption', { class: 'visually-hidden' }, 'Order funnel'),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Stage'), h('th', { scope: 'col', class: 'num' }, 'Orders'), h('th', { scope: 'col', class: 'num' }, 'Of placed'))),
        h('tbody', null, stages.map((s) => h('tr', { dataset: { stage: s } },
          h('th', { scope: 'row' }, s), h('td', { class: 'num', dataset: { field: s } }, num(f[s])), h('td', { class: 'num' }, share(f[s]))))))),
      h('p', null, 'Placed → delivered: ', h('strong', { dataset: { field: 'conversion' } }, `${(f.placed_to_delivered_conversion * 100).toFixed(1)} %`)),
      h('h3', null, 'Cancellations by reason'),
      tableWrap(h('table', { class: 'data', id: 'cancellation-reasons' },
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Reason'), h('th', { scope: 'col', class: 'num' }, 'Orders'))),
        h('tbody', null, Object.entries(f.cancellation_reasons || {}).sort((a, b) => b[1] - a[1]).map(([reason, n]) => h('tr', { dataset: { reason } },
          h('th', { scope: 'row' }, humanize(reason)), h('td', { class: 'num' }, num(n))))))),
    );
  }

  async function loadDurations(latest, signal) {
    const { from, to } = bounds();
    const d = await ctx.api('/v1/analytics/delivery-durations', { query: { from, to }, signal });
    if (!latest()) return;
    durationsArea.replaceChildren(
      tableWrap(h('table', { class: 'data kv', id: 'delivery-durations' },
        h('caption', { class: 'visually-hidden' }, 'Delivery durations'),
        h('tbody', null,
          h('tr', { dataset: { field: 'count' } }, h('th', { scope: 'row' }, 'Orders delivered'), h('td', { class: 'num' }, num(d.count))),
          h('tr', { dataset: { field: 'p50' } }, h('th', { scope: 'row' }, 'Median (p50)'), h('td', { class: 'num', title: d.p50_seconds === null ? '' : `${d.p50_seconds} s` }, fmtDuration(d.p50_seconds))),
          h('tr', { dataset: { field: 'p90' } }, h('th', { scope: 'row' }, '90th percentile (p90)'), h('td', { class: 'num', title: d.p90_seconds === null ? '' : `${d.p90_seconds} s` }, fmtDuration(d.p90_seconds)))))),
      h('p', { class: 'muted small' }, 'From placement to delivery, of the orders delivered in the range.'),
    );
  }

  const sections = [
    [loadRevenue, revenueNote, revenueChart],
    [loadTop, topNote, topChart],
    [loadFunnel, funnelArea, null],
    [loadDurations, durationsArea, null],
  ];

  // The newest load of each section: {promise, controller}. Only it may draw its section; an
  // older one is aborted when a newer starts (the range or bucket changed).
  const newest = new Map();
  ctx.onCleanup(() => { for (const entry of newest.values()) entry.controller.abort(); });

  function startSection([load, area, chart]) {
    newest.get(load)?.controller.abort();
    const entry = { controller: new AbortController() };
    newest.set(load, entry);
    const latest = () => ctx.alive && newest.get(load) === entry;
    entry.promise = (async () => {
      try {
        await load(latest, entry.controller.signal);
      } catch (e) {
        if (!isAbort(e) && latest()) {
          area.replaceChildren(notice(errorMessage(e)));
          if (chart) noData(chart, 'Not available.');
        }
        throw e;
      }
    })();
    entry.promise.catch(() => {}); // reported below
    return entry;
  }

  let loads = 0; // generation of loadAll: only the newest sets the page's state
  async function loadAll(which = sections) {
    const mine = ++loads;
    ctx.setState('loading');
    for (const section of which) startSection(section);
    // Wait for every section's newest load (an earlier call may still be loading the others).
    const results = await Promise.allSettled(sections.map(([load]) => newest.get(load).promise));
    if (!ctx.alive || mine !== loads) return;
    const failures = results.filter((r) => r.status === 'rejected' && !isAbort(r.reason));
    if (failures.length === sections.length) ctx.fail(failures[0].reason);
    else ctx.setState('ready');
  }

  range.addEventListener('change', () => { history.replaceState(null, '', `#/analytics?days=${range.value}&bucket=${bucket.value}`); loadAll(); });
  bucket.addEventListener('change', () => { history.replaceState(null, '', `#/analytics?days=${range.value}&bucket=${bucket.value}`); loadAll([sections[0]]); });

  await loadAll();
}
