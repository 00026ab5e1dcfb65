//! The operations console in a real browser: headless Chromium through chromedriver
//! (`bench::browser`, installed by `scripts/services up`) against the real `orderflow serve`
//! binary seeded with a small demo shop. What each page shows is compared with what the API
//! answers the test itself:
//!
//! - the orders page lists the dashboard's orders with their customers' names; a status filter
//!   leaves only that status; paging reaches the last row, each row once;
//! - keyboard only: Tab reaches an order's link, Enter opens that order;
//! - an order's page: its timeline is its stream's events; the time slider moved by keyboard to
//!   the event before the shipment shows, on the read side's panel and on the write side's, the
//!   status each API answers for that point: "as of" the event's recorded time
//!   (`data-as-of`), or at its position in the orders log (`data-at-position`);
//! - the analytics charts hold as many points as the API answers the page's requests;
//! - a rebuild started from the operations page goes live, and the page shows its version;
//! - no page logs a SEVERE entry in the browser console; each page's screenshot (1280×800, and
//!   the orders page at 390×844) goes to `target/console-screenshots/<page>.png`.
//!
//! One server and one browser session for all of it; every step runs even when one before it
//! failed, and the test fails listing every step that did (with a screenshot of where each
//! stopped, `failed-<step>.png`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bench::browser::fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
use bench::browser::fantoccini::key::Key;
use bench::browser::{Browser, Driver, WINDOW};
use chrono::{DateTime, Utc};
use hyper::StatusCode;
use serde_json::{Value, json};

mod support;

use support::{Api, Server, free_port, scratch};

/// About how many events the demo seeds: a few hundred orders (several pages of 50), some
/// shipped and delivered, quick in a debug build.
const DEMO_EVENTS: &str = "4000";
/// How long a page or the API gets to show what a step waits for.
const WITHIN: Duration = Duration::from_secs(15);
/// The page size of the orders list.
const PAGE_SIZE: usize = 50;
/// The API's sort names (`GET /v1/dashboard/orders?sort=`).
const SORTS: [&str; 4] = ["placed_at_desc", "placed_at_asc", "total_desc", "total_asc"];

/// `<workspace>/target/console-screenshots`.
fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

/// An RFC 3339 time (or any text) as a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The browser on a served console, and the API beside it.
struct Console {
    browser: Browser,
    api: Api,
}

/// One row of the orders table, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: String,
    customer: String,
    status: String,
    link: String,
}

/// What "as of" the order page's panels show: a time, or a position of the orders log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Point {
    AsOf(String),
    AtPosition(u64),
}

impl Point {
    /// Whether this is the point of the event at `position`, recorded at `recorded`.
    fn is(&self, position: u64, recorded: DateTime<Utc>) -> bool {
        match self {
            Point::AtPosition(n) => *n == position,
            Point::AsOf(t) => DateTime::parse_from_rfc3339(t).is_ok_and(|t| t == recorded),
        }
    }
}

impl Console {
    /// A fresh load of the page at `#/{route}`, once `main#page` is ready and `marker` is there.
    async fn open(&self, route: &str, marker: &str) -> anyhow::Result<()> {
        // A new document each time: nothing left of the page before, its own console entries
        // and resource timings.
        self.browser.goto("about:blank").await?;
        self.browser.console_log().await?;
        self.browser.goto(&format!("{}/#/{route}", self.api.base())).await?;
        self.ready(marker).await?;
        // A section's page names its route (a detail page, `#/orders/<id>`, names itself).
        if !route.contains('/') {
            let page = self.eval("document.querySelector('main#page').dataset.page").await?;
            ensure!(page == route, "main#page's data-page is {page} on #/{route}");
        }
        Ok(())
    }

