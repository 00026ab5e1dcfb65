// #/customers: the customers, keyset-paged by name (or a look-up by id where the list is not
// served); #/customers/<uuid>: one customer's summary and orders.

import {
  h, field, tableWrap, ordersTable, fillOrders, money, num, timeEl, notice, isAbort, ApiError, UUID_RE, text,
} from '../app.js';

const PAGE_SIZE = 50;

function lookupForm() {
  const input = h('input', { id: 'customer-lookup', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'customer UUID', size: 38 });
  const message = h('div');
  const form = h('form', {
    class: 'filters', role: 'search', 'aria-label': 'Look up a customer',
    onsubmit: (e) => {
      e.preventDefault();
      const id = input.value.trim();
      if (!UUID_RE.test(id)) {
        message.replaceChildren(notice('Enter a customer id (a UUID).', 'warn'));
        return;
      }
      location.hash = `#/customers/${id.toLowerCase()}`;
    },
  }, field('Customer id', input), h('div', { class: 'field field-actions' }, h('button', { id: 'customer-lookup-go', type: 'submit' }, 'Open')));
  return [form, message];
}

/** Lifetime value per currency as a list of `[data-currency]` spans. */
function lifetime(values) {
  if (!values?.length) return h('span', { class: 'muted' }, '—');
  return h('span', { class: 'ltv' }, values.map((v, i) => [
    i ? ', ' : null,
    h('span', { dataset: { currency: v.currency, minor: v.lifetime_value_minor }, title: `${num(v.order_count)} orders in ${v.currency}` }, money(v.lifetime_value_minor, v.currency)),
  ]));
}

export default async function customers(ctx) {
  const table = h('table', { id: 'customers-table', class: 'data' },
    h('caption', { class: 'visually-hidden' }, 'Customers'),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, 'Name'),
      h('th', { scope: 'col' }, 'Email'),
      h('th', { scope: 'col', class: 'num' }, 'Orders'),
      h('th', { scope: 'col', class: 'num' }, 'Lifetime value'),
      h('th', { scope: 'col', class: 'col-secondary' }, 'Last order'))),
    h('tbody'));
  const prev = h('button', { id: 'customers-prev', type: 'button', class: 'secondary', disabled: true }, '← Previous');
  const next = h('button', { id: 'customers-next', type: 'button', class: 'secondary', disabled: true }, 'Next →');
  const info = h('span', { class: 'muted', 'aria-live': 'polite' });
  const listArea = h('div', null, tableWrap(table), h('div', { class: 'pager' }, prev, info, next));
  const empty = h('p', { class: 'empty-message', hidden: true }, 'No customers yet.');

  ctx.content.replaceChildren(h('h1', null, 'Customers'), ...lookupForm(), listArea, empty);

  // What is shown (changed only when a page's answer is drawn).
  const state = { after: null, stack: [], next: null, generation: 0 };
  const pager = (busy) => {
    next.disabled = busy || !state.next;
    prev.disabled = busy || state.stack.length === 0;
  };

  /** Loads the page at `target` ({after, stack}); handles its errors. */
  async function load(target, focus) {
    const generation = ++state.generation;
    ctx.setState('loading');
    pager(true);
    let page;
    try {
      page = await ctx.api('/v1/dashboard/customers', { query: { limit: PAGE_SIZE, after: target.after } });
    } catch (e) {
      if (isAbort(e) || generation !== state.generation || !ctx.alive) return;
      pager(false);
      ctx.fail(e);
      return;
    }
    if (generation !== state.generation || !ctx.alive) return;
    state.after = target.after;
    state.stack = target.stack;
    const { rows } = page;
    const body = table.tBodies[0];
    const fragment = document.createDocumentFragment();
    for (const c of rows) {
      fragment.append(h('tr', { dataset: { customerId: c.customer_id } },
        h('td', null, h('a', { class: 'customer-link', href: `#/customers/${c.customer_id}` }, c.name || c.customer_id)),
        h('td', null, text(c.email)),
        h('td', { class: 'num' }, num(c.order_count)),
        h('td', { class: 'num' }, lifetime(c.lifetime_value)),
        h('td', { class: 'col-secondary' }, c.last_order ? h('a', { href: `#/orders/${c.last_order.order_id}` }, timeEl(c.last_order.placed_at)) : '—')));
    }
    body.replaceChildren(fragment);
    state.next = page.next_after;
    pager(false);
    const first = state.stack.length * PAGE_SIZE + 1;
    info.textContent = rows.length ? `Customers ${num(first)}–${num(first + rows.length - 1)}` : '';
    empty.hidden = rows.length > 0;
    ctx.setState(rows.length ? 'ready' : 'empty');
    if (focus) table.querySelector('a.customer-link')?.focus({ preventScroll: true });
  }

  next.addEventListener('click', () => {
    if (!state.next || next.disabled) return;
    load({ after: state.next, stack: [...state.stack, state.after] }, true);
  });
  prev.addEventListener('click', () => {
    if (!state.stack.length || prev.disabled) return;
    load({ after: state.stack[state.stack.length - 1], stack: state.stack.slice(0, -1) }, true);
  });
  await load({ after: null, stack: [] }, false);
}

