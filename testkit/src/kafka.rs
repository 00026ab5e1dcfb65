//! The Kafka-protocol broker of `scripts/services`: its address, and a fresh topic and consumer
//! group per test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

/// How long a helper waits for the broker before it fails the test.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// The broker's bootstrap servers: `ORDERFLOW_TEST_KAFKA`, or the loopback broker of
/// `scripts/services`.
pub fn bootstrap_servers() -> String {
    std::env::var("ORDERFLOW_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    crate::unique_name(prefix)
}

/// A consumer group id no other test uses.
pub fn unique_group(prefix: &str) -> String {
    crate::unique_name(prefix)
}

/// A client configuration with only `bootstrap.servers` set; tests add what they need.
pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers());
    config
}

/// Creates `name` with `partitions` partitions (replication factor 1) and waits until the
/// broker's metadata shows every partition with a leader, so a producer or consumer started next
/// does not race the creation.
///
/// Panics with a message naming [`crate::START_SERVICES`] when the broker cannot be reached.
pub async fn create_topic(name: &str, partitions: i32) {
    let servers = bootstrap_servers();
    ensure_reachable(&servers).await;

    let admin: AdminClient<DefaultClientContext> = client_config()
        .create()
        .unwrap_or_else(|e| panic!("create a Kafka admin client for {servers}: {e}"));
    let admin = Arc::new(admin);
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT));
    let results = match tokio::time::timeout(BROKER_TIMEOUT, admin.create_topics([&topic], &options)).await {
        Ok(Ok(results)) => results,
        Ok(Err(e)) => panic!(
            "create topic {name} on the Kafka broker at {servers}: {e}\nstart it with `{}`",
            crate::START_SERVICES
        ),
        Err(_) => panic!(
            "the Kafka broker at {servers} did not create topic {name} in {} s\nstart it with `{}`",
            BROKER_TIMEOUT.as_secs(),
            crate::START_SERVICES
        ),
    };
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("create topic {topic} on {servers}: {code}"),
        }
    }

    let topic = name.to_owned();
    tokio::task::spawn_blocking(move || wait_for_leaders(&admin, &topic, partitions))
        .await
        .unwrap_or_else(|e| panic!("wait for the partitions of topic {name}: {e}"));
}

/// Fails the test early, with the command to run, when no bootstrap server accepts a TCP
/// connection: librdkafka itself would only retry until its own timeouts expire.
async fn ensure_reachable(servers: &str) {
    for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let connect = tokio::net::TcpStream::connect(server);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), connect).await {
            return;
        }
    }
    panic!(
        "cannot reach the Kafka broker at {servers} (ORDERFLOW_TEST_KAFKA)\nstart it with `{}`",
        crate::START_SERVICES
    );
}

/// Blocks until the metadata of `topic` lists `partitions` partitions, each with a leader.
fn wait_for_leaders(admin: &AdminClient<DefaultClientContext>, topic: &str, partitions: i32) {
    let deadline = Instant::now() + BROKER_TIMEOUT;
    let mut last = String::from("no metadata yet");
    while Instant::now() < deadline {
        match admin.inner().fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => {
                let ready = metadata.topics().iter().find(|t| t.name() == topic).map(|t| {
                    t.error().is_none()
                        && t.partitions().len() == usize::try_from(partitions).unwrap_or(0)
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                });
                if ready == Some(true) {
                    return;
                }
                last = format!("topic {topic} not ready in metadata: {ready:?}");
            }
            Err(e) => last = format!("fetch metadata: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "topic {topic} did not get {partitions} partitions with leaders in {} s: {last}",
        BROKER_TIMEOUT.as_secs()
    );
}

/// A broker of one test's own, on a free loopback port, for tests that pause their broker: the
/// shared one of `scripts/services` must keep serving every other test. Stopped when dropped.
pub struct PrivateBroker {
    child: tokio::process::Child,
    pid: u32,
    bootstrap: String,
}

/// Where `scripts/services up` builds tansu (`ORDERFLOW_TANSU_BIN` overrides it).
pub fn tansu_binary() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("ORDERFLOW_TANSU_BIN") {
        return path.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    std::path::PathBuf::from(home).join(".cache/orderflow/tansu-0.6.0/bin/tansu")
}

/// Starts a tansu broker (memory storage) on a free port and waits until it accepts connections.
pub async fn private_broker() -> PrivateBroker {
    let binary = tansu_binary();
    assert!(
        binary.exists(),
        "no tansu binary at {} (ORDERFLOW_TANSU_BIN)\nbuild it with `{}`",
        binary.display(),
        crate::START_SERVICES
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("find a free port: {e}"));
    let url = format!("tcp://127.0.0.1:{port}");
    let child = tokio::process::Command::new(&binary)
        .args([
            "broker",
            "--cluster-id",
            "orderflow-private",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let pid = child.id().unwrap_or_else(|| panic!("tansu exited at once"));
    let bootstrap = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + BROKER_TIMEOUT;
    while tokio::net::TcpStream::connect(&bootstrap).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "private tansu on {bootstrap} did not listen in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    PrivateBroker { child, pid, bootstrap }
}

impl PrivateBroker {
    /// Its `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing answers, like a broker
    /// stuck in a long pause. Its memory storage survives, unlike a restart.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill {signal} {}: {e}", self.pid));
        assert!(status.success(), "kill {signal} {} failed", self.pid);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // SIGKILL ends a paused process too.
        let _ = self.child.start_kill();
    }
}
