// #/events: a service's global log, or one stream's events, paged forward.
// #/events?service=orders&from=1 · #/events?stream=order-<uuid>&from=1

import { h, field, tableWrap, num, timeEl, notice, isAbort, ApiError, replaceQuery, text, errorMessage } from '../app.js';

const SERVICES = ['customers', 'inventory', 'orders', 'payments'];
const PAGE_SIZE = 50;
const STREAM_RE = /^(customer|product|order|saga|payment)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export default async function events(ctx) {
  const q = ctx.query;
  const service = h('select', { id: 'log-service' }, SERVICES.map((s) => h('option', { value: s }, s)));
  service.value = SERVICES.includes(q.get('service')) ? q.get('service') : 'orders';
  const fromInput = h('input', { id: 'log-from', type: 'number', min: 1, step: 1, inputmode: 'numeric', value: '1' });
  const logGo = h('button', { id: 'log-go', type: 'submit' }, 'Show log');
  const latest = h('button', { id: 'log-latest', type: 'button', class: 'secondary' }, 'Latest');
  const streamInput = h('input', { id: 'stream-id', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'order-<uuid>', size: 44 });
  const streamGo = h('button', { id: 'stream-go', type: 'submit' }, 'Show stream');

  const table = h('table', { id: 'events-table', class: 'data' },
    h('caption', { class: 'visually-hidden', id: 'events-caption' }, 'Events'),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col', class: 'num' }, 'Position'),
      h('th', { scope: 'col' }, 'Type'),
      h('th', { scope: 'col' }, 'Stream'),
      h('th', { scope: 'col', class: 'num' }, 'Version'),
      h('th', { scope: 'col' }, 'Recorded'),
      h('th', { scope: 'col', class: 'col-secondary' }, 'Correlation'),
      h('th', { scope: 'col', class: 'col-secondary' }, 'Causation'),
      h('th', { scope: 'col', class: 'col-secondary' }, 'Actor'),
      h('th', { scope: 'col' }, 'Data'))),
    h('tbody'));
  const prev = h('button', { id: 'events-prev', type: 'button', class: 'secondary', disabled: true }, '← Previous');
  const next = h('button', { id: 'events-next', type: 'button', class: 'secondary', disabled: true }, 'Next →');
  const info = h('span', { class: 'muted', 'aria-live': 'polite', id: 'events-info' });
  const message = h('div');
  const title = h('h2', { id: 'events-title' });
  const empty = h('p', { class: 'empty-message', hidden: true }, 'No events here.');

  ctx.content.replaceChildren(
    h('h1', null, 'Events'),
    h('div', { class: 'two-col' },
      h('form', { class: 'filters', 'aria-label': 'A service’s log', onsubmit: (e) => { e.preventDefault(); showLog(Number(fromInput.value) || 1); } },
        field('Service log', service), field('From position', fromInput), h('div', { class: 'field field-actions' }, logGo, latest)),
      h('form', { class: 'filters', 'aria-label': 'One stream', onsubmit: (e) => { e.preventDefault(); showStream(streamInput.value.trim(), 1); } },
        field('Stream id', streamInput, 'customer-, product-, order-, saga- or payment-<uuid>'), h('div', { class: 'field field-actions' }, streamGo))),
    message, title, tableWrap(table), empty, h('div', { class: 'pager' }, prev, info, next));

  // What is asked for: {mode: 'log'|'stream', key: service or stream id}; what is shown (changed
  // only when a page's answer is drawn): {from, next, stack}.
  const state = { mode: 'log', key: service.value, from: 1, next: null, stack: [], generation: 0 };
  const pager = (busy) => {
    next.disabled = busy || !state.next;
    prev.disabled = busy || state.stack.length === 0;
  };

  /**
   * Loads the page at `target` ({from, stack}; `fresh`: another log or stream, so the shown
   * page's positions are void if it fails). Answers true once drawn; handles its errors.
   */
  async function load(target, focus, fresh = false) {
    const generation = ++state.generation;
    const { mode, key } = state;
    message.replaceChildren();
    ctx.setState('loading');
    pager(true);
    let page;
    try {
      page = mode === 'log'
        ? await ctx.api('/v1/log', { query: { service: key, from_position: target.from, limit: PAGE_SIZE } })
        : await ctx.api(`/v1/streams/${encodeURIComponent(key)}/events`, { query: { from_version: target.from, limit: PAGE_SIZE } });
    } catch (e) {
      if (isAbort(e) || generation !== state.generation || !ctx.alive) return false;
      if (e instanceof ApiError && e.status === 404 && mode === 'stream') {
        table.tBodies[0].replaceChildren();
        Object.assign(state, { from: target.from, stack: target.stack, next: null });
        pager(false);
        message.replaceChildren(notice(`The stream ${key} has no events.`, 'info'));
        ctx.setState('empty');
        return false;
      }
      if (fresh) Object.assign(state, { from: target.from, stack: [], next: null });
      pager(false);
      ctx.fail(e);
      return false;
    }
    if (generation !== state.generation || !ctx.alive) return false;
    state.from = target.from;
    state.stack = target.stack;
    const rows = page.events;
    const fragment = document.createDocumentFragment();
    for (const e of rows) fragment.append(eventRow(e));
    table.tBodies[0].replaceChildren(fragment);
    state.next = state.mode === 'log' ? page.next_from_position : page.next_from_version;
    pager(false);
    title.replaceChildren(state.mode === 'log'
      ? `The ${state.key} log`
      : h('span', null, 'Stream ', h('code', null, state.key), ' ', streamLink(state.key)));
    info.textContent = rows.length
      ? (state.mode === 'log'
        ? `positions ${num(rows[0].position)}–${num(rows[rows.length - 1].position)}`
        : `versions ${num(rows[0].stream_version)}–${num(rows[rows.length - 1].stream_version)}`)
      : '';
    empty.hidden = rows.length > 0;
    ctx.setState(rows.length ? 'ready' : 'empty');
    if (focus) table.querySelector('tbody a')?.focus({ preventScroll: true });
    return true;
  }

  function showLog(from, keepStack = false) {
    state.mode = 'log';
    state.key = service.value;
    const start = Math.max(1, Math.floor(from));
    fromInput.value = String(start);
    replaceQuery({ service: state.key, from: start > 1 ? start : '' });
    return load({ from: start, stack: keepStack ? state.stack : [] }, false, true);
  }

  function showStream(id, from) {
    if (!STREAM_RE.test(id)) {
      message.replaceChildren(notice('A stream id is a category and a UUID, e.g. order-01a25085-1ca7-7066-ace2-54a42140b935.', 'warn'));
      return null;
    }
    state.mode = 'stream';
    state.key = id;
    streamInput.value = id;
    replaceQuery({ stream: id, from: from > 1 ? from : '' });
    return load({ from, stack: [] }, false, true);
  }

  service.addEventListener('change', () => showLog(1));
  latest.addEventListener('click', async () => {
    try {
      const status = await ctx.api('/v1/projections', { wait: false });
      const head = Math.max(0, ...status.projections.flatMap((p) => p.services || []).filter((s) => s.service === service.value).map((s) => s.position));
      await showLog(Math.max(1, head - PAGE_SIZE + 1));
    } catch (e) {
      if (!isAbort(e)) message.replaceChildren(notice(`Could not find the log's end: ${errorMessage(e)}`));
    }
  });
  function turn(target) {
    if (state.mode === 'log') fromInput.value = String(target.from);
    replaceQuery(state.mode === 'log' ? { service: state.key, from: target.from } : { stream: state.key, from: target.from });
    load(target, true);
  }
  next.addEventListener('click', () => {
    if (!state.next || next.disabled) return;
    turn({ from: state.next, stack: [...state.stack, state.from] });
  });
  prev.addEventListener('click', () => {
    if (!state.stack.length || prev.disabled) return;
    turn({ from: state.stack[state.stack.length - 1], stack: state.stack.slice(0, -1) });
  });

  const stream = q.get('stream');
  const from = Math.max(1, Number.parseInt(q.get('from') || '1', 10) || 1);
  if (stream) {
    const shown = showStream(stream, from);
    if (shown === null) ctx.fail(new Error(`“${stream}” is not a stream id.`));
    else await shown;
  } else {
    await showLog(from);
  }
}

