//! Moving a service's log between stores without losing anything: `orderflow export` (a store
//! to a file), `orderflow import` (a file to a store) and `orderflow split-store` (the one store
//! of old to the services' own). The same file is the per-service backup.
//!
//! # The file
//!
//! JSON Lines, one object per line, each with one key saying what the line is:
//!
//! ```text
//! {"header":{"format":"orderflow-log","version":1,"service":"orders","exported_at":"…"}}
//! {"event":{"position":1,"stream_id":"order-…","stream_version":1,"event_id":"…",
//!           "event_type":"order.placed","schema_version":1,"payload":"<base64>",
//!           "occurred_at":"…","recorded_at":"…","correlation_id":"…","causation_id":"…","actor":"…"}}
//! {"idempotency":{"key":"…","request_hash":"<base64>","result":[…],"created_at":"…"}}
//! {"end":{"events":1,"idempotency_records":1,"sha256":"<hex>"}}
//! ```
//!
//! Events come in position order, then the idempotency records. The `end` line counts both and
//! carries the SHA-256 of every byte before it: a file cut short has no `end` line, and one
//! changed on the way has another hash. Text, because a user can read it and a diff can
//! compare two; base64 for the payloads, which are protobuf.
//!
//! # What is kept
//!
//! Everything a reader may hold on to: positions (with their holes), stream versions, event
//! ids, event types and schema versions, payloads byte for byte, both times, the metadata, and
//! the idempotency records (kept for the life of the store: a client retrying a command after
//! the move gets the first answer). Not kept: snapshots (a cache, taken again as commands run)
//! and readers' checkpoints (the relay of the new store publishes its log from the start;
//! consumers apply each event once whatever comes twice).
//!
//! # Import
//!
//! The whole file is checked first (its lines, its order, that every stream is the service's,
//! its counts and its hash): bad or truncated input is refused before the target is even
//! opened. Then the events go in, in batches, each one transaction of the target
//! ([`LogTransfer::import_events`]). Importing again is safe: the events the target already
//! holds must be the file's first ones, the same event at the same position, and are skipped;
//! the rest is added. So an import that stopped half-way (the database went away) is finished
//! by running it again, and a target that holds other events is refused.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use event_schemas::Service;
use event_store::{EventMetadata, IdempotencyRecord, LogTransfer, RecordedEvent, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use uuid::Uuid;

/// The `format` of the header line.
pub const FORMAT: &str = "orderflow-log";
/// The version of the file's layout this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Events (or records) read from a store, or written to one, per round trip.
const PAGE: usize = 2_000;

/// Why an export, an import or a split failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a log export, or not a whole one. `line` counts from 1.
    #[error("{}, line {line}: {reason}; nothing was imported", path.display())]
    Format { path: PathBuf, line: u64, reason: String },
    /// The target holds events that are not the start of this log.
    #[error("{0}; nothing more was imported")]
    Diverged(String),
    #[error("the event store failed")]
    Store(#[from] StoreError),
}

/// What an export or an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Events written (export) or added to the store (import).
    pub events: u64,
    /// Events the target already held (import run again), left as they were.
    pub events_already_there: u64,
    /// Events of the store that are not the service's (a store shared by every service).
    pub events_of_other_services: u64,
    /// Idempotency records written (export) or added (import).
    pub idempotency_records: u64,
    /// Idempotency records the target already held.
    pub idempotency_records_already_there: u64,
}

/// One line of the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Header(Header),
    Event(EventLine),
    Idempotency(RecordLine),
    End(End),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    service: String,
    exported_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    position: u64,
    stream_id: String,
    stream_version: u64,
    event_id: Uuid,
    event_type: String,
    schema_version: u32,
    /// Base64 of the payload's bytes.
    payload: String,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    correlation_id: String,
    causation_id: String,
    actor: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine {
    key: String,
    /// Base64 of the hash.
    request_hash: String,
    /// The commit's answer, as JSON.
    result: serde_json::Value,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    events: u64,
    idempotency_records: u64,
    /// Hex SHA-256 of every byte of the file before this line.
    sha256: String,
}