export async function customer(ctx) {
  const [id] = ctx.params;
  if (!UUID_RE.test(id)) throw new Error(`“${id}” is not a customer id (a UUID).`);
  const summary = await ctx.apiOrNull(`/v1/dashboard/customers/${encodeURIComponent(id)}`, { query: { min_position: ctx.query.get('min_position') } });
  if (!ctx.alive) return;
  if (!summary) throw new ApiError(404, 'not_found', `The dashboard knows no customer ${id}.`);

  const values = summary.lifetime_value || [];
  const section = h('section', { id: 'customer-summary', class: 'card', 'aria-labelledby': 'customer-title' },
    h('dl', { class: 'fields cols' },
      pair('Name', 'name', summary.name),
      pair('Email', 'email', summary.email),
      pair('Orders', 'order_count', num(summary.order_count)),
      pair('Lifetime value', 'lifetime_value', lifetime(values)),
      pair('Last order', 'last_order', summary.last_order
        ? h('a', { href: `#/orders/${summary.last_order.order_id}` }, timeEl(summary.last_order.placed_at)) : '—'),
      pair('Stream version', 'stream_version', num(summary.stream_version))),
    values.length ? tableWrap(h('table', { class: 'data', id: 'customer-lifetime' },
      h('caption', { class: 'visually-hidden' }, 'Lifetime value per currency'),
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Currency'), h('th', { scope: 'col', class: 'num' }, 'Orders'), h('th', { scope: 'col', class: 'num' }, 'Lifetime value'))),
      h('tbody', null, values.map((v) => h('tr', { dataset: { currency: v.currency } },
        h('td', null, v.currency),
        h('td', { class: 'num', dataset: { field: 'order_count' } }, num(v.order_count)),
        h('td', { class: 'num', dataset: { field: 'lifetime_value_minor' } }, money(v.lifetime_value_minor, v.currency))))))) : null);

  const table = ordersTable('customer-orders', `${summary.name}’s orders`);
  const prev = h('button', { id: 'customer-orders-prev', type: 'button', class: 'secondary', disabled: true }, '← Previous');
  const next = h('button', { id: 'customer-orders-next', type: 'button', class: 'secondary', disabled: true }, 'Next →');
  const empty = h('p', { class: 'empty-message', hidden: true }, 'No orders.');

  ctx.content.replaceChildren(
    h('div', { class: 'page-head' },
      h('h1', { id: 'customer-title' }, summary.name),
      h('span', { class: 'muted' }, h('a', { href: `#/events?stream=customer-${id}` }, 'customer stream'), ' · ',
        h('a', { href: `#/orders?customer_id=${id}` }, 'in the orders list'))),
    section,
    h('h2', null, 'Orders'),
    tableWrap(table), empty, h('div', { class: 'pager' }, prev, next));

  // What is shown (changed only when a page's answer is drawn).
  const state = { cursor: null, stack: [], next: null, generation: 0 };
  const pager = (busy) => {
    next.disabled = busy || !state.next;
    prev.disabled = busy || state.stack.length === 0;
  };
  /** Loads the page at `target` ({cursor, stack}); handles its errors. */
  async function load(target, focus) {
    const generation = ++state.generation;
    ctx.setState('loading');
    pager(true);
    let page;
    try {
      page = await ctx.api('/v1/dashboard/orders', { query: { customer_id: id, cursor: target.cursor, limit: PAGE_SIZE } });
    } catch (e) {
      if (isAbort(e) || generation !== state.generation || !ctx.alive) return;
      pager(false);
      ctx.fail(e);
      return;
    }
    if (generation !== state.generation || !ctx.alive) return;
    state.cursor = target.cursor;
    state.stack = target.stack;
    fillOrders(table, page.rows);
    state.next = page.next_cursor;
    pager(false);
    empty.hidden = page.rows.length > 0;
    ctx.setState('ready');
    if (focus) table.querySelector('a.order-link')?.focus({ preventScroll: true });
  }
  next.addEventListener('click', () => {
    if (!state.next || next.disabled) return;
    load({ cursor: state.next, stack: [...state.stack, state.cursor] }, true);
  });
  prev.addEventListener('click', () => {
    if (!state.stack.length || prev.disabled) return;
    load({ cursor: state.stack[state.stack.length - 1], stack: state.stack.slice(0, -1) }, true);
  });
  await load({ cursor: null, stack: [] }, false);
}

function pair(label, name, value) {
  return h('div', { class: 'pair' }, h('dt', null, label), h('dd', { dataset: { field: name } }, value));
}