function streamLink(streamId) {
  const [category, ...rest] = streamId.split('-');
  const id = rest.join('-');
  if (category === 'order' || category === 'saga') return h('a', { href: `#/orders/${id}` }, 'the order');
  if (category === 'customer') return h('a', { href: `#/customers/${id}` }, 'the customer');
  return null;
}

function eventRow(e) {
  const data = e.data === null ? h('span', { class: 'notice warn' }, `undecodable: ${text(e.data_error)}`) : (() => {
    const json = JSON.stringify(e.data);
    return h('details', null,
      h('summary', null, json.length > 60 ? `${json.slice(0, 57)}…` : json),
      h('pre', { class: 'data' }, JSON.stringify(e.data, null, 2)));
  })();
  return h('tr', { dataset: { position: e.position, type: e.event_type, stream: e.stream_id } },
    h('td', { class: 'num' }, num(e.position)),
    h('td', { class: 'mono' }, e.event_type),
    h('td', { class: 'mono' }, h('a', { class: 'stream-link', href: `#/events?stream=${encodeURIComponent(e.stream_id)}`, title: e.stream_id }, e.stream_id)),
    h('td', { class: 'num' }, num(e.stream_version)),
    h('td', null, timeEl(e.recorded_at, true)),
    h('td', { class: 'mono small col-secondary', dataset: { field: 'correlation_id' } }, e.correlation_id),
    h('td', { class: 'mono small col-secondary', dataset: { field: 'causation_id' } }, e.causation_id),
    h('td', { class: 'col-secondary', dataset: { field: 'actor' } }, e.actor),
    h('td', { class: 'wrap' }, data));
}
