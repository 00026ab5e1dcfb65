// orderflow operations console: router, API client, sign-in prompt and formatting helpers.
// Plain ES modules, no build step. Each page is a module under ./pages/, loaded on demand.
//
// The browser tests (tests/console.rs) and the benchmark (bench console) find the pages' parts by
// these ids and attributes; keep them stable:
//   routes       #/orders (default), #/orders/<uuid>, #/as-of, #/customers, #/customers/<uuid>,
//                #/analytics, #/operations, #/events
//   every page   main#page[data-page][data-state=loading|ready|empty|error], #page-error,
//                #status-banner (waiting for a projection), dialog#token-dialog, #token-input
//   orders       table#orders-table tbody tr[data-order-id] > td.col-customer, td.col-status
//                [data-status], td.col-total, td.col-placed, a.order-link; #filter-status,
//                #filter-customer, #filter-placed-from, #filter-placed-to, #sort; #page-next,
//                #page-prev; performance mark 'orders-rows-rendered' at 50 rows
//   order        #order-row [data-field]; ol#timeline li.event[data-position][data-type] (the
//                order stream's), li.saga-event; input#time-slider (over the order's events: at_position);
//                #as-of-moment[data-at-position][data-as-of]; #as-of-time + #as-of-time-go (as_of);
//                #as-of-read and #as-of-write [data-at-position or data-as-of][data-state] [data-field=status]
//   analytics    #chart-revenue, #chart-top-products [data-points]; table#funnel,
//                table#delivery-durations; #revenue-bucket
//   operations   table#projections-table tr[data-projection] [data-field=version|state|...];
//                button.rebuild[data-projection]; #rebuild-progress; table#services-table
//   customers    table#customers-table tr[data-customer-id]; #customer-summary
//   events       table#events-table tr[data-position]; #log-service; #stream-id; #events-next

const TOKEN_KEY = 'orderflow.token';
export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** Builds an element: `h('a', {href: '#/x', class: 'y', dataset: {id: 1}}, 'text', child)`. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key === 'dataset') {
        for (const [k, v] of Object.entries(value)) if (v !== undefined && v !== null) el.dataset[k] = String(v);
      } else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
      else if (key === 'text') el.textContent = value;
      else if (value === true) el.setAttribute(key, '');
      else el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** A scrolling wrapper for a table (narrow screens scroll it horizontally). */
export function tableWrap(table) {
  return h('div', { class: 'table-wrap' }, table);
}

/** A labelled form control: returns [label, control]. */
export function field(label, control, hint) {
  return h('div', { class: 'field' }, h('label', { for: control.id }, label), control, hint ? h('small', { class: 'muted' }, hint) : null);
}

// ---------------------------------------------------------------------------------------------
// Formatting

const digitsCache = new Map();
const moneyCache = new Map();

/** Fraction digits of a currency's minor unit (2 for EUR, 0 for JPY, 3 for BHD). */
export function fractionDigits(currency) {
  if (!digitsCache.has(currency)) {
    let digits = 2;
    try {
      digits = new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits;
    } catch { /* unknown code: keep 2 */ }
    digitsCache.set(currency, digits);
  }
  return digitsCache.get(currency);
}

/** Integer minor units as money: `money(122394, 'EUR')` → "€1,223.94". */
export function money(minor, currency) {
  if (minor === null || minor === undefined) return '—';
  if (!currency) return String(minor);
  let fmt = moneyCache.get(currency);
  if (!fmt) {
    try {
      fmt = new Intl.NumberFormat(undefined, { style: 'currency', currency });
    } catch {
      fmt = { format: (n) => `${n.toFixed(2)} ${currency}` };
    }
    moneyCache.set(currency, fmt);
  }
  return fmt.format(Number(minor) / 10 ** fractionDigits(currency));
}

/** Minor units to major units as a number (for charts). */
export function major(minor, currency) {
  return Number(minor) / 10 ** fractionDigits(currency);
}

const numberFmt = new Intl.NumberFormat();
export const num = (n) => (n === null || n === undefined ? '—' : numberFmt.format(n));

const timeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
const preciseFmt = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  fractionalSecondDigits: 3,
});

/** An RFC 3339 time, in the browser's locale and time zone. */
export function fmtTime(iso, precise = false) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return (precise ? preciseFmt : timeFmt).format(d);
}

/** A `<time>` element showing `iso` (the raw value in its title). */
export function timeEl(iso, precise = false) {
  if (!iso) return '—';
  return h('time', { datetime: iso, title: iso }, fmtTime(iso, precise));
}

