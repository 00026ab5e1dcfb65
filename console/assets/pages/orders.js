// #/orders: the order dashboard, filtered, sorted, keyset-paged; new orders appear live on the
// first page.

import {
  h, field, tableWrap, ordersTable, orderRow, rowKey, fillOrders, ORDER_STATUSES, REASON_CODES,
  localToRfc3339, rfc3339ToLocal, replaceQuery, notice, errorMessage, isAbort, ApiError, UUID_RE, num,
} from '../app.js';

const PAGE_SIZE = 50;
const POLL_MS = 2000;
const SORTS = [
  ['placed_at_desc', 'Newest first'],
  ['placed_at_asc', 'Oldest first'],
  ['total_desc', 'Largest total'],
  ['total_asc', 'Smallest total'],
];

let marked = false;

export default async function orders(ctx) {
  const q = ctx.query;
  const state = {
    // What is shown (changed only when a page's answer is drawn):
    cursor: null, // this page's cursor (null: the first page)
    stack: [], // cursors of the pages before
    next: null,
    loaded: 0, // load generation, to drop stale answers (and errors)
  };

  const status = h('select', { id: 'filter-status' },
    h('option', { value: '' }, 'All statuses'),
    ORDER_STATUSES.map((s) => h('option', { value: s }, s)));
  const reason = h('select', { id: 'filter-reason' },
    h('option', { value: '' }, 'Any reason'),
    REASON_CODES.map((s) => h('option', { value: s }, s.replace(/_/g, ' '))));
  const customer = h('input', { id: 'filter-customer', type: 'text', inputmode: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'customer UUID', size: 38, pattern: '[0-9a-fA-F-]{36}' });
  const from = h('input', { id: 'filter-placed-from', type: 'datetime-local', step: 1 });
  const to = h('input', { id: 'filter-placed-to', type: 'datetime-local', step: 1 });
  const sort = h('select', { id: 'sort' }, SORTS.map(([v, label]) => h('option', { value: v }, label)));
  const reset = h('button', { type: 'button', class: 'secondary', id: 'filter-reset' }, 'Clear filters');

  status.value = ORDER_STATUSES.includes(q.get('status')) ? q.get('status') : '';
  reason.value = REASON_CODES.includes(q.get('reason_code')) ? q.get('reason_code') : '';
  customer.value = q.get('customer_id') || '';
  from.value = rfc3339ToLocal(q.get('placed_from'));
  to.value = rfc3339ToLocal(q.get('placed_to'));
  sort.value = SORTS.some(([v]) => v === q.get('sort')) ? q.get('sort') : 'placed_at_desc';
  const minPosition = q.get('min_position') || null;

  const table = ordersTable('orders-table', 'Orders');
  const prev = h('button', { id: 'page-prev', type: 'button', class: 'secondary', disabled: true }, '← Previous');
  const next = h('button', { id: 'page-next', type: 'button', class: 'secondary', disabled: true }, 'Next →');
  const pageInfo = h('span', { class: 'muted', id: 'page-info', 'aria-live': 'polite' });
  const filterMessage = h('div', { id: 'filter-message' });
  const emptyMessage = h('p', { class: 'empty-message', id: 'orders-empty', hidden: true }, 'No orders match these filters.');
  const live = h('span', { class: 'live muted', id: 'live-indicator' });

  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter orders', onsubmit: (e) => { e.preventDefault(); reload(); } },
    field('Status', status),
    field('Cancellation reason', reason),
    field('Customer', customer),
    field('Placed from', from),
    field('Placed before', to),
    field('Sort', sort),
    h('div', { class: 'field field-actions' }, reset));

  ctx.content.replaceChildren(
    h('div', { class: 'page-head' }, h('h1', null, 'Orders'), live),
    form,
    filterMessage,
    tableWrap(table),
    emptyMessage,
    h('div', { class: 'pager' }, prev, pageInfo, next),
  );

  function filters() {
    const customerId = customer.value.trim();
    return {
      status: status.value,
      reason_code: reason.value,
      customer_id: UUID_RE.test(customerId) ? customerId : '',
      placed_from: localToRfc3339(from.value),
      placed_to: localToRfc3339(to.value),
      sort: sort.value === 'placed_at_desc' ? '' : sort.value,
    };
  }

  function validate() {
    const customerId = customer.value.trim();
    if (customerId && !UUID_RE.test(customerId)) return 'The customer filter must be a customer UUID.';
    const f = filters();
    if (f.placed_from && f.placed_to && f.placed_from > f.placed_to) return '“Placed before” is earlier than “Placed from”.';
    return null;
  }

  /** The pager's buttons: disabled while a page loads, else as the shown page allows. */
  function pager(busy) {
    next.disabled = busy || !state.next;
    prev.disabled = busy || state.stack.length === 0;
  }

  /**
   * Loads the page at `target` ({cursor, stack}; `fresh`: the filters changed, so the shown
   * page's cursors are void if it fails). Answers true once it is drawn; handles its errors.
   */
  async function load(target, fresh = false) {
    const generation = ++state.loaded;
    const problem = validate();
    filterMessage.replaceChildren(problem ? notice(problem, 'warn') : '');
    if (problem) {
      // Nothing is asked for: keep the rows shown (ready), or say why there are none.
      next.disabled = true;
      prev.disabled = true;
      if (table.tBodies[0].rows.length) ctx.setState('ready');
      else ctx.fail(new Error(problem));
      return false;
    }
    ctx.setState('loading');
    pager(true);
    let page;
    try {
      page = await ctx.api('/v1/dashboard/orders', {
        query: { ...filters(), cursor: target.cursor, limit: PAGE_SIZE, min_position: minPosition },
      });
    } catch (e) {
      if (isAbort(e) || generation !== state.loaded || !ctx.alive) return false;
      if (fresh) Object.assign(state, { cursor: null, stack: [], next: null });
      pager(false);
      handleError(e);
      return false;
    }
    if (generation !== state.loaded || !ctx.alive) return false;
    state.cursor = target.cursor;
    state.stack = target.stack;
    render(page);
    return true;
  }

  function render(page) {
    fillOrders(table, page.rows);
    state.next = page.next_cursor;
    pager(false);
    const first = state.stack.length * PAGE_SIZE + 1;
    pageInfo.textContent = page.rows.length ? `Orders ${num(first)}–${num(first + page.rows.length - 1)}` : '';
    emptyMessage.hidden = page.rows.length > 0;
    live.textContent = state.cursor === null ? 'live: new orders appear here' : '';
    ctx.setState(page.rows.length ? 'ready' : 'empty');
    if (!marked) {
      marked = true;
      performance.mark('orders-rows-rendered');
    }
  }

  function reload() {
    replaceQuery({ ...filters(), ...(minPosition ? { min_position: minPosition } : {}) });
    return load({ cursor: null, stack: [] }, true);
  }

  function handleError(e) {
    if (e instanceof ApiError && e.status === 400) {
      // A filter the API refused: say so beside the filters, keep the page usable.
      filterMessage.replaceChildren(notice(errorMessage(e), 'warn'));
      ctx.fail(e);
      return;
    }
    ctx.fail(e);
  }

  for (const control of [status, reason, sort, from, to]) control.addEventListener('change', reload);
  let typing = null;
  customer.addEventListener('input', () => {
    clearTimeout(typing);
    const v = customer.value.trim();
    if (v === '' || UUID_RE.test(v)) typing = setTimeout(reload, 250);
  });
  customer.addEventListener('change', reload);
  ctx.onCleanup(() => clearTimeout(typing));
  reset.addEventListener('click', () => {
    status.value = ''; reason.value = ''; customer.value = ''; from.value = ''; to.value = ''; sort.value = 'placed_at_desc';
    reload();
  });

  next.addEventListener('click', async () => {
    if (!state.next || next.disabled) return;
    if (await load({ cursor: state.next, stack: [...state.stack, state.cursor] })) {
      table.querySelector('a.order-link')?.focus({ preventScroll: true });
    }
  });
  prev.addEventListener('click', async () => {
    if (!state.stack.length || prev.disabled) return;
    if (await load({ cursor: state.stack[state.stack.length - 1], stack: state.stack.slice(0, -1) })) {
      table.querySelector('a.order-link')?.focus({ preventScroll: true });
    }
  });

  // Live: on the first page, fetch it again every ~2 s; new rows are inserted in the API's order
  // (at the top with the default sort), changed ones redrawn, and the page stays 50 rows long.
  let polling = false;
  ctx.every(POLL_MS, async () => {
    if (state.cursor !== null || polling || ctx.content.isConnected === false) return;
    if (document.querySelector('#page')?.dataset.state === 'loading') return;
    if (validate()) return;
    polling = true;
    const generation = state.loaded;
    try {
      // A background poll: a 401 fails quietly (no sign-in dialog).
      const page = await ctx.api('/v1/dashboard/orders', { query: { ...filters(), limit: PAGE_SIZE }, wait: false, prompt: false });
      if (generation !== state.loaded || state.cursor !== null || !ctx.alive) return;
      merge(page);
    } finally {
      polling = false;
    }
  });

  function merge(page) {
    const body = table.tBodies[0];
    const existing = new Map([...body.rows].map((tr) => [tr.dataset.orderId, tr]));
    const wanted = page.rows.map((o) => {
      const tr = existing.get(o.order_id);
      if (!tr) {
        const fresh = orderRow(o);
        fresh.classList.add('fresh');
        return fresh;
      }
      if (tr.dataset.key !== rowKey(o)) {
        // Redraw the cells in place (the link cell stays, so keyboard focus is kept).
        const drawn = orderRow(o);
        const cells = [...drawn.cells].slice(1);
        while (tr.cells.length > 1) tr.cells[1].remove();
        tr.append(...cells);
        tr.dataset.key = drawn.dataset.key;
      }
      return tr;
    });
    wanted.forEach((tr, i) => {
      if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null);
    });
    const keep = new Set(wanted);
    for (const tr of [...body.rows]) if (!keep.has(tr)) tr.remove();
    state.next = page.next_cursor;
    next.disabled = !page.next_cursor;
    emptyMessage.hidden = page.rows.length > 0;
    pageInfo.textContent = page.rows.length ? `Orders 1–${num(page.rows.length)}` : '';
    const main = document.querySelector('#page');
    const want = page.rows.length ? 'ready' : 'empty';
    if (main?.dataset.state !== want) ctx.setState(want);
  }

  await load({ cursor: null, stack: [] }, true);
}