    /// Waits until `main#page` is ready and `marker` (a CSS selector, none if empty) is there.
    async fn ready(&self, marker: &str) -> anyhow::Result<()> {
        self.browser
            .wait_for(r#"main#page[data-state="ready"]"#, WITHIN)
            .await?;
        if !marker.is_empty() {
            self.browser.wait_for(marker, WITHIN).await?;
        }
        Ok(())
    }

    /// A GET that must answer 200.
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.api.get(path).await?;
        ensure!(status == StatusCode::OK, "GET {path}: {status} {body}");
        Ok(body)
    }

    async fn screenshot(&self, page: &str) -> anyhow::Result<()> {
        self.browser
            .screenshot(&screenshots().join(format!("{page}.png")))
            .await
    }

    /// The JavaScript value of `expression` in the page.
    async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        self.browser.js(&format!("return ({expression});"), Vec::new()).await
    }

    /// The text of the first element matching `css` (trimmed), or of its `data-status` when it
    /// has one; lowercase.
    async fn status_in(&self, css: &str) -> anyhow::Result<String> {
        let script = r#"
            const e = document.querySelector(arguments[0]);
            if (!e) return null;
            return (e.getAttribute('data-status') || e.textContent || '').trim().toLowerCase();
        "#;
        match self.browser.js(script, vec![Value::from(css)]).await? {
            Value::String(s) => Ok(s),
            _ => bail!("no element matches `{css}`"),
        }
    }

    /// The orders table's rows.
    async fn rows(&self) -> anyhow::Result<Vec<Row>> {
        let script = r#"
            return Array.from(document.querySelectorAll('table#orders-table tbody tr[data-order-id]')).map(tr => {
                const customer = tr.querySelector('td.col-customer');
                const status = tr.querySelector('td.col-status');
                const link = tr.querySelector('a.order-link');
                return [
                    tr.getAttribute('data-order-id'),
                    customer ? customer.textContent.trim() : null,
                    status ? status.getAttribute('data-status') : null,
                    link ? link.getAttribute('href') : null,
                ];
            });
        "#;
        let rows = self.browser.js(script, Vec::new()).await?;
        let text = |v: &Value| v.as_str().unwrap_or("<missing>").to_owned();
        Ok(rows
            .as_array()
            .context("the rows are not a list")?
            .iter()
            .map(|r| Row {
                id: text(&r[0]),
                customer: text(&r[1]),
                status: text(&r[2]),
                link: text(&r[3]),
            })
            .collect())
    }

    /// Presses `key` (down, up) in whatever has the focus.
    async fn press(&self, key: Key) -> anyhow::Result<()> {
        let actions = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: key.into() })
            .then(KeyAction::Up { value: key.into() });
        self.browser.client().perform_actions(actions).await?;
        Ok(())
    }

    /// Every order of the dashboard with `query` (`status=...`), page by page through the API.
    async fn all_orders(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = String::from("/v1/dashboard/orders?limit=500");
            if !query.is_empty() {
                path.push_str(&format!("&{}", query.trim_start_matches('&')));
            }
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={}", encode(c)));
            }
            let page = self.get(&path).await?;
            rows.extend(page["rows"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(rows),
            }
        }
    }

    /// The API's sort name the page's `select#sort` shows, when it is one.
    async fn sort(&self) -> anyhow::Result<Option<String>> {
        let value = self
            .eval("document.querySelector('select#sort')?.value ?? null")
            .await?;
        Ok(value.as_str().filter(|v| SORTS.contains(v)).map(str::to_owned))
    }
}

