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

  // What is shown (changed only when a page's answer is drawn); `started`: a load was asked for.
  const state = { cursor: null, stack: [], next: null, asOf: null, generation: 0, started: false };
  const pager = (busy) => {
    next.disabled = busy || !state.next;
    prev.disabled = busy || state.stack.length === 0;
  };

  const form = h('form', { class: 'filters', 'aria-label': 'Choose a moment', onsubmit: (e) => { e.preventDefault(); start(); } },
    field('As of (local time)', input),
    field('Status', status),
    h('div', { class: 'field field-actions' }, go, now));

  ctx.content.replaceChildren(
    h('h1', null, 'The dashboard as of a moment'),
    h('p', { class: 'muted' }, 'Every order as the dashboard showed it then: its status, payment and saga at that time.'),
    form, message, heading, tableWrap(table), empty, h('div', { class: 'pager' }, prev, info, next));

  /**
   * Loads the page at `target` ({asOf, cursor, stack}; `fresh`: a new moment or filter, so the
   * shown page's cursors are void if it fails). Answers true once drawn; handles its errors.
   */
  async function load(target, fresh = false) {
    const generation = ++state.generation;
    state.started = true;
    ctx.setState('loading');
    pager(true);
    let page;
    try {
      page = await ctx.api('/v1/dashboard/orders', {
        query: { as_of: target.asOf, status: status.value, cursor: target.cursor, limit: PAGE_SIZE },
      });
    } catch (e) {
      if (isAbort(e) || generation !== state.generation || !ctx.alive) return false;
      if (fresh) Object.assign(state, { cursor: null, stack: [], next: null });
      pager(false);
      ctx.fail(e);
      return false;
    }
    if (generation !== state.generation || !ctx.alive) return false;
    state.asOf = target.asOf;
    state.cursor = target.cursor;
    state.stack = target.stack;
    fillOrders(table, page.rows);
    state.next = page.next_cursor;
    pager(false);
    const first = state.stack.length * PAGE_SIZE + 1;
    info.textContent = page.rows.length ? `Orders ${num(first)}–${num(first + page.rows.length - 1)}` : '';
    heading.textContent = `As of ${fmtTime(state.asOf, true)} (${state.asOf})`;
    heading.dataset.asOf = state.asOf;
    table.dataset.asOf = state.asOf;
    empty.hidden = page.rows.length > 0;
    ctx.setState(page.rows.length ? 'ready' : 'empty');
    return true;
  }

  const run = async (target, focus, fresh) => {
    if (await load(target, fresh) && focus) table.querySelector('a.order-link')?.focus({ preventScroll: true });
  };

  let exact = initial; // keeps a linked moment's sub-second precision
  function start() {
    const asOf = exact && rfc3339ToLocal(exact) && rfc3339ToLocal(exact) === input.value ? exact : localToRfc3339(input.value);
    exact = null;
    if (!asOf) {
      const linked = !state.started && initial;
      const problem = linked
        ? `The link’s as_of “${initial}” is not a time: choose a date and time.`
        : 'Choose a date and time.';
      message.replaceChildren(notice(problem, 'warn'));
      // Nothing is asked for. Before any load the page would stay `loading`: say why it shows
      // nothing (after one, the state is the shown page's, or a load in flight settles it).
      if (!state.started) ctx.fail(new Error(problem));
      return;
    }
    message.replaceChildren();
    replaceQuery({ as_of: asOf, status: status.value });
    run({ asOf, cursor: null, stack: [] }, false, true);
  }

  now.addEventListener('click', () => { input.value = rfc3339ToLocal(new Date().toISOString()); start(); });
  status.addEventListener('change', start);
  next.addEventListener('click', () => {
    if (!state.next || next.disabled) return;
    run({ asOf: state.asOf, cursor: state.next, stack: [...state.stack, state.cursor] }, true);
  });
  prev.addEventListener('click', () => {
    if (!state.stack.length || prev.disabled) return;
    run({ asOf: state.asOf, cursor: state.stack[state.stack.length - 1], stack: state.stack.slice(0, -1) }, true);
  });

  start();
}
