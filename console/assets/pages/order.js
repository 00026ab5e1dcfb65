// #/orders/<uuid>: one order: its dashboard row, its saga and payment, the timeline of its and
// its saga's events, and a time slider comparing the read model with the write side's fold.

import {
  $, h, api, apiOrNull, ApiError, badge, money, num, text, humanize, timeEl, fmtTime, errorMessage, isAbort, notice,
  tableWrap, UUID_RE,
} from '../app.js';

const DEBOUNCE_MS = 120;

/** Every event of a stream (all pages), or null when the stream has none. */
async function streamEvents(streamId, signal) {
  const events = [];
  let from = 1;
  for (;;) {
    const page = await apiOrNull(`/v1/streams/${encodeURIComponent(streamId)}/events`, { query: { from_version: from, limit: 1000 }, signal });
    if (!page) return events.length ? events : null;
    events.push(...page.events);
    if (!page.next_from_version) return events;
    from = page.next_from_version;
  }
}

/** A `dl` of [label, field, value] triples; each value in `dd[data-field]`. */
function fields(items, cls = 'fields') {
  return h('dl', { class: cls }, items.map(([label, name, value]) => h('div', { class: 'pair' },
    h('dt', null, label), h('dd', { dataset: { field: name } }, value))));
}

/** Settles a promise into {ok, value} / {ok: false, error} (aborts rethrown). */
async function settle(promise) {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    if (isAbort(error)) throw error;
    return { ok: false, error };
  }
}