impl EventLine {
    fn of(e: &RecordedEvent) -> Self {
        EventLine {
            position: e.position,
            stream_id: e.stream_id.clone(),
            stream_version: e.stream_version,
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            payload: BASE64.encode(&e.payload),
            occurred_at: e.occurred_at,
            recorded_at: e.recorded_at,
            correlation_id: e.metadata.correlation_id.clone(),
            causation_id: e.metadata.causation_id.clone(),
            actor: e.metadata.actor.clone(),
        }
    }

    fn into_event(self) -> Result<RecordedEvent, String> {
        let payload = BASE64
            .decode(&self.payload)
            .map_err(|e| format!("the payload of event {} is not base64 ({e})", self.event_id))?;
        Ok(RecordedEvent {
            position: self.position,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version: self.schema_version,
            payload,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            metadata: EventMetadata {
                correlation_id: self.correlation_id,
                causation_id: self.causation_id,
                actor: self.actor,
            },
        })
    }
}

impl RecordLine {
    fn of(r: &IdempotencyRecord) -> Result<Self, StoreError> {
        let result = serde_json::from_str(&r.result)
            .map_err(|e| StoreError::Corrupt(format!("idempotency record {:?}: its result is not JSON: {e}", r.key)))?;
        Ok(RecordLine {
            key: r.key.clone(),
            request_hash: BASE64.encode(&r.request_hash),
            result,
            created_at: r.created_at,
        })
    }

    fn into_record(self) -> Result<IdempotencyRecord, String> {
        let request_hash = BASE64
            .decode(&self.request_hash)
            .map_err(|e| format!("the request hash of idempotency key {:?} is not base64 ({e})", self.key))?;
        Ok(IdempotencyRecord {
            key: self.key,
            request_hash,
            result: self.result.to_string(),
            created_at: self.created_at,
        })
    }
}

/// Whether `stream_id` is `service`'s: its category is one of the service's.
fn owned_by(stream_id: &str, service: Service) -> bool {
    Service::of_stream(stream_id).is_ok_and(|owner| owner == service)
}

/// The service an idempotency record belongs to: the one whose stream its commit wrote first.
fn record_owner(record: &IdempotencyRecord) -> Option<Service> {
    let appends: Vec<event_store::AppendResult> = serde_json::from_str(&record.result).ok()?;
    Service::of_stream(&appends.first()?.stream_id).ok()
}