/** Seconds as a short duration: "45 s", "12 min", "3 h 5 min", "2 d 4 h". */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
  const s = Math.max(0, Number(seconds));
  if (s === 0) return '0 s';
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1).replace(/\.0$/, '') : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`.replace(/ 0 s$/, '');
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs} h ${m % 60} min`.replace(/ 0 min$/, '');
  return `${Math.floor(hrs / 24)} d ${hrs % 24} h`.replace(/ 0 h$/, '');
}

// UUID v7 ids share their leading (time) digits: the tail tells them apart.
export const shortId = (id) => (id ? `…${String(id).slice(-12)}` : '—');
export const text = (v) => (v === null || v === undefined || v === '' ? '—' : String(v));
export const humanize = (v) => (v === null || v === undefined ? '—' : String(v).replace(/_/g, ' '));

/** A status badge: its text is the raw value. */
export function badge(value, kind = 'status') {
  if (value === null || value === undefined) return h('span', { class: 'muted' }, '—');
  return h('span', { class: `badge ${kind}-${value}` }, String(value));
}

/** `datetime-local` value (local wall time) → RFC 3339 in UTC; '' → null. */
export function localToRfc3339(value) {
  if (!value) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d.toISOString();
}

/** RFC 3339 → `datetime-local` value with seconds, in local time. */
export function rfc3339ToLocal(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** Waits `ms`, or rejects with an AbortError when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason ?? new DOMException('aborted', 'AbortError'));
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    function onAbort() { clearTimeout(timer); reject(signal.reason ?? new DOMException('aborted', 'AbortError')); }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export const isAbort = (e) => e?.name === 'AbortError';

// ---------------------------------------------------------------------------------------------
// Status banner (shared by concurrent waits)

const waits = new Map();
let waitSeq = 0;

function renderBanner() {
  const banner = $('#status-banner');
  if (!banner) return;
  const messages = [...new Set(waits.values())];
  banner.textContent = messages.join(' ');
  banner.hidden = messages.length === 0;
}

// ---------------------------------------------------------------------------------------------
// Authentication

export const getToken = () => sessionStorage.getItem(TOKEN_KEY);

// The server asked for a token (a 401 was seen) since this tab opened.
let authAsked = false;
// The user cancelled the sign-in dialog: no request opens it again until the user clicks a
// "Sign in" control or navigates (route()).
let declined = false;

function updateSignOut() {
  const button = $('#sign-out');
  if (button) button.hidden = !getToken();
  const signIn = $('#sign-in');
  if (signIn) signIn.hidden = !!getToken() || !authAsked;
}

let tokenPrompt = null;

