// #/operations: the projections (versions, positions, lag, dead letters, rebuilds) and the
// services the orders service calls (health, circuit breakers), polled.

import { h, tableWrap, num, fmtDuration, notice, errorMessage, isAbort, ApiError, badge, text, api } from '../app.js';

const FAST_MS = 1000;
const SLOW_MS = 5000;

export default async function operations(ctx) {
  const projTable = h('table', { id: 'projections-table', class: 'data' },
    h('caption', { class: 'visually-hidden' }, 'Projections'),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, 'Projection'),
      h('th', { scope: 'col', class: 'num' }, 'Live version'),
      h('th', { scope: 'col' }, 'State'),
      h('th', { scope: 'col' }, 'Position'),
      h('th', { scope: 'col', class: 'num' }, 'Lag (events)'),
      h('th', { scope: 'col', class: 'num' }, 'Lag (time)'),
      h('th', { scope: 'col', class: 'num' }, 'Dead letters'),
      h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
    h('tbody'));
  const projNote = h('div');
  const progress = h('div', { id: 'rebuild-progress', class: 'card', hidden: true, 'aria-live': 'polite' });
  const servicesArea = h('div', { id: 'services-area' });
  const sagasArea = h('div', { id: 'parked-area' });
  const updated = h('span', { class: 'muted small', id: 'ops-updated' });

  ctx.content.replaceChildren(
    h('div', { class: 'page-head' }, h('h1', null, 'Operations'), updated),
    h('section', { 'aria-labelledby': 'proj-title' },
      h('h2', { id: 'proj-title' }, 'Projections'),
      projNote, tableWrap(projTable), progress),
    h('div', { class: 'grid' },
      h('section', { class: 'card', 'aria-labelledby': 'services-title' },
        h('h2', { id: 'services-title' }, 'Services the orders service calls'), servicesArea),
      h('section', { class: 'card', 'aria-labelledby': 'parked-title' },
        h('h2', { id: 'parked-title' }, 'Parked sagas'), sagasArea)),
  );

  // The rebuild this page follows: {name, version, started, samples: [{t, applied}], switched}
  let watching = null;
  let lastStatus = null;
  // Projections whose rebuild POST has not answered yet: their button stays disabled.
  const requested = new Set();

  function row(p) {
    const positions = h('span', { class: 'positions' }, (p.services || []).map((s, i) => [
      i ? ' ' : null,
      h('span', { class: 'badge', title: `${s.service}: applied up to ${s.token}; lag ${s.lag_events ?? '?'} events, ${fmtDuration(s.lag_seconds)}`, dataset: { service: s.service, position: s.position } }, `${s.service} ${num(s.position)}`),
    ]));
    const busy = p.state === 'rebuilding' || requested.has(p.name) || (watching && watching.name === p.name && !watching.done);
    const rebuild = h('button', {
      type: 'button', class: 'rebuild secondary small', dataset: { projection: p.name },
      disabled: busy, 'aria-label': `Rebuild ${p.name}`,
    }, 'Rebuild');
    rebuild.addEventListener('click', () => startRebuild(p.name, rebuild));
    return h('tr', { dataset: { projection: p.name } },
      h('th', { scope: 'row', class: 'mono' }, p.name),
      h('td', { class: 'num', dataset: { field: 'version' } }, p.live_version === null ? '—' : String(p.live_version)),
      h('td', { dataset: { field: 'state', value: p.state } }, badge(p.state, 'state'),
        p.rebuild ? h('span', { class: 'muted small' }, ` v${p.rebuild.version} ${p.rebuild.percent} %`) : null),
      h('td', { dataset: { field: 'position' } }, positions),
      h('td', { class: 'num', dataset: { field: 'lag-events' } }, p.lag_events === null ? 'unknown' : num(p.lag_events)),
      h('td', { class: 'num', dataset: { field: 'lag-seconds', value: p.lag_seconds } }, fmtDuration(p.lag_seconds)),
      h('td', { class: 'num', dataset: { field: 'dead-letters' } }, num(p.dead_letters)),
      h('td', null, rebuild));
  }

  function renderProjections(status) {
    const body = projTable.tBodies[0];
    const focused = document.activeElement?.matches?.('button.rebuild') ? document.activeElement.dataset.projection : null;
    body.replaceChildren(...status.projections.map(row));
    if (focused) body.querySelector(`button.rebuild[data-projection="${CSS.escape(focused)}"]`)?.focus({ preventScroll: true });
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function renderProgress(status) {
    // A rebuild someone else started: follow it too.
    const running = status.projections.find((x) => x.rebuild);
    if (running && (!watching || (watching.done && !(watching.name === running.name && watching.version === running.rebuild.version)))) {
      watching = { name: running.name, version: running.rebuild.version, samples: [], seen: true, started: performance.now(), done: false };
    }
    if (!watching) return;
    const p = status.projections.find((x) => x.name === watching.name);
    if (!p) return;
    const now = performance.now();
    const r = p.rebuild && p.rebuild.version === watching.version ? p.rebuild : null;
    const target = p.versions?.find((v) => v.version === watching.version);
    progress.hidden = false;
    progress.dataset.projection = watching.name;
    progress.dataset.version = String(watching.version);
    if (r) {
      watching.seen = true;
      watching.samples.push({ t: now, applied: r.events_applied });
      watching.samples = watching.samples.filter((s) => now - s.t < 10_000);
      const first = watching.samples[0];
      const measured = watching.samples.length > 1 && now > first.t
        ? ((r.events_applied - first.applied) / (now - first.t)) * 1000 : null;
      const rate = r.events_per_second > 0 ? r.events_per_second : measured;
      let eta = r.eta_seconds;
      if ((eta === null || eta === undefined) && rate > 0 && r.percent > 0 && r.percent < 100) {
        const total = r.events_applied / (r.percent / 100);
        eta = (total - r.events_applied) / rate;
      }
      progress.dataset.state = 'building';
      progress.replaceChildren(
        h('h3', null, `Rebuilding ${watching.name} as version ${watching.version}`),
        h('div', { class: 'rebuild-line' },
          h('progress', { max: 100, value: r.percent, 'aria-label': 'rebuild progress' }),
          h('span', { dataset: { field: 'percent' } }, `${r.percent.toFixed(1)} %`),
          h('span', { dataset: { field: 'events-applied' } }, `${num(r.events_applied)} events`),
          h('span', { dataset: { field: 'events-per-second' } }, rate === null ? '— events/s' : `${num(Math.round(rate))} events/s`),
          h('span', { dataset: { field: 'eta' } }, `ETA ${eta === null || eta === undefined ? '—' : fmtDuration(eta)}`)));
      return;
    }
    if (p.live_version !== null && p.live_version >= watching.version && (!target || target.state === 'live' || p.live_version > watching.version)) {
      if (!watching.done) {
        watching.done = true;
        progress.dataset.state = 'switched';
        progress.replaceChildren(
          h('h3', null, `${watching.name}: switched`),
          h('p', { dataset: { field: 'result' } },
            `Rebuild done: version ${watching.version} is live (switched after ${fmtDuration((now - watching.started) / 1000)}).`));
      }
      return;
    }
    if (target && target.state !== 'building' && target.state !== 'live') {
      watching.done = true;
      progress.dataset.state = 'failed';
      progress.replaceChildren(h('h3', null, `${watching.name}: rebuild failed`),
        notice(`Version ${watching.version} ended ${target.state} without going live; see the server's log, then rebuild again.`));
      return;
    }
    if (!watching.seen) {
      progress.dataset.state = 'starting';
      progress.replaceChildren(h('h3', null, `Rebuilding ${watching.name} as version ${watching.version}`), h('p', { class: 'muted' }, 'Starting…'));
      if (now - watching.started > 60_000) {
        watching.done = true;
        progress.replaceChildren(notice(`Version ${watching.version} of ${watching.name} never started building.`));
      }
    }
  }

  async function startRebuild(name, button) {
    if (requested.has(name)) return;
    // Disabled (here and in every redraw) until the POST answered; then while the rebuild is
    // followed (`watching`), until the status shows it switched or failed.
    requested.add(name);
    button.disabled = true;
    try {
      const answer = await api(`/v1/projections/${encodeURIComponent(name)}/rebuild`, { method: 'POST', signal: ctx.signal });
      requested.delete(name);
      if (!ctx.alive) return;
      watching = { name: answer.projection || name, version: answer.version, samples: [], seen: false, started: performance.now(), done: false };
      progress.hidden = false;
      progress.dataset.projection = watching.name;
      progress.dataset.version = String(watching.version);
      progress.dataset.state = 'starting';
      progress.replaceChildren(h('h3', null, `Rebuilding ${watching.name} as version ${watching.version}`), h('p', { class: 'muted' }, 'Starting…'));
      schedule(0);
    } catch (e) {
      requested.delete(name);
      if (isAbort(e) || !ctx.alive) return;
      if (lastStatus) renderProjections(lastStatus); // the button, enabled again (it may have been redrawn)
      else button.disabled = false;
      projNote.replaceChildren(notice(`Rebuild of ${name} refused: ${errorMessage(e)}`, e instanceof ApiError && e.status === 409 ? 'warn' : 'error'));
    }
  }

  // Generations of the refreshes: an answer older than one already drawn is dropped.
  const drawn = { projections: 0, services: 0, parked: 0 };
  const asked = { projections: 0, services: 0, parked: 0 };
  const newer = (what, mine) => {
    if (!ctx.alive || mine < drawn[what]) return false;
    drawn[what] = mine;
    return true;
  };

  // `options`: {prompt: false} for the background polls (a 401 fails quietly).
  async function refreshProjections(options) {
    const mine = ++asked.projections;
    const status = await ctx.api('/v1/projections', { wait: false, ...options });
    if (!newer('projections', mine)) return;
    lastStatus = status;
    projNote.querySelector('.notice.error[data-poll]')?.remove();
    renderProgress(status);
    renderProjections(status);
  }

  async function refreshServices(options) {
    const mine = ++asked.services;
    try {
      const answer = await ctx.api('/v1/services', { wait: false, ...options });
      if (!newer('services', mine)) return;
      servicesArea.replaceChildren(tableWrap(h('table', { id: 'services-table', class: 'data' },
        h('caption', { class: 'visually-hidden' }, 'Services'),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Service'), h('th', { scope: 'col' }, 'Health'), h('th', { scope: 'col' }, 'Circuit breaker'), h('th', { scope: 'col' }, 'Error'))),
        h('tbody', null, answer.services.map((s) => h('tr', { dataset: { service: s.service } },
          h('th', { scope: 'row' }, s.service),
          h('td', { dataset: { field: 'health', value: String(s.healthy) } }, h('span', { class: `badge health-${s.healthy}` }, s.healthy ? 'healthy' : 'unhealthy')),
          h('td', { dataset: { field: 'breaker', value: s.breaker } }, h('span', { class: `badge breaker-${s.breaker}` }, s.breaker.replace('_', '-'))),
          h('td', { class: 'wrap', dataset: { field: 'error' } }, text(s.error))))))));
    } catch (e) {
      if (isAbort(e)) throw e;
      if (!newer('services', mine)) return;
      servicesArea.replaceChildren(e instanceof ApiError && e.status === 404
        ? notice('This server does not report its services (GET /v1/services answered 404: the orders service is not hosted here).', 'info')
        : notice(`Services: ${errorMessage(e)}`, e instanceof ApiError && e.status === 403 ? 'warn' : 'error'));
    }
  }

  async function refreshParked(options) {
    const mine = ++asked.parked;
    try {
      const answer = await ctx.api('/v1/sagas/parked', { wait: false, ...options });
      if (!newer('parked', mine)) return;
      sagasArea.replaceChildren(answer.order_ids.length
        ? h('ul', { id: 'parked-sagas' }, answer.order_ids.map((id) => h('li', null, h('a', { class: 'mono', href: `#/orders/${id}` }, id))))
        : h('p', { class: 'muted', id: 'parked-sagas' }, 'None: every saga is running or done.'));
    } catch (e) {
      if (isAbort(e)) throw e;
      if (!newer('parked', mine)) return;
      sagasArea.replaceChildren(e instanceof ApiError && e.status === 404
        ? notice('Not reported by this server.', 'info')
        : notice(errorMessage(e), e instanceof ApiError && e.status === 403 ? 'warn' : 'error'));
    }
  }

  // One refresh at a time: `busy` while the first load or a poll runs; a poll asked for meanwhile
  // (schedule(0) after a rebuild was started) runs right after it.
  let timer = null;
  let slowTick = 0;
  let busy = false;
  let again = false;
  function schedule(ms) {
    clearTimeout(timer);
    if (!ctx.alive) return;
    if (busy) {
      if (ms === 0) again = true;
      return;
    }
    timer = setTimeout(poll, ms);
  }
  ctx.onCleanup(() => clearTimeout(timer));
  const following = () => (watching && !watching.done) || lastStatus?.projections.some((p) => p.rebuild);
  function settled() {
    busy = false;
    const soon = again;
    again = false;
    schedule(soon ? 0 : following() ? FAST_MS : SLOW_MS);
  }

  async function poll() {
    if (busy) { again = true; return; }
    busy = true;
    const fast = following();
    try {
      if (!document.hidden) {
        await refreshProjections({ prompt: false });
        if (!fast || ++slowTick % 5 === 0) await Promise.all([refreshServices({ prompt: false }), refreshParked({ prompt: false })]);
      }
    } catch (e) {
      if (isAbort(e)) return;
      projNote.replaceChildren(h('p', { class: 'notice error', 'data-poll': '' }, `Could not refresh: ${errorMessage(e)}`));
    } finally {
      if (ctx.alive) settled();
    }
  }

  // First load: the projections decide the page's state; the other sections report themselves.
  busy = true;
  const [first] = await Promise.allSettled([refreshProjections(), refreshServices(), refreshParked()]);
  if (!ctx.alive) return;
  if (first.status === 'rejected') {
    if (isAbort(first.reason)) return;
    ctx.fail(first.reason);
  } else {
    ctx.setState(lastStatus.projections.length ? 'ready' : 'empty');
  }
  settled();
}
