// #/as-of: the order dashboard as it stood at a moment (`as_of`), keyset-paged.

import {
  h, field, tableWrap, ordersTable, fillOrders, ORDER_STATUSES, localToRfc3339, rfc3339ToLocal, replaceQuery,
  notice, isAbort, num, fmtTime,
} from '../app.js';

const PAGE_SIZE = 50;

export default async function asOf(ctx) {
  const q = ctx.query;
  const input = h('input', { id: 'as-of-input', type: 'datetime-local', step: 1, required: true });
  const status = h('select', { id: 'as-of-status' },
    h('option', { value: '' }, 'All statuses'),
    ORDER_STATUSES.map((s) => h('option', { value: s }, s)));
  const go = h('button', { id: 'as-of-go', type: 'submit' }, 'Show');
  const now = h('button', { id: 'as-of-now', type: 'button', class: 'secondary' }, 'Now');
  const table = ordersTable('as-of-table', 'Orders as of the chosen moment');
  const prev = h('button', { id: 'as-of-prev', type: 'button', class: 'secondary', disabled: true }, '← Previous');
  const next = h('button', { id: 'as-of-next', type: 'button', class: 'secondary', disabled: true }, 'Next →');
  const info = h('span', { class: 'muted', 'aria-live': 'polite' });
  const message = h('div');
  const heading = h('p', { id: 'as-of-shown', class: 'muted' });
  const empty = h('p', { class: 'empty-message', hidden: true }, 'No orders had been placed by then (with this filter).');

  const initial = q.get('as_of');
  input.value = rfc3339ToLocal(initial || new Date().toISOString());
  status.value = ORDER_STATUSES.includes(q.get('status')) ? q.get('status') : '';

  const state = { cursor: null, stack: [], next: null, asOf: null, generation: 0 };

  const form = h('form', { class: 'filters', 'aria-label': 'Choose a moment', onsubmit: (e) => { e.preventDefault(); start(); } },
    field('As of (local time)', input),
    field('Status', status),
    h('div', { class: 'field field-actions' }, go, now));

  ctx.content.replaceChildren(
    h('h1', null, 'The dashboard as of a moment'),
    h('p', { class: 'muted' }, 'Every order as the dashboard showed it then: its status, payment and saga at that time.'),
    form, message, heading, tableWrap(table), empty, h('div', { class: 'pager' }, prev, info, next));

  async function load() {
    const generation = ++state.generation;
    ctx.setState('loading');
    const page = await ctx.api('/v1/dashboard/orders', {
      query: { as_of: state.asOf, status: status.value, cursor: state.cursor, limit: PAGE_SIZE },
    });
    if (generation !== state.generation || !ctx.alive) return;
    fillOrders(table, page.rows);
    state.next = page.next_cursor;
    next.disabled = !page.next_cursor;
    prev.disabled = state.stack.length === 0;
    const first = state.stack.length * PAGE_SIZE + 1;
    info.textContent = page.rows.length ? `Orders ${num(first)}–${num(first + page.rows.length - 1)}` : '';
    heading.textContent = `As of ${fmtTime(state.asOf, true)} (${state.asOf})`;
    heading.dataset.asOf = state.asOf;
    table.dataset.asOf = state.asOf;
    empty.hidden = page.rows.length > 0;
    ctx.setState(page.rows.length ? 'ready' : 'empty');
  }

  const run = async (focus) => {
    try {
      await load();
      if (focus) table.querySelector('a.order-link')?.focus({ preventScroll: true });
    } catch (e) {
      if (!isAbort(e)) ctx.fail(e);
    }
  };

  let exact = initial; // keeps a linked moment's sub-second precision
  function start() {
    const asOf = exact && rfc3339ToLocal(exact) === input.value ? exact : localToRfc3339(input.value);
    exact = null;
    if (!asOf) {
      message.replaceChildren(notice('Choose a date and time.', 'warn'));
      return;
    }
    message.replaceChildren();
    state.asOf = asOf;
    state.cursor = null;
    state.stack = [];
    replaceQuery({ as_of: asOf, status: status.value });
    run(false);
  }

  now.addEventListener('click', () => { input.value = rfc3339ToLocal(new Date().toISOString()); start(); });
  status.addEventListener('change', start);
  next.addEventListener('click', () => {
    if (!state.next) return;
    state.stack.push(state.cursor);
    state.cursor = state.next;
    run(true);
  });
  prev.addEventListener('click', () => {
    if (!state.stack.length) return;
    state.cursor = state.stack.pop();
    run(true);
  });

  start();
}