export default async function order(ctx) {
  const [id] = ctx.params;
  if (!UUID_RE.test(id)) throw new Error(`“${id}” is not an order id (a UUID).`);
  const { signal } = ctx;
  const path = encodeURIComponent(id); // the id, as a path segment
  const minPosition = ctx.query.get('min_position') || null;

  const [rowR, orderEventsR] = await Promise.all([
    settle(ctx.apiOrNull(`/v1/dashboard/orders/${path}`, { query: { min_position: minPosition } })),
    settle(streamEvents(`order-${id}`, signal)),
  ]);
  if (!ctx.alive) return;
  if (!rowR.ok && !orderEventsR.ok) throw rowR.error;
  const row = rowR.ok ? rowR.value : null;
  const orderEvents = orderEventsR.ok ? orderEventsR.value || [] : [];
  if (!row && orderEventsR.ok && !orderEvents.length) {
    throw new ApiError(404, 'not_found', `There is no order ${id}.`);
  }

  // The saga only where the dashboard says there is one (or does not know the order): no 404s
  // asked for nothing.
  const hasSaga = !rowR.ok || !rowR.value || rowR.value.saga_state !== null;
  const [sagaEventsR, sagaR] = hasSaga
    ? await Promise.all([settle(streamEvents(`saga-${id}`, signal)), settle(ctx.apiOrNull(`/v1/sagas/${path}`))])
    : [{ ok: true, value: null }, { ok: true, value: null }];
  if (!ctx.alive) return;
  const paymentId = row?.payment_id
    || sagaEventsR.value?.find((e) => e.event_type === 'saga.started')?.data?.payment_id
    || (sagaR.ok ? sagaR.value?.payment_id : null);
  const [paymentR, paymentEventsR] = paymentId
    ? await Promise.all([
      settle(ctx.apiOrNull(`/v1/payments/${encodeURIComponent(paymentId)}`)),
      settle(streamEvents(`payment-${paymentId}`, signal)),
    ])
    : [{ ok: true, value: null }, { ok: true, value: null }];
  if (!ctx.alive) return;

  // ---- head and dashboard row
  const placed = orderEvents.find((e) => e.event_type === 'order.placed');
  const customerId = row?.customer_id || placed?.data?.customer_id;
  const currency = row?.currency || placed?.data?.currency;

  const head = h('div', { class: 'page-head' },
    h('h1', null, 'Order ', h('span', { class: 'mono' }, id)),
    h('span', { class: 'muted' },
      h('a', { href: `#/events?stream=order-${id}` }, 'order stream'), ' · ',
      customerId ? h('a', { href: `#/customers/${customerId}` }, 'customer') : null));

  const rowSection = h('section', { id: 'order-row', class: 'card', 'aria-labelledby': 'order-row-title' },
    h('h2', { id: 'order-row-title' }, 'Dashboard row'));
  if (row) {
    rowSection.dataset.state = 'ready';
    rowSection.append(fields([
      ['Status', 'status', badge(row.status)],
      ['Customer', 'customer_name', row.customer_name],
      ['Email', 'customer_email', row.customer_email],
      ['Total', 'total', money(row.total_minor, row.currency)],
      ['Items', 'item_count', num(row.item_count)],
      ['Placed', 'placed_at', timeEl(row.placed_at)],
      ['Confirmed', 'confirmed_at', timeEl(row.confirmed_at)],
      ['Shipped', 'shipped_at', timeEl(row.shipped_at)],
      ['Delivered', 'delivered_at', timeEl(row.delivered_at)],
      ['Cancelled', 'cancelled_at', timeEl(row.cancelled_at)],
      ['Reason code', 'reason_code', text(row.reason_code)],
      ['Cancel reason', 'cancel_reason', text(row.cancel_reason)],
      ['Carrier', 'carrier', text(row.carrier)],
      ['Tracking', 'tracking', text(row.tracking)],
      ['Saga', 'saga_state', row.saga_state ? humanize(row.saga_state) : '—'],
      ['Payment', 'payment_status', badge(row.payment_status, 'pay')],
      ['Payments recorded', 'payment_count', num(row.payment_count)],
      ['Stream version', 'stream_version', num(row.stream_version)],
      ['Last position', 'last_position', num(row.last_position)],
      ['Updated', 'updated_at', timeEl(row.updated_at, true)],
    ], 'fields cols'));
  } else {
    rowSection.dataset.state = 'empty';
    rowSection.append(rowR.ok
      ? notice('This order is not in the dashboard yet: the projection has not applied its events.', 'warn')
      : notice(errorMessage(rowR.error)));
  }

  // ---- time travel
  const n = orderEvents.length;
  const slider = h('input', { id: 'time-slider', type: 'range', min: 0, max: Math.max(0, n - 1), step: 1, value: Math.max(0, n - 1), 'aria-describedby': 'as-of-moment' });
  const moment = h('output', { id: 'as-of-moment', for: 'time-slider' });
  const asOfTime = h('input', { id: 'as-of-time', type: 'datetime-local', step: 1 });
  const readPanel = h('section', { id: 'as-of-read', class: 'card', 'data-state': 'loading', 'aria-live': 'polite' });
  const writePanel = h('section', { id: 'as-of-write', class: 'card', 'data-state': 'loading', 'aria-live': 'polite' });
  const travel = h('section', { class: 'card', id: 'time-travel', 'aria-labelledby': 'time-travel-title' },
    h('h2', { id: 'time-travel-title' }, 'As of an event'),
    n ? [
      h('div', { class: 'slider-row' },
        h('label', { for: 'time-slider' }, 'Event'),
        slider,
        moment),
      h('p', { class: 'muted small' }, 'Each step is one of the order’s events: the read model (dashboard) beside the write side’s fold of the stream, as of the orders log’s position that recorded it (at_position; exact even when a seeded history recorded several events in one instant).'),
      h('form', { class: 'slider-row', id: 'as-of-time-form' },
        h('label', { for: 'as-of-time' }, 'Or any moment'),
        asOfTime,
        h('button', { type: 'submit', id: 'as-of-time-go', class: 'secondary' }, 'Show')),
      h('div', { class: 'asof-panels' }, readPanel, writePanel),
    ] : notice('The order’s stream could not be read, so there is nothing to step through.', 'warn'));

  // ---- saga and payment
  const sagaEvents = sagaEventsR.ok ? sagaEventsR.value : null;
  const side = [];
  if ((sagaR.ok && sagaR.value) || !sagaR.ok || sagaEvents) side.push(sagaSection(sagaR, sagaEvents, currency));
  if (paymentId) side.push(paymentSection(row, paymentId, paymentR, paymentEventsR));

  // ---- timeline
  // The order's events are `li.event`; its saga's, interleaved by position (one log), are
  // `li.saga-event` with their own `data-stream`.
  const timeline = h('ol', { id: 'timeline', class: 'timeline' });
  const all = [...orderEvents, ...(sagaEvents || [])].sort((a, b) => a.position - b.position);
  for (const e of all) timeline.append(eventItem(e, e.stream_id === `order-${id}` ? 'event' : 'saga-event'));
  const problems = [];
  if (!orderEventsR.ok) problems.push(notice(`The order’s events could not be read: ${errorMessage(orderEventsR.error)}`));
  if (!sagaEventsR.ok) problems.push(notice(`The saga’s events could not be read: ${errorMessage(sagaEventsR.error)}`));

  ctx.content.replaceChildren(
    head,
    rowSection,
    travel,
    side.length ? h('div', { class: 'two-col' }, side) : null,
    h('section', { class: 'card', 'aria-labelledby': 'timeline-title' },
      h('h2', { id: 'timeline-title' }, 'Timeline ', h('span', { class: 'muted small' }, sagaEvents ? '(the order’s and its saga’s events)' : '(the order’s events)')),
      problems,
      all.length ? timeline : h('p', { class: 'muted' }, 'No events.')),
  );
  ctx.setState('ready');

  if (!n) return;

  // ---- the slider's behaviour
  let seq = 0;
  let timer = null;
  ctx.onCleanup(() => clearTimeout(timer));

  /** Shows the slider's event; answers the point both sides are asked for. */
  function showMoment() {
    const i = Number(slider.value);
    const e = orderEvents[i];
    const at = String(e.position);
    moment.dataset.atPosition = at;
    moment.dataset.asOf = e.recorded_at;
    moment.replaceChildren(
      h('span', null, `event ${i + 1} of ${n}: `), h('code', null, e.event_type),
      h('span', { class: 'muted' }, ` · happened `),
      h('time', { datetime: e.occurred_at, title: e.occurred_at }, fmtTime(e.occurred_at, true)),
      h('span', { class: 'muted' }, ` · recorded `),
      h('time', { datetime: e.recorded_at, title: e.recorded_at }, fmtTime(e.recorded_at, true)),
      h('span', { class: 'muted' }, ` at position ${at}`));
    slider.setAttribute('aria-valuetext', `event ${i + 1} of ${n}, ${e.event_type}, ${fmtTime(e.occurred_at, true)}`);
    for (const li of timeline.children) {
      // What "as of" that point leaves out: the events after it in the orders log.
      li.classList.toggle('future', Number(li.dataset.position) > e.position);
    }
    // The dashboard takes a position with its log's service (a consistency token); the orders
    // service's own fold, a position of its own log.
    return {
      label: `position ${at}`,
      read: { at_position: `orders:${at}` },
      write: { at_position: at },
      key: { atPosition: at },
    };
  }

  async function loadPanels(point = showMoment()) {
    const mine = ++seq;
    readPanel.dataset.state = 'loading';
    writePanel.dataset.state = 'loading';
    const read = settle(api(`/v1/dashboard/orders/${path}`, { query: point.read, signal }));
    const write = settle(api(`/v1/orders/${path}/state`, { query: point.write, signal }));
    read.then((r) => { if (mine === seq && ctx.alive) renderRead(r, point); }, () => {});
    write.then((r) => { if (mine === seq && ctx.alive) renderWrite(r, point); }, () => {});
  }

  function panel(el, title, point, result, render) {
    const body = [h('h3', null, title)];
    if (result.ok) {
      body.push(render(result.value));
      el.dataset.state = 'ready';
    } else if (result.error instanceof ApiError && result.error.status === 404) {
      body.push(fields([['Status', 'status', '—']]), h('p', { class: 'muted small' }, 'Not known at this moment.'));
      el.dataset.state = 'ready';
    } else {
      body.push(notice(errorMessage(result.error)));
      el.dataset.state = 'error';
    }
    delete el.dataset.asOf;
    delete el.dataset.atPosition;
    Object.assign(el.dataset, point.key);
    el.replaceChildren(...body);
  }

  function renderRead(result, point) {
    panel(readPanel, `Read side: the dashboard, as of ${point.label}`, point, result, (r) => fields([
      ['Status', 'status', r.status],
      ['Total', 'total', money(r.total_minor, r.currency)],
      ['Saga', 'saga_state', text(r.saga_state)],
      ['Payment', 'payment_status', text(r.payment_status)],
      ['Reason code', 'reason_code', text(r.reason_code)],
      ['Stream version', 'stream_version', num(r.stream_version)],
      ['Updated', 'updated_at', timeEl(r.updated_at, true)],
    ]));
  }

  function renderWrite(result, point) {
    panel(writePanel, `Write side: the stream folded, as of ${point.label}`, point, result, (s) => fields([
      ['Status', 'status', s.status],
      ['Total', 'total', money(s.total_minor, s.currency || currency)],
      ['Lines', 'lines', num(s.lines?.length)],
      ['Shipment', 'shipment', s.shipment ? `${s.shipment.carrier} ${s.shipment.tracking}` : '—'],
      ['Reason code', 'reason_code', text(s.cancellation_reason_code)],
      ['Version', 'version', num(s.version)],
      ['Recorded', 'recorded_at', timeEl(s.recorded_at, true)],
    ]));
  }

  slider.addEventListener('input', () => {
    showMoment();
    clearTimeout(timer);
    timer = setTimeout(loadPanels, DEBOUNCE_MS);
  });
  slider.addEventListener('change', () => {
    clearTimeout(timer);
    loadPanels();
  });
  // Any moment, by time: `as_of` on both sides (the commit time of every service's log).
  $('#as-of-time-form').addEventListener('submit', (event) => {
    event.preventDefault();
    if (!asOfTime.value) return;
    const asOf = new Date(asOfTime.value).toISOString();
    for (const li of timeline.children) li.classList.toggle('future', timeKey(li.dataset.recordedAt) > timeKey(asOf));
    clearTimeout(timer);
    loadPanels({ label: fmtTime(asOf, true), read: { as_of: asOf }, write: { as_of: asOf }, key: { asOf } });
  });
  loadPanels();
}