/** Shows the sign-in dialog (once for any number of requests); resolves when a token is given. */
function askForToken(reason) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $('#token-dialog');
  const form = $('#token-form');
  const input = $('#token-input');
  $('#token-reason').textContent = reason;
  input.value = '';
  tokenPrompt = new Promise((resolve, reject) => {
    const done = (token) => {
      form.removeEventListener('submit', onSubmit);
      dialog.removeEventListener('close', onClose);
      $('#token-cancel').removeEventListener('click', onCancel);
      tokenPrompt = null;
      if (token) { declined = false; resolve(token); } else {
        declined = true;
        updateSignOut();
        reject(signInError());
      }
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      input.value = '';
      updateSignOut();
      dialog.removeEventListener('close', onClose);
      dialog.close();
      done(token);
    };
    const onClose = () => done(null);
    const onCancel = () => dialog.close();
    form.addEventListener('submit', onSubmit);
    dialog.addEventListener('close', onClose);
    $('#token-cancel').addEventListener('click', onCancel);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
  return tokenPrompt;
}

const signInError = () => new ApiError(401, 'unauthorized', 'Sign in to see this page: the server asks for a bearer token.');

/** A user's "Sign in": forgets a cancelled dialog, asks for a token, then reloads the page. */
export function signIn() {
  declined = false;
  askForToken('This server asks for a bearer token.').then(() => route(), () => {});
}

// ---------------------------------------------------------------------------------------------
// API client

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

/** `path?query` with the empty values left out. */
export function url(path, query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === '') continue;
    params.set(key, String(value));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

/**
 * Calls the API: JSON in, JSON out. Throws an ApiError for an error answer (its code, message
 * and details from `{"error": {...}}`), retries by itself while a projection is not caught up
 * (showing the status banner), asks for a token on 401. `prompt: false` (background polls) never
 * opens the sign-in dialog: a 401 just throws; nor does any request once the user cancelled it.
 */
export async function api(path, { query, method = 'GET', body, signal, wait = true, prompt = true } = {}) {
  const target = url(path, query);
  let waitId = null;
  try {
    for (let attempt = 0; ; attempt++) {
      const headers = { Accept: 'application/json' };
      const token = getToken();
      if (token) headers.Authorization = `Bearer ${token}`;
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      let response;
      try {
        response = await fetch(target, {
          method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
          cache: 'no-store',
        });
      } catch (e) {
        if (isAbort(e)) throw e;
        throw new ApiError(0, 'network', 'The server could not be reached. Is orderflow running?');
      }
      let payload = null;
      const raw = await response.text();
      if (raw) {
        try { payload = JSON.parse(raw); } catch { payload = null; }
      }
      if (response.ok) return payload;
      const err = payload?.error;
      const error = new ApiError(
        response.status,
        err?.code || `http_${response.status}`,
        err?.message || `${method} ${path} answered ${response.status} ${response.statusText}`,
        err?.details,
      );
      if (response.status === 401) {
        const had = !!token;
        authAsked = true;
        // Only the token this request sent is dropped (another request may have set a new one).
        if (had && getToken() === token) sessionStorage.removeItem(TOKEN_KEY);
        updateSignOut();
        if (!prompt || declined || attempt >= 3) throw signInError();
        await askForToken(had ? 'The token was refused. Enter another bearer token.' : 'This server asks for a bearer token.');
        continue;
      }
      if (response.status === 403) {
        const scope = error.details.required_scope;
        error.message = scope
          ? `Forbidden: your token lacks the “${scope}” scope this needs.`
          : `Forbidden: ${error.message}`;
        throw error;
      }
      if (response.status === 503 && error.code === 'not_caught_up' && wait) {
        const d = error.details;
        const progress = d.min_position && d.min_position !== 'a live version'
          ? ` ${d.projection || 'it'} has applied ${num(d.position)}, needs ${d.min_position};`
          : ` ${d.projection || 'it'} has no live version yet;`;
        if (waitId === null) waitId = ++waitSeq;
        waits.set(waitId, `Still waiting for the projection…${progress} retrying automatically.`);
        renderBanner();
        await sleep(1000, signal);
        attempt = 0;
        continue;
      }
      throw error;
    }
  } finally {
    if (waitId !== null) { waits.delete(waitId); renderBanner(); }
  }
}

/** Like `api`, but a 404 answers `null`. */
export async function apiOrNull(path, options) {
  try {
    return await api(path, options);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

/** A user-facing message for an error. */
export function errorMessage(e) {
  if (e instanceof ApiError) {
    const detail = e.details && Object.keys(e.details).length
      ? ` (${Object.entries(e.details).filter(([k]) => k !== 'allowed').map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(', ')})`
      : '';
    return `${e.message}${e.status ? ` [${e.status} ${e.code}]` : ''}${detail}`;
  }
  return e?.message || String(e);
}

/** An inline error notice for a section (not the page). */
export function notice(message, kind = 'error') {
  return h('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : null }, message);
}

// ---------------------------------------------------------------------------------------------
// uPlot, loaded on demand (analytics only)

let uplotPromise = null;

export function loadUPlot() {
  if (window.uPlot) return Promise.resolve(window.uPlot);
  if (uplotPromise) return uplotPromise;
  uplotPromise = new Promise((resolve, reject) => {
    if (!document.querySelector('link[data-uplot]')) {
      document.head.append(h('link', { rel: 'stylesheet', href: '/assets/vendor/uplot/uPlot.min.css', 'data-uplot': '' }));
    }
    const script = h('script', { src: '/assets/vendor/uplot/uPlot.iife.min.js', 'data-uplot': '' });
    script.addEventListener('load', () => (window.uPlot ? resolve(window.uPlot) : reject(new Error('uPlot did not load'))));
    script.addEventListener('error', () => { uplotPromise = null; script.remove(); reject(new Error('the chart library could not be loaded')); });
    document.head.append(script);
  });
  return uplotPromise;
}

// ---------------------------------------------------------------------------------------------
// The orders table, shared by the orders, as-of and customer pages

export const ORDER_STATUSES = ['pending', 'confirmed', 'shipped', 'delivered', 'cancelled'];
export const REASON_CODES = ['requested', 'out_of_stock', 'payment_declined', 'payment_unavailable', 'timed_out', 'abandoned'];

/** An empty orders table with its header; `id` is the table's id. */
export function ordersTable(id, caption) {
  return h('table', { id, class: 'data orders' },
    caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
    h('thead', null, h('tr', null,
      h('th', { scope: 'col', class: 'col-order' }, 'Order'),
      h('th', { scope: 'col', class: 'col-customer' }, 'Customer'),
      h('th', { scope: 'col', class: 'col-status' }, 'Status'),
      h('th', { scope: 'col', class: 'col-total num' }, 'Total'),
      h('th', { scope: 'col', class: 'col-items num col-secondary' }, 'Items'),
      h('th', { scope: 'col', class: 'col-payment col-secondary' }, 'Payment'),
      h('th', { scope: 'col', class: 'col-saga col-secondary' }, 'Saga'),
      h('th', { scope: 'col', class: 'col-placed' }, 'Placed'),
    )),
    h('tbody'));
}

/** A fingerprint of what a row shows: changes when the row must be redrawn. */
export const rowKey = (o) => `${o.stream_version}|${o.updated_at}|${o.payment_updated_at}|${o.saga_updated_at}|${o.customer_name}`;

/** One `tr[data-order-id]` of an orders table. */
export function orderRow(o) {
  const status = h('td', { class: 'col-status', dataset: { status: o.status }, title: o.reason_code ? `reason: ${o.reason_code}` : null }, badge(o.status));
  return h('tr', { dataset: { orderId: o.order_id, key: rowKey(o) } },
    h('td', { class: 'col-order' }, h('a', { class: 'order-link mono', href: `#/orders/${o.order_id}`, title: o.order_id }, shortId(o.order_id))),
    h('td', { class: 'col-customer' }, o.customer_name),
    status,
    h('td', { class: 'col-total num' }, money(o.total_minor, o.currency)),
    h('td', { class: 'col-items num col-secondary' }, num(o.item_count)),
    h('td', { class: 'col-payment col-secondary' }, badge(o.payment_status, 'pay')),
    h('td', { class: 'col-saga col-secondary' }, o.saga_state ? humanize(o.saga_state) : '—'),
    h('td', { class: 'col-placed' }, timeEl(o.placed_at)),
  );
}

/** Replaces the table's rows with `rows`. */
export function fillOrders(table, rows) {
  const body = table.tBodies[0];
  const fragment = document.createDocumentFragment();
  for (const o of rows) fragment.append(orderRow(o));
  body.replaceChildren(fragment);
}

// ---------------------------------------------------------------------------------------------
// Router

const ROUTES = [
  { re: /^\/orders\/?$/, name: 'orders', module: 'orders', title: 'Orders' },
  { re: /^\/orders\/([0-9a-f-]{36})\/?$/i, name: 'order', module: 'order', title: 'Order' },
  { re: /^\/as-of\/?$/, name: 'as-of', module: 'asof', title: 'As of' },
  { re: /^\/customers\/?$/, name: 'customers', module: 'customers', title: 'Customers' },
  { re: /^\/customers\/([0-9a-f-]{36})\/?$/i, name: 'customer', module: 'customers', title: 'Customer', entry: 'customer' },
  { re: /^\/analytics\/?$/, name: 'analytics', module: 'analytics', title: 'Analytics' },
  { re: /^\/operations\/?$/, name: 'operations', module: 'operations', title: 'Operations' },
  { re: /^\/events\/?$/, name: 'events', module: 'events', title: 'Events' },
];

const NAV = { orders: 'nav-orders', order: 'nav-orders', 'as-of': 'nav-as-of', customers: 'nav-customers', customer: 'nav-customers', analytics: 'nav-analytics', operations: 'nav-operations', events: 'nav-events' };

/** The current hash as {path, query}. */
export function currentHash() {
  const raw = location.hash.replace(/^#/, '') || '/orders';
  const [path, qs = ''] = raw.split('?');
  return { path: path || '/orders', query: new URLSearchParams(qs) };
}

/** Rewrites the hash's query without a navigation (filters, cursors), for links and reloads. */
export function replaceQuery(query) {
  const { path } = currentHash();
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') params.set(k, v);
  const qs = params.toString();
  history.replaceState(history.state, '', `#${path}${qs ? `?${qs}` : ''}`);
  routedHash = location.hash;
}

let current = null; // {controller, cleanups}
let navigations = 0;
let routedHash = '#/orders'; // the hash of the page shown (with its query, as replaceQuery left it)

async function route() {
  // A hash that is no route (an in-page anchor such as the skip link's #page) is not a page.
  if (location.hash && location.hash !== '#' && !location.hash.startsWith('#/')) {
    if (current) {
      history.replaceState(history.state, '', routedHash);
      return;
    }
    history.replaceState(null, '', '#/orders');
  }
  const { path, query } = currentHash();
  if (!location.hash || location.hash === '#' || location.hash === '#/') {
    history.replaceState(null, '', '#/orders');
  }
  routedHash = location.hash;
  declined = false; // an explicit navigation: a page may ask for a token again
  if (current) {
    current.controller.abort();
    for (const fn of current.cleanups.splice(0)) { try { fn(); } catch (e) { console.warn(e); } }
  }
  const controller = new AbortController();
  const cleanups = [];
  current = { controller, cleanups };
  const main = $('#page');
  const content = $('#page-content');
  const errorBox = $('#page-error');
  errorBox.hidden = true;
  errorBox.textContent = '';
  content.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  waits.clear();
  renderBanner();

  const match = ROUTES.map((r) => ({ r, m: path.match(r.re) })).find((x) => x.m);
  for (const id of new Set(Object.values(NAV))) {
    const link = document.getElementById(id);
    if (!link) continue;
    if (match && NAV[match.r.name] === id) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  main.dataset.page = match ? match.r.name : 'not-found';
  main.dataset.state = 'loading';
  main.setAttribute('aria-busy', 'true');

  const ctx = {
    params: match ? match.m.slice(1) : [],
    query,
    signal: controller.signal,
    content,
    get alive() { return !controller.signal.aborted; },
    setState(state) {
      if (controller.signal.aborted) return;
      main.dataset.state = state;
      if (state === 'loading') main.setAttribute('aria-busy', 'true');
      else main.removeAttribute('aria-busy');
      if (state !== 'error') { errorBox.hidden = true; errorBox.textContent = ''; }
    },
    fail(error) {
      if (controller.signal.aborted || isAbort(error)) return;
      errorBox.textContent = errorMessage(error);
      if (error instanceof ApiError && error.status === 401) {
        errorBox.append(' ', h('button', { type: 'button', class: 'sign-in', onclick: signIn }, 'Sign in'));
      }
      errorBox.hidden = false;
      main.dataset.state = 'error';
      main.removeAttribute('aria-busy');
    },
    onCleanup(fn) { cleanups.push(fn); },
    api(path, options = {}) { return api(path, { signal: controller.signal, ...options }); },
    apiOrNull(path, options = {}) { return apiOrNull(path, { signal: controller.signal, ...options }); },
    /** Runs `fn` every `ms` (changeable: return a number from fn) until the page is left. */
    every(ms, fn) {
      let timer = null;
      let stopped = false;
      const tick = async () => {
        if (stopped || controller.signal.aborted) return;
        let next = ms;
        try {
          if (!document.hidden) {
            const r = await fn();
            if (typeof r === 'number') next = r;
          }
        } catch (e) {
          if (!isAbort(e)) console.warn('poll failed:', errorMessage(e));
        }
        if (!stopped && !controller.signal.aborted) timer = setTimeout(tick, next);
      };
      timer = setTimeout(tick, ms);
      const stop = () => { stopped = true; clearTimeout(timer); };
      cleanups.push(stop);
      return stop;
    },
  };

  document.title = `${match ? match.r.title : 'Not found'} · orderflow console`;
  if (navigations++ > 0) main.focus({ preventScroll: true });

  if (!match) {
    content.replaceChildren(h('h1', null, 'Not found'), h('p', null, 'No page here. ', h('a', { href: '#/orders' }, 'Go to the orders.')));
    ctx.fail(new Error(`There is no page at #${path}.`));
    return;
  }
  try {
    const module = await import(`./pages/${match.r.module}.js`);
    if (controller.signal.aborted) return;
    const render = module[match.r.entry || 'default'];
    await render(ctx);
  } catch (e) {
    if (!isAbort(e)) {
      if (!(e instanceof ApiError)) console.warn(e);
      ctx.fail(e);
    }
  }
}

function start() {
  updateSignOut();
  // The skip link moves focus to the page without touching the hash (the router's).
  $('a.skip-link')?.addEventListener('click', (event) => {
    event.preventDefault();
    const main = $('#page');
    main.focus({ preventScroll: true });
    main.scrollIntoView({ block: 'start' });
  });
  $('#sign-in')?.addEventListener('click', signIn);
  $('#sign-out').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    updateSignOut();
    route();
  });
  window.addEventListener('hashchange', route);
  window.addEventListener('unhandledrejection', (event) => {
    if (isAbort(event.reason)) event.preventDefault();
  });
  route();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