/// 1. The orders page: the dashboard's first page with customers' names, a status filter,
///    paging to the last row.
async fn orders_page(c: &Console) -> anyhow::Result<()> {
    c.open("orders", "table#orders-table tbody tr[data-order-id]").await?;
    c.screenshot("orders").await?;
    let sort = c.sort().await?;
    let sort_query = sort.as_ref().map(|s| format!("&sort={s}")).unwrap_or_default();
    let api = c
        .get(&format!("/v1/dashboard/orders?limit={PAGE_SIZE}{sort_query}"))
        .await?;
    let api_rows = api["rows"].as_array().cloned().unwrap_or_default();
    ensure!(!api_rows.is_empty(), "the API lists no order: {api}");
    let rows = c.rows().await?;
    let expected: Vec<Row> = api_rows
        .iter()
        .map(|r| {
            let id = r["order_id"].as_str().unwrap_or_default().to_owned();
            Row {
                link: format!("#/orders/{id}"),
                id,
                customer: r["customer_name"].as_str().unwrap_or_default().to_owned(),
                status: r["status"].as_str().unwrap_or_default().to_owned(),
            }
        })
        .collect();
    if sort.is_some() {
        ensure!(
            rows == expected,
            "the first page is not the API's (sort {sort:?}):\n page: {rows:?}\n API:  {expected:?}"
        );
    } else {
        let (mut a, mut b) = (rows.clone(), expected.clone());
        a.sort_by(|x, y| x.id.cmp(&y.id));
        b.sort_by(|x, y| x.id.cmp(&y.id));
        ensure!(
            a == b,
            "the first page is not the API's (select#sort shows no API sort name):\n page: {rows:?}\n API:  {expected:?}"
        );
    }

    // A status filter: the status with the most orders, so that it leaves several pages.
    let everything = c.all_orders(&sort_query).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for row in &everything {
        *counts
            .entry(row["status"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let (status, count) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, n)| (s.clone(), *n))
        .context("no order")?;
    ensure!(
        count > PAGE_SIZE,
        "no status has more than one page of orders: {counts:?}"
    );
    let filtered = c.all_orders(&format!("status={status}{sort_query}")).await?;
    let filtered_ids: Vec<String> = filtered
        .iter()
        .map(|r| r["order_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(filtered_ids.len() == count, "the API's listing of {status} changed");
    let select = c.browser.wait_for("select#filter-status", WITHIN).await?;
    select
        .select_by_value(&status)
        .await
        .with_context(|| format!("choose {status} in select#filter-status"))?;
    let first: Vec<String> = filtered_ids.iter().take(PAGE_SIZE).cloned().collect();
    let rows = c
        .browser
        .wait_until(&format!("the rows of status {status}"), WITHIN, async || {
            let rows = c.rows().await?;
            let ready = c.eval("document.querySelector('main#page')?.dataset.state").await?;
            Ok((ready == "ready" && !rows.is_empty() && rows.iter().all(|r| r.status == status)).then_some(rows))
        })
        .await?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    ensure!(
        ids == first || (sort.is_none() && ids.iter().collect::<HashSet<_>>() == first.iter().collect()),
        "filtered by {status}, the first page is not the API's: {ids:?} against {first:?}"
    );

    // Paging: next until the button is disabled.
    let mut seen: Vec<String> = ids;
    let mut page = seen.clone();
    for _ in 0..(count / PAGE_SIZE + 2) {
        let next = c.browser.wait_for("button#page-next", WITHIN).await?;
        if !next.is_enabled().await? {
            break;
        }
        next.click().await.context("click button#page-next")?;
        let previous = page.clone();
        page = c
            .browser
            .wait_until("the next page of orders", WITHIN, async || {
                let rows = c.rows().await?;
                let ready = c.eval("document.querySelector('main#page')?.dataset.state").await?;
                let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
                if ready != "ready" || ids.is_empty() || ids == previous {
                    return Ok(None);
                }
                ensure!(
                    rows.iter().all(|r| r.status == status),
                    "a row of another status than {status} on a later page: {rows:?}"
                );
                Ok(Some(ids))
            })
            .await?;
        seen.extend(page.iter().cloned());
    }
    let next = c.browser.wait_for("button#page-next", WITHIN).await?;
    ensure!(
        !next.is_enabled().await?,
        "button#page-next still enabled after {} pages",
        count / PAGE_SIZE + 2
    );
    let unique: HashSet<&String> = seen.iter().collect();
    ensure!(
        unique.len() == seen.len(),
        "paging showed {} rows, {} of them once",
        seen.len(),
        unique.len()
    );
    ensure!(
        seen.len() == count,
        "paging through {status} showed {} rows; the API lists {count}",
        seen.len()
    );
    ensure!(
        seen.last() == filtered_ids.last(),
        "the last row paged to is {:?}; the API's last is {:?}",
        seen.last(),
        filtered_ids.last()
    );
    eprintln!(
        "orders: first page as the API's (sort {sort:?}); {status}: {} rows over {} pages, each once",
        seen.len(),
        count.div_ceil(PAGE_SIZE)
    );
    let previous = c.browser.wait_for("button#page-prev", WITHIN).await?;
    ensure!(
        previous.is_enabled().await?,
        "button#page-prev disabled on the last page"
    );
    Ok(())
}

/// 5. Keyboard only: Tab until an order's link has the focus, Enter opens that order.
async fn keyboard_only(c: &Console) -> anyhow::Result<()> {
    c.open("orders", "table#orders-table tbody tr[data-order-id] a.order-link")
        .await?;
    let mut href = None;
    let mut presses = 0;
    for _ in 0..60 {
        presses += 1;
        c.press(Key::Tab).await?;
        let focused = c
            .eval("document.activeElement && document.activeElement.matches('a.order-link') ? document.activeElement.getAttribute('href') : null")
            .await?;
        if let Some(h) = focused.as_str() {
            href = Some(h.to_owned());
            break;
        }
    }
    let href = href.context("60 Tab presses never focused an a.order-link")?;
    let id = href
        .strip_prefix("#/orders/")
        .context("the link is not #/orders/<id>")?
        .to_owned();
    c.press(Key::Enter).await?;
    c.browser
        .wait_js(&format!("location.hash === '#/orders/{id}'"), WITHIN)
        .await
        .context("Enter on the focused link did not open its order")?;
    c.ready("#order-row [data-field=status]").await?;
    let shown = c.status_in("#order-row [data-field=status]").await?;
    let api = c.get(&format!("/v1/dashboard/orders/{id}")).await?;
    ensure!(
        api["status"] == shown.as_str(),
        "the order opened by keyboard shows {shown:?}; the API says {}",
        api["status"]
    );
    eprintln!("keyboard: {presses} Tab presses reached {href}, Enter opened it ({shown})");
    Ok(())
}

/// A shipped (or delivered) order whose shipment was recorded after the event before it, so
/// that "as of" that event the order was not shipped yet: its id, its stream's events and the
/// shipment's index among them. The seeder commits many orders' events at once, so a seeded
/// order's events often share one moment; when no shipped order of the shop qualifies, a
/// confirmed one is shipped now, through the API.
async fn a_shipment_to_go_back_from(c: &Console) -> anyhow::Result<(String, Vec<Value>, usize)> {
    let stream_of = async |id: &str| -> anyhow::Result<(Vec<Value>, Option<usize>)> {
        let stream = c.get(&format!("/v1/streams/order-{id}/events?limit=1000")).await?;
        let events = stream["events"].as_array().cloned().unwrap_or_default();
        let at = |i: usize| {
            events[i]["recorded_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        };
        let shipment = events
            .iter()
            .position(|e| e["event_type"] == "order.shipped")
            .filter(|&k| k > 0 && at(k) > at(k - 1));
        Ok((events, shipment))
    };
    for status in ["shipped", "delivered"] {
        for row in c.all_orders(&format!("status={status}")).await?.iter().take(300) {
            let id = row["order_id"].as_str().unwrap_or_default();
            if let (events, Some(shipment)) = stream_of(id).await? {
                return Ok((id.to_owned(), events, shipment));
            }
        }
    }
    let page = c.get("/v1/dashboard/orders?status=confirmed&limit=1").await?;
    let id = page["rows"][0]["order_id"]
        .as_str()
        .with_context(|| format!("no shipped order to go back from, and no confirmed one to ship: {page}"))?
        .to_owned();
    let token = c
        .api
        .command_token(
            &format!("/v1/orders/{id}/ship"),
            json!({ "carrier": "DHL", "tracking": "CONSOLE-TEST" }),
            StatusCode::OK,
        )
        .await?;
    c.browser
        .wait_until(
            &format!("the dashboard to show order {id} shipped"),
            WITHIN,
            async || {
                let (status, row) = c
                    .api
                    .get(&format!("/v1/dashboard/orders/{id}?min_position={token}"))
                    .await?;
                Ok((status == StatusCode::OK && row["status"] == "shipped").then_some(()))
            },
        )
        .await?;
    match stream_of(&id).await? {
        (events, Some(shipment)) => Ok((id, events, shipment)),
        (events, None) => bail!("order {id}, shipped now, has no later order.shipped: {events:?}"),
    }
}

/// 2. An order that was shipped: its timeline, and the time slider before the shipment.
async fn order_as_of(c: &Console) -> anyhow::Result<()> {
    let (id, events, shipment) = a_shipment_to_go_back_from(c).await?;
    let expected: Vec<(u64, String)> = events
        .iter()
        .map(|e| {
            (
                e["position"].as_u64().unwrap_or(0),
                e["event_type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();

    c.open(&format!("orders/{id}"), "ol#timeline li.event").await?;
    let timeline = c
        .browser
        .wait_until("the whole timeline", WITHIN, async || {
            let items = c
                .eval("Array.from(document.querySelectorAll('ol#timeline li.event')).map(li => [li.dataset.position, li.dataset.type])")
                .await?;
            let items: Vec<(u64, String)> = items
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|i| {
                    (
                        i[0].as_str().and_then(|p| p.parse().ok()).unwrap_or(0),
                        i[1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            Ok((items.len() >= expected.len()).then_some(items))
        })
        .await?;
    ensure!(
        timeline == expected,
        "the timeline of order {id} is not its stream's events:\n page: {timeline:?}\n API:  {expected:?}"
    );
    let current = c.get(&format!("/v1/dashboard/orders/{id}")).await?;
    let shown = c.status_in("#order-row [data-field=status]").await?;
    ensure!(
        current["status"] == shown.as_str(),
        "order {id} shows {shown:?}; the API says {}",
        current["status"]
    );

    // The slider, by keyboard: Home, then ArrowRight up to the event before the shipment.
    let slider = c.browser.wait_for("input#time-slider[type=range]", WITHIN).await?;
    let (min, max) = (slider.attr("min").await?, slider.attr("max").await?);
    ensure!(
        min.as_deref() == Some("0") && max == Some((expected.len() - 1).to_string()),
        "input#time-slider spans {min:?}..{max:?}; the order has {} events",
        expected.len()
    );
    let target = shipment - 1;
    c.browser
        .js("arguments[0].focus();", vec![serde_json::to_value(&slider)?])
        .await?;
    c.press(Key::Home).await?;
    for _ in 0..target {
        c.press(Key::Right).await?;
    }
    c.browser
        .wait_js(
            &format!("document.querySelector('input#time-slider').value === '{target}'"),
            WITHIN,
        )
        .await
        .context("Home and ArrowRight did not move the slider")?;
    // The point the panels show: the event's recorded_at (`data-as-of`, sent as `as_of` to
    // both APIs), or its position in the orders log (`data-at-position`, sent as
    // `at_position`: `orders:<n>` to the dashboard, `<n>` to the orders service). The slider
    // may pass through other values first: wait for the point of `target`.
    let recorded: DateTime<Utc> = serde_json::from_value(events[target]["recorded_at"].clone())?;
    let position = expected[target].0;
    let point_of = |element: Value| -> Option<Point> {
        if let Some(at) = element["at_position"].as_str() {
            return at.parse().ok().map(Point::AtPosition);
        }
        element["as_of"].as_str().map(|t| Point::AsOf(t.to_owned()))
    };
    let read_point = |css: &str| {
        let script = format!(
            "const e = document.querySelector('{css}'); return e ? {{ as_of: e.dataset.asOf ?? null, at_position: \
             e.dataset.atPosition ?? null }} : null;"
        );
        async move { c.browser.js(&script, Vec::new()).await }
    };
    let point = c
        .browser
        .wait_until(
            &format!("#as-of-moment at event {target}, recorded {recorded}, position {position}"),
            WITHIN,
            async || {
                let point = point_of(read_point("#as-of-moment").await?);
                Ok(point.filter(|p| p.is(position, recorded)))
            },
        )
        .await?;
    for panel in ["#as-of-read", "#as-of-write"] {
        let css = format!(r#"{panel}[data-state="ready"]"#);
        let waited = c
            .browser
            .wait_until(&format!("{panel} ready at {point:?}"), WITHIN, async || {
                Ok((point_of(read_point(&css).await?).as_ref() == Some(&point)).then_some(()))
            })
            .await;
        if let Err(e) = waited {
            let shown = c
                .eval(&format!(
                    "(e => e ? `data-state=${{e.dataset.state}} ${{JSON.stringify(e.dataset)}}: ${{e.textContent.trim().slice(0, 300)}}` : 'missing')(document.querySelector('{panel}'))"
                ))
                .await?;
            return Err(e.context(format!("{panel} then: {}", shown.as_str().unwrap_or_default())));
        }
    }
    let (read_query, write_query) = match &point {
        Point::AsOf(t) => (format!("as_of={}", encode(t)), format!("as_of={}", encode(t))),
        Point::AtPosition(n) => (format!("at_position=orders:{n}"), format!("at_position={n}")),
    };
    let read = c.get(&format!("/v1/dashboard/orders/{id}?{read_query}")).await?;
    let write = c.get(&format!("/v1/orders/{id}/state?{write_query}")).await?;
    let moment = format!("{point:?}");
    let (read_shown, write_shown) = (
        c.status_in("#as-of-read [data-field=status]").await?,
        c.status_in("#as-of-write [data-field=status]").await?,
    );
    ensure!(
        read["status"] == read_shown.as_str(),
        "#as-of-read shows {read_shown:?} as of {moment}; the dashboard API says {}",
        read["status"]
    );
    ensure!(
        write["status"] == write_shown.as_str(),
        "#as-of-write shows {write_shown:?} as of {moment}; the orders service says {}",
        write["status"]
    );
    for shown in [&read_shown, &write_shown] {
        ensure!(
            shown != "shipped" && shown != "delivered",
            "as of the event before its shipment ({moment}), order {id} shows {shown}"
        );
    }
    eprintln!(
        "order {id}: slider at event {target} of {}, as of {moment}: read side {read_shown}, write side {write_shown}",
        expected.len()
    );
    c.screenshot("order").await?;
    Ok(())
}

/// The pages with nothing more to compare: ready, and a screenshot.
async fn plain_page(c: &Console, name: &str, route: &str, marker: &str) -> anyhow::Result<()> {
    c.open(route, marker).await?;
    c.screenshot(name).await
}

/// The customers' list and one customer.
async fn customers(c: &Console) -> anyhow::Result<()> {
    c.open("customers", "table#customers-table tr[data-customer-id]")
        .await?;
    c.screenshot("customers").await?;
    let id = c
        .eval("document.querySelector('table#customers-table tr[data-customer-id]').getAttribute('data-customer-id')")
        .await?;
    let id = id.as_str().context("no customer id")?.to_owned();
    c.get(&format!("/v1/dashboard/customers/{id}"))
        .await
        .context("the first customer listed is not the API's")?;
    plain_page(c, "customer", &format!("customers/{id}"), "").await
}

/// The events page: the log of a service, page after page.
async fn events(c: &Console) -> anyhow::Result<()> {
    c.open("events", "table#events-table tr[data-position]").await?;
    c.browser.wait_for("select#log-service", WITHIN).await?;
    c.browser.wait_for("button#events-next", WITHIN).await?;
    c.screenshot("events").await
}

/// 3. The charts hold as many points as the API answers the requests the page made.
async fn analytics(c: &Console) -> anyhow::Result<()> {
    c.open(
        "analytics",
        "#chart-revenue[data-points], #chart-top-products[data-points]",
    )
    .await?;
    for marker in [
        "#chart-revenue[data-points]",
        "#chart-top-products[data-points]",
        "table#funnel",
        "table#delivery-durations",
    ] {
        c.browser.wait_for(marker, WITHIN).await?;
    }
    c.screenshot("analytics").await?;
    // What the page asked the API, from its resource timings.
    let requested = |endpoint: &'static str| async move {
        let url = c
            .eval(&format!(
                "performance.getEntriesByType('resource').map(e => new URL(e.name)).filter(u => u.pathname === '{endpoint}').map(u => u.pathname + u.search).pop() ?? null"
            ))
            .await?;
        url.as_str()
            .map(str::to_owned)
            .with_context(|| format!("the analytics page never requested {endpoint}"))
    };
    let points = |css: &'static str| async move {
        let value = c
            .eval(&format!("document.querySelector('{css}').getAttribute('data-points')"))
            .await?;
        value
            .as_str()
            .and_then(|v| v.parse::<usize>().ok())
            .with_context(|| format!("{css}'s data-points is {value}"))
    };

    let revenue_path = requested("/v1/analytics/revenue").await?;
    let revenue = c.get(&revenue_path).await?;
    let buckets = revenue["buckets"].as_array().cloned().unwrap_or_default();
    let starts: HashSet<&str> = buckets.iter().filter_map(|b| b["bucket_start"].as_str()).collect();
    let drawn = points("#chart-revenue").await?;
    // One point per bucket start: the currencies are series over the same buckets.
    ensure!(
        drawn == starts.len(),
        "#chart-revenue holds {drawn} points; {revenue_path} answers {} bucket starts ({} buckets, per currency)",
        starts.len(),
        buckets.len()
    );
    ensure!(drawn > 0, "#chart-revenue is empty over a seeded shop ({revenue_path})");
    let revenue_drawn = drawn;

    let top_path = requested("/v1/analytics/top-products").await?;
    let top = c.get(&top_path).await?;
    let products = top["products"].as_array().map_or(0, Vec::len);
    let drawn = points("#chart-top-products").await?;
    ensure!(
        drawn == products,
        "#chart-top-products holds {drawn} bars; {top_path} answers {products} products"
    );
    eprintln!(
        "analytics: {revenue_drawn} revenue points for {} buckets, {} bucket starts ({revenue_path}), \
         {products} products ({top_path})",
        buckets.len(),
        starts.len()
    );
    Ok(())
}

/// 4. A rebuild started from the operations page goes live, and the page shows its version.
async fn rebuild(c: &Console) -> anyhow::Result<()> {
    const NAME: &str = "order_dashboard";
    let version_css = format!(r#"table#projections-table tr[data-projection="{NAME}"] [data-field=version]"#);
    c.open("operations", &version_css).await?;
    c.screenshot("operations").await?;
    let live = async || -> anyhow::Result<(Option<u64>, bool)> {
        let status = c.get("/v1/projections").await?;
        let projection = status["projections"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == NAME).cloned())
            .with_context(|| format!("/v1/projections has no {NAME}: {status}"))?;
        Ok((projection["live_version"].as_u64(), projection["rebuild"].is_null()))
    };
    let shown = async || -> anyhow::Result<Option<u64>> {
        let text = c
            .eval(&format!(
                "document.querySelector('{}')?.textContent ?? ''",
                version_css.replace('\'', "\\'")
            ))
            .await?;
        let digits: String = text
            .as_str()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        Ok(digits.parse().ok())
    };
    let before = live().await?.0.context("no live version before the rebuild")?;
    c.browser
        .wait_until(&format!("the page to show {NAME} v{before}"), WITHIN, async || {
            Ok((shown().await? == Some(before)).then_some(()))
        })
        .await?;
    let button = c
        .browser
        .wait_for(&format!(r#"button.rebuild[data-projection="{NAME}"]"#), WITHIN)
        .await?;
    button.click().await.context("click the rebuild button")?;
    // A confirmation, if the page asks for one.
    let _ = c.browser.client().accept_alert().await;
    let after = c
        .browser
        .wait_until(
            &format!("{NAME} rebuilt and live"),
            Duration::from_secs(60),
            async || {
                let (version, settled) = live().await?;
                Ok(version.filter(|v| *v > before && settled))
            },
        )
        .await?;
    c.browser
        .wait_until(&format!("the page to show {NAME} v{after}"), WITHIN, async || {
            Ok((shown().await? == Some(after)).then_some(()))
        })
        .await
        .with_context(|| format!("the API says v{after} is live, up from v{before}"))?;
    eprintln!("operations: {NAME} rebuilt from the page, v{before} → v{after}, shown live");
    Ok(())
}

/// The orders page on a phone-sized window.
async fn narrow_orders(c: &Console) -> anyhow::Result<()> {
    c.browser.set_window_size(390, 844).await?;
    let shown = plain_page(
        c,
        "orders-390x844",
        "orders",
        "table#orders-table tbody tr[data-order-id]",
    )
    .await;
    c.browser.set_window_size(WINDOW.0, WINDOW.1).await?;
    shown
}

/// Waits until the read models have applied the seeded shop (the demo logs it).
async fn wait_caught_up(server: &Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !server.log().contains("caught up with the demo shop") {
        ensure!(
            Instant::now() < deadline,
            "the read models did not catch up within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_what_the_api_answers() {
    // This run's screenshots only.
    let _ = std::fs::remove_dir_all(screenshots());
    let dir = scratch("console");
    let port = free_port();
    let mut server = Server::start(
        &["serve", "--demo", "--demo-events", DEMO_EVENTS],
        &dir.join("data"),
        port,
        dir.join("serve.log"),
    );
    let api = Api::new(port);
    let started = async {
        api.wait_ready(&mut server, Duration::from_secs(120)).await?;
        wait_caught_up(&server).await?;
        let (status, page) = api.get("/").await?;
        ensure!(
            status == StatusCode::OK,
            "GET / does not serve the console: {status} {page}"
        );
        Driver::start().await
    }
    .await;
    let driver = match started {
        Ok(driver) => driver,
        Err(e) => panic!("{e:#}\n--- orderflow's log ---\n{}", server.log()),
    };
    let browser = driver.session().await.expect("a browser session");
    let c = Console { browser, api };

    let mut failures: Vec<String> = Vec::new();
    macro_rules! step {
        ($name:expr, $run:expr) => {{
            let result = $run.await;
            if result.is_err() {
                let shot = format!("failed-{}.png", $name.replace(' ', "-"));
                let _ = c.browser.screenshot(&screenshots().join(shot)).await;
            }
            let console = c.browser.no_severe("the browser console").await;
            for outcome in [result, console.map(drop)] {
                if let Err(e) = outcome {
                    failures.push(format!("{}: {e:#}", $name));
                }
            }
        }};
    }
    step!("orders page", orders_page(&c));
    step!("keyboard only", keyboard_only(&c));
    step!("order as of", order_as_of(&c));
    step!("as-of page", plain_page(&c, "as-of", "as-of", ""));
    step!("customers", customers(&c));
    step!("events", events(&c));
    step!("analytics", analytics(&c));
    step!("orders at 390x844", narrow_orders(&c));
    // Last: it changes the dashboard's version under the other pages.
    step!("rebuild from the operations page", rebuild(&c));

    let _ = c.browser.close().await;
    drop(driver);
    let stopped = server.terminate(Duration::from_secs(30));
    let log = server.log();
    assert!(
        failures.is_empty(),
        "{} step(s) failed (screenshots in {}):\n\n{}\n\n--- orderflow's log (last lines) ---\n{}",
        failures.len(),
        screenshots().display(),
        failures.join("\n\n"),
        log.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        matches!(stopped, Ok(s) if s.success()),
        "serve did not stop cleanly: {stopped:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