/** An RFC 3339 UTC time that compares as text: the fraction padded to nanoseconds. */
function timeKey(iso) {
  const m = /^(.*?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(iso || '');
  if (!m) return iso || '';
  if (m[3] !== 'Z') return new Date(iso).toISOString().replace('Z', '000000Z');
  return `${m[1]}.${(m[2] || '').padEnd(9, '0')}Z`;
}

function eventItem(e, cls) {
  const body = e.data === null
    ? h('p', { class: 'notice warn' }, `Could not decode: ${text(e.data_error)}`)
    : h('details', null, h('summary', null, summarize(e) || 'data'), h('pre', { class: 'data' }, JSON.stringify(e.data, null, 2)));
  return h('li', {
    class: `${cls} ${e.stream_id.split('-')[0]}`,
    dataset: { position: e.position, type: e.event_type, stream: e.stream_id, version: e.stream_version, recordedAt: e.recorded_at },
  },
  h('div', { class: 'event-head' },
    h('span', { class: 'event-type' }, e.event_type),
    h('span', { class: 'muted small' }, `${e.stream_id.split('-')[0]} v${e.stream_version} · position ${num(e.position)}`),
    timeEl(e.recorded_at, true)),
  h('div', { class: 'meta' },
    h('span', null, 'correlation ', h('code', { dataset: { field: 'correlation_id' } }, e.correlation_id)),
    h('span', null, 'causation ', h('code', { dataset: { field: 'causation_id' } }, e.causation_id)),
    h('span', null, 'actor ', h('code', { dataset: { field: 'actor' } }, e.actor))),
  body);
}

/** A one-line summary of an event's data. */
function summarize(e) {
  const d = e.data || {};
  const parts = [];
  if (d.total_minor !== undefined && d.currency) parts.push(money(d.total_minor, d.currency));
  if (d.amount?.amount_minor !== undefined) parts.push(money(d.amount.amount_minor, d.amount.currency));
  if (Array.isArray(d.lines)) parts.push(`${d.lines.length} line${d.lines.length === 1 ? '' : 's'}`);
  if (d.carrier) parts.push(`${d.carrier} ${d.tracking || ''}`.trim());
  if (d.reason_code) parts.push(d.reason_code);
  if (d.reason) parts.push(d.reason);
  if (d.step) parts.push(`step ${d.step}`);
  if (d.outcome) parts.push(d.outcome);
  if (d.error) parts.push(d.error);
  if (d.quantity !== undefined) parts.push(`×${d.quantity}`);
  return parts.join(' · ');
}

function sagaSection(sagaR, sagaEvents, currency) {
  const section = h('section', { id: 'saga', class: 'card', 'aria-labelledby': 'saga-title' }, h('h2', { id: 'saga-title' }, 'Saga'));
  if (!sagaR.ok) {
    section.append(notice(errorMessage(sagaR.error), sagaR.error?.status === 403 ? 'warn' : 'error'));
    if (sagaEvents) section.append(h('p', { class: 'muted small' }, `Its stream has ${sagaEvents.length} events (in the timeline).`));
    return section;
  }
  const s = sagaR.value;
  if (!s) {
    section.append(h('p', { class: 'muted' }, 'The saga is not known to the orders service.'));
    return section;
  }
  const steps = [
    ['reserved', s.lines.length > 0 && s.lines.every((l) => l.reserved)],
    ['authorized', s.authorized],
    ['confirmed', s.confirmed],
    ['captured', s.captured_minor > 0],
    ['refunded', s.refunded],
    ['voided', s.voided],
  ];
  section.append(
    fields([
      ['Phase', 'phase', badge(s.phase, 'status')],
      ['Steps', 'steps', h('span', null, steps.map(([name, done]) => h('span', { class: `badge ${done ? 'status-delivered' : ''}`, title: done ? 'done' : 'not done' }, `${done ? '✓' : '·'} ${name}`)).flatMap((b) => [b, ' ']))],
      ['Deadline', 'deadline', timeEl(s.deadline)],
      ['Reason code', 'reason_code', text(s.reason_code)],
      ['Reason', 'reason', text(s.reason)],
      ['Parked at', 'parked_at', text(s.parked_at)],
      ['Parked error', 'parked_error', text(s.parked_error)],
      ['Outcome', 'outcome', text(s.outcome)],
      ['Captured', 'captured_minor', money(s.captured_minor, currency)],
      ['Version', 'version', num(s.version)],
    ]),
    h('h3', null, 'Lines'),
    tableWrap(h('table', { class: 'data', id: 'saga-lines' },
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Product'), h('th', { scope: 'col', class: 'num' }, 'Quantity'), h('th', { scope: 'col' }, 'Reserved'), h('th', { scope: 'col' }, 'Released'))),
      h('tbody', null, s.lines.map((l) => h('tr', { dataset: { productId: l.product_id } },
        h('td', { class: 'mono' }, h('a', { href: `#/events?stream=product-${l.product_id}` }, l.product_id)),
        h('td', { class: 'num' }, num(l.quantity)),
        h('td', null, l.reserved ? 'yes' : 'no'),
        h('td', null, l.released ? 'yes' : 'no')))))),
  );
  return section;
}

function paymentSection(row, paymentId, paymentR, paymentEventsR) {
  const section = h('section', { id: 'payment', class: 'card', 'aria-labelledby': 'payment-title' },
    h('h2', { id: 'payment-title' }, 'Payment'));
  const p = paymentR.ok ? paymentR.value : null;
  if (!paymentR.ok) section.append(notice(errorMessage(paymentR.error), paymentR.error?.status === 403 ? 'warn' : 'error'));
  const cur = p?.currency || row?.payment_currency;
  section.append(fields([
    ['Payment', 'payment_id', h('a', { class: 'mono', href: `#/events?stream=${encodeURIComponent(`payment-${paymentId}`)}` }, paymentId)],
    ['Status', 'status', badge(p?.status || row?.payment_status, 'pay')],
    ['Authorized', 'authorized_minor', money(p ? p.authorized_minor : row?.authorized_minor, cur)],
    ['Captured', 'captured_minor', money(p ? p.captured_minor : row?.captured_minor, cur)],
    ['Refunded', 'refunded_minor', money(p ? p.refunded_minor : row?.refunded_minor, cur)],
    ['Reason', 'payment_reason', text(row?.payment_reason)],
    ['Attempts', 'payment_count', num(row?.payment_count)],
  ]));
  if (paymentR.ok && !p) section.append(h('p', { class: 'muted small' }, 'The payments service has no payment with this id yet.'));
  const events = paymentEventsR.ok ? paymentEventsR.value : null;
  if (events?.length) {
    section.append(h('h3', null, 'Payment events'), tableWrap(h('table', { class: 'data', id: 'payment-events' },
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Type'), h('th', { scope: 'col' }, 'Recorded'), h('th', { scope: 'col', class: 'num' }, 'Amount'), h('th', { scope: 'col' }, 'Reason'))),
      h('tbody', null, events.map((e) => h('tr', { dataset: { position: e.position, type: e.event_type } },
        h('td', { class: 'mono' }, e.event_type),
        h('td', null, timeEl(e.recorded_at, true)),
        h('td', { class: 'num' }, e.data?.amount ? money(e.data.amount.amount_minor, e.data.amount.currency) : '—'),
        h('td', null, text(e.data?.reason))))))));
  } else if (!paymentEventsR.ok) {
    section.append(notice(errorMessage(paymentEventsR.error)));
  }
  return section;
}