/// Writes `service`'s log in `store` to `path` (a new file: an existing one is refused, and
/// the file appears only once complete). In a store shared by every service, only the service's
/// streams are written. `progress` is called with the events written so far.
pub async fn export(
    store: &dyn LogTransfer,
    service: Service,
    path: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Moved, ArchiveError> {
    let io = |action| {
        move |source| ArchiveError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    if tokio::fs::try_exists(path).await.map_err(io("check"))? {
        return Err(io("write")(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "it exists already; give a new file",
        )));
    }
    let partial = partial_path(path);
    let file = tokio::fs::File::create(&partial).await.map_err(io("create"))?;
    let mut out = HashingWriter::new(BufWriter::new(file));
    let written = async {
        let mut moved = Moved::default();
        out.line(&Line::Header(Header {
            format: FORMAT.to_owned(),
            version: FORMAT_VERSION,
            service: service.name().to_owned(),
            exported_at: Utc::now(),
        }))
        .await?;
        let mut after = 0;
        loop {
            let page = store.read_all(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for event in &page {
                if owned_by(&event.stream_id, service) {
                    out.line(&Line::Event(EventLine::of(event))).await?;
                    moved.events += 1;
                } else {
                    moved.events_of_other_services += 1;
                }
            }
            progress(moved.events);
        }
        let mut after_key: Option<String> = None;
        loop {
            let page = store.idempotency_records(after_key.as_deref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after_key = Some(last.key.clone());
            for record in &page {
                if record_owner(record) == Some(service) {
                    out.line(&Line::Idempotency(RecordLine::of(record)?)).await?;
                    moved.idempotency_records += 1;
                }
            }
        }
        let end = End {
            events: moved.events,
            idempotency_records: moved.idempotency_records,
            sha256: out.digest(),
        };
        out.line(&Line::End(end)).await?;
        out.finish().await?;
        Ok::<_, WriteError>(moved)
    }
    .await;
    match written {
        Ok(moved) => {
            tokio::fs::rename(&partial, path).await.map_err(io("write"))?;
            Ok(moved)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(match e {
                WriteError::Io(source) => io("write")(source),
                WriteError::Store(e) => ArchiveError::Store(e),
            })
        }
    }
}

/// Where an export is written until it is complete.
fn partial_path(path: &Path) -> PathBuf {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    PathBuf::from(partial)
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes lines to a file and hashes what it wrote.
struct HashingWriter {
    out: BufWriter<tokio::fs::File>,
    hash: Sha256,
}

impl HashingWriter {
    fn new(out: BufWriter<tokio::fs::File>) -> Self {
        HashingWriter {
            out,
            hash: Sha256::new(),
        }
    }

    async fn line(&mut self, line: &Line) -> Result<(), std::io::Error> {
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.out.write_all(&bytes).await
    }

    fn digest(&self) -> String {
        hex(&self.hash.clone().finalize())
    }

    /// Flushes, and waits until the file is on disk.
    async fn finish(&mut self) -> Result<(), std::io::Error> {
        self.out.flush().await?;
        self.out.get_mut().sync_all().await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a checked file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub events: u64,
    pub idempotency_records: u64,
}

/// Reads `path` through, checking that it is a whole, unchanged export of `service`'s log
/// (see the module doc); nothing is written anywhere.
pub async fn check(path: &Path, service: Service) -> Result<Checked, ArchiveError> {
    let mut lines = Lines::open(path).await?;
    let mut hash = Sha256::new();
    let mut position = 0u64;
    let (mut events, mut records) = (0u64, 0u64);
    let mut ended = None;
    while let Some((number, text)) = lines.next().await? {
        let bad = |reason: String| lines.bad(number, reason);
        if ended.is_some() {
            return Err(bad("there is more after the end line".to_owned()));
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| bad(format!("not a line of a log export ({e})")))?;
        match line {
            Line::Header(header) if number == 1 => check_header(&header, service).map_err(bad)?,
            _ if number == 1 => {
                return Err(bad(format!(
                    "not an export: the first line must be the {FORMAT} header"
                )));
            }
            Line::Header(_) => return Err(bad("a second header".to_owned())),
            Line::Event(event) => {
                if records > 0 {
                    return Err(bad("an event after the idempotency records".to_owned()));
                }
                if event.position <= position {
                    return Err(bad(format!(
                        "position {} does not follow position {position}: events come in position order",
                        event.position
                    )));
                }
                if !owned_by(&event.stream_id, service) {
                    return Err(bad(format!(
                        "stream {} is not the {service} service's",
                        event.stream_id
                    )));
                }
                position = event.position;
                event.into_event().map_err(bad)?;
                events += 1;
            }
            Line::Idempotency(record) => {
                record.into_record().map_err(bad)?;
                records += 1;
            }
            Line::End(end) => {
                let digest = hex(&hash.clone().finalize());
                if end.sha256 != digest {
                    return Err(bad(
                        "the file changed since it was written: its SHA-256 is not the one its end line records"
                            .to_owned(),
                    ));
                }
                if (end.events, end.idempotency_records) != (events, records) {
                    return Err(bad(format!(
                        "the end line counts {} events and {} idempotency records, the file holds {events} and {records}",
                        end.events, end.idempotency_records
                    )));
                }
                ended = Some(number);
            }
        }
        hash.update(text.as_bytes());
        hash.update(b"\n");
    }
    if ended.is_none() {
        return Err(lines.bad(
            lines.count + 1,
            format!("the file ends before its end line (after {events} events): it was cut short"),
        ));
    }
    Ok(Checked {
        events,
        idempotency_records: records,
    })
}

fn check_header(header: &Header, service: Service) -> Result<(), String> {
    if header.format != FORMAT {
        return Err(format!("the format is {:?}, not {FORMAT}", header.format));
    }
    if header.version != FORMAT_VERSION {
        return Err(format!(
            "version {} of the format; this orderflow reads version {FORMAT_VERSION}",
            header.version
        ));
    }
    if header.service != service.name() {
        return Err(format!(
            "an export of the {} service's log, not the {service} service's",
            header.service
        ));
    }
    Ok(())
}

/// The lines of a file, numbered from 1.
struct Lines {
    path: PathBuf,
    lines: tokio::io::Lines<BufReader<tokio::fs::File>>,
    count: u64,
}

impl Lines {
    async fn open(path: &Path) -> Result<Self, ArchiveError> {
        let file = tokio::fs::File::open(path).await.map_err(|source| ArchiveError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        Ok(Lines {
            path: path.to_owned(),
            lines: BufReader::new(file).lines(),
            count: 0,
        })
    }

    async fn next(&mut self) -> Result<Option<(u64, String)>, ArchiveError> {
        let line = self.lines.next_line().await.map_err(|source| {
            let reason = format!("cannot read it ({source})");
            ArchiveError::Format {
                path: self.path.clone(),
                line: self.count + 1,
                reason,
            }
        })?;
        Ok(line.map(|text| {
            self.count += 1;
            (self.count, text)
        }))
    }

    fn bad(&self, line: u64, reason: String) -> ArchiveError {
        ArchiveError::Format {
            path: self.path.clone(),
            line,
            reason,
        }
    }
}

/// Imports the export at `path` of `service`'s log into `target` (see the module doc): checks
/// the whole file first, then adds what the target does not hold yet. `progress` is called with
/// the events handled so far (added or found already there).
pub async fn import(
    path: &Path,
    service: Service,
    target: &dyn LogTransfer,
    mut progress: impl FnMut(u64),
) -> Result<Moved, ArchiveError> {
    check(path, service).await?;
    let mut lines = Lines::open(path).await?;
    let mut copier = Copier::new(target).await?;
    let mut records = Vec::new();
    let mut moved = Moved::default();
    while let Some((number, text)) = lines.next().await? {
        let line: Line = serde_json::from_str(&text).map_err(|e| lines.bad(number, e.to_string()))?;
        match line {
            Line::Event(event) => {
                copier
                    .push(event.into_event().map_err(|e| lines.bad(number, e))?)
                    .await?;
                progress(copier.handled());
            }
            Line::Idempotency(record) => {
                records.push(record.into_record().map_err(|e| lines.bad(number, e))?);
                if records.len() == PAGE {
                    count_records(&mut moved, target, &std::mem::take(&mut records)).await?;
                }
            }
            Line::Header(_) | Line::End(_) => {}
        }
    }
    copier.finish(&mut moved).await?;
    count_records(&mut moved, target, &records).await?;
    Ok(moved)
}

async fn count_records(
    moved: &mut Moved,
    target: &dyn LogTransfer,
    records: &[IdempotencyRecord],
) -> Result<(), ArchiveError> {
    if records.is_empty() {
        return Ok(());
    }
    let new = target.import_idempotency(records).await?;
    moved.idempotency_records += new;
    moved.idempotency_records_already_there += records.len() as u64 - new;
    Ok(())
}

/// Copies `service`'s part of `source` (a store every service shared) into `target`, as an
/// export then an import would, without the file; safe to run again.
pub async fn copy_service(
    source: &dyn LogTransfer,
    service: Service,
    target: &dyn LogTransfer,
    mut progress: impl FnMut(u64),
) -> Result<Moved, ArchiveError> {
    let mut copier = Copier::new(target).await?;
    let mut moved = Moved::default();
    let mut after = 0;
    loop {
        let page = source.read_all(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in page {
            if owned_by(&event.stream_id, service) {
                copier.push(event).await?;
            } else {
                moved.events_of_other_services += 1;
            }
        }
        progress(after);
    }
    copier.finish(&mut moved).await?;
    let mut after_key: Option<String> = None;
    loop {
        let page = source.idempotency_records(after_key.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after_key = Some(last.key.clone());
        let mine: Vec<IdempotencyRecord> = page.into_iter().filter(|r| record_owner(r) == Some(service)).collect();
        count_records(&mut moved, target, &mine).await?;
    }
    Ok(moved)
}

/// Adds a log, event by event in position order, to a target that may already hold its start.
struct Copier<'a> {
    target: &'a dyn LogTransfer,
    /// The target's head when the copy began: events up to it must be there already.
    head: u64,
    /// The target's events up to `head` read so far and not matched yet.
    there: std::collections::VecDeque<RecordedEvent>,
    /// Where reading the target's events continues.
    read_after: u64,
    batch: Vec<RecordedEvent>,
    already_there: u64,
    added: u64,
}

impl<'a> Copier<'a> {
    async fn new(target: &'a dyn LogTransfer) -> Result<Self, ArchiveError> {
        Ok(Copier {
            target,
            head: target.head_position().await?,
            there: std::collections::VecDeque::new(),
            read_after: 0,
            batch: Vec::with_capacity(PAGE),
            already_there: 0,
            added: 0,
        })
    }

    fn handled(&self) -> u64 {
        self.already_there + self.added + self.batch.len() as u64
    }

    /// The target's next event up to its head that `push` has not matched yet.
    async fn next_there(&mut self) -> Result<Option<RecordedEvent>, ArchiveError> {
        if self.there.is_empty() && self.read_after < self.head {
            let page = self.target.read_all(self.read_after, PAGE).await?;
            if let Some(last) = page.last() {
                self.read_after = last.position;
            } else {
                self.read_after = self.head;
            }
            self.there.extend(page.into_iter().filter(|e| e.position <= self.head));
        }
        Ok(self.there.pop_front())
    }

    async fn push(&mut self, event: RecordedEvent) -> Result<(), ArchiveError> {
        if event.position <= self.head {
            let there = self.next_there().await?;
            return match there {
                Some(there) if there.position == event.position && there.event_id == event.event_id => {
                    self.already_there += 1;
                    Ok(())
                }
                Some(there) => Err(ArchiveError::Diverged(format!(
                    "the target already holds other events: at position {} it has event {} of {}, where the log \
                     being imported has event {} of {} at position {}; import into an empty store, or into the \
                     one it was imported into before",
                    there.position, there.event_id, there.stream_id, event.event_id, event.stream_id, event.position
                ))),
                None => Err(ArchiveError::Diverged(format!(
                    "the target's log ends before position {}, which it should hold already",
                    event.position
                ))),
            };
        }
        if self.batch.is_empty() && self.added == 0 {
            // The first event past the target's head: everything the target holds must have
            // been the log's start.
            if let Some(extra) = self.next_there().await? {
                return Err(ArchiveError::Diverged(format!(
                    "the target holds event {} of {} at position {}, which is not in the log being imported; \
                     import into an empty store, or into the one it was imported into before",
                    extra.event_id, extra.stream_id, extra.position
                )));
            }
        }
        self.batch.push(event);
        if self.batch.len() == PAGE {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ArchiveError> {
        if !self.batch.is_empty() {
            self.target.import_events(&self.batch).await?;
            self.added += self.batch.len() as u64;
            self.batch.clear();
        }
        Ok(())
    }

    async fn finish(mut self, moved: &mut Moved) -> Result<(), ArchiveError> {
        self.flush().await?;
        moved.events += self.added;
        moved.events_already_there += self.already_there;
        Ok(())
    }
}
