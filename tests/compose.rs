//! `compose.yaml` is checked here and nowhere else: no Docker engine runs where the tests run, so
//! nothing ever starts it. What can be checked without one is checked: the services and their
//! ports, that every `ORDERFLOW_*` variable a service sets is one its binary reads, health
//! checks, start-up order, the write services' own databases and roles (against
//! `deploy/postgres/init.sql`) and how the orders service reaches the others, the console and
//! the projections' rebuild endpoint it forwards to (its tokens, the stores it reads and their
//! passwords), secrets taken from the environment, and `.env.example`.
//!
//! Which variables a binary reads:
//! - `orderflow` (this package): its `--help`, run from `CARGO_BIN_EXE_orderflow` with the
//!   service's own arguments (e.g. `orderflow projections run --help`), lists `[env: NAME]`.
//! - `write-side`, `read-api` and `console` live in other packages, whose binaries Cargo does
//!   not build for this package's tests (no `CARGO_BIN_EXE_*`), and `cargo run` from a test is
//!   slow and fights for the build lock. Their variables are read instead from the source of
//!   their clap definitions (`env = "NAME"` in `<crate>/src/bin/<name>.rs`, the crate's folder
//!   named as the binary): the same text `--help` is made from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

/// The third-party servers: their own images and health checks, nothing of ours to check.
const SERVERS: &[&str] = &["postgres", "kafka", "clickhouse", "kurrentdb"];

/// orderflow's services and the container port each must publish (the port map of the README:
/// orders 8081, read-api 8082, customers 8083, inventory 8084, payments 8085, the console 8080).
/// The projections' rebuild endpoint (8086) is not published: two replicas cannot share a host
/// port, and only the console calls it.
const SERVICES: &[(&str, Option<u16>)] = &[
    ("customers", Some(8083)),
    ("inventory", Some(8084)),
    ("orders", Some(8081)),
    ("payments", Some(8085)),
    ("projections", None),
    ("read-api", Some(8082)),
    ("console", Some(8080)),
];

/// The port of the projections' rebuild endpoint on the compose network.
const PROJECTIONS_PORT: u16 = 8086;

/// The write services: each is `write-side` with `ORDERFLOW_SERVICE` set to its name.
const WRITE_SERVICES: &[&str] = &["customers", "inventory", "orders", "payments"];

/// The container port of `name` in [`SERVICES`].
fn port_of(name: &str) -> u16 {
    SERVICES
        .iter()
        .find(|(service, _)| *service == name)
        .and_then(|(_, port)| *port)
        .unwrap_or_else(|| panic!("{name} has no port"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn compose_text() -> String {
    read(&root().join("compose.yaml"))
}

fn compose() -> Value {
    serde_norway::from_str(&compose_text()).expect("compose.yaml is valid YAML")
}

fn services(compose: &Value) -> &serde_norway::Mapping {
    compose["services"]
        .as_mapping()
        .expect("compose.yaml has a `services` map")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"))
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => panic!("expected a string, found {other:?}"),
            })
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Null => Vec::new(),
        other => panic!("expected a list of strings, found {other:?}"),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// A service's `environment`, as a map or as a list of `NAME=value`.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(_) => strings(&service["environment"])
            .into_iter()
            .map(|entry| match entry.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (entry, String::new()),
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("expected an environment map or list, found {other:?}"),
    }
}

/// Container ports a service publishes (`[ip:][host:]container[/proto]` or the long syntax).
fn container_ports(service: &Value) -> Vec<u16> {
    let Some(ports) = service["ports"].as_sequence() else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|port| match port {
            Value::Mapping(_) => scalar(&port["target"]),
            other => {
                let spec = scalar(other);
                let last = spec.rsplit(':').next().unwrap_or_default();
                last.split('/').next().unwrap_or_default().to_owned()
            }
        })
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("container port `{p}` is not a number"))
        })
        .collect()
}

/// `NAME` of every `[env: NAME]` / `[env: NAME=value]` in a `--help` text.
fn env_names_in_help(help: &str) -> BTreeSet<String> {
    help.split("env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// `NAME` of every `env = "NAME"` in a clap definition's source.
fn env_names_in_source(source: &str) -> BTreeSet<String> {
    source
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name.to_owned()))
        .collect()
}

/// The environment variables the binary of `command` reads.
fn variables_read_by(command: &[String]) -> BTreeSet<String> {
    let (binary, args) = command.split_first().expect("an orderflow service has a command");
    match binary.as_str() {
        "orderflow" => {
            let output = Command::new(env!("CARGO_BIN_EXE_orderflow"))
                .args(args)
                .arg("--help")
                .output()
                .expect("orderflow runs");
            assert!(output.status.success(), "`orderflow {} --help` failed", args.join(" "));
            let names = env_names_in_help(&String::from_utf8_lossy(&output.stdout));
            assert!(
                !names.is_empty(),
                "`orderflow {} --help` lists no variable",
                args.join(" ")
            );
            names
        }
        "write-side" | "read-api" | "console" => {
            assert!(
                args.is_empty(),
                "`{binary}` takes its configuration from the environment only"
            );
            let path = root().join(binary).join("src/bin").join(format!("{binary}.rs"));
            let source = read(&path);
            let mut names = env_names_in_source(&source);
            assert!(!names.is_empty(), "{} defines no variable", path.display());
            // Flags flattened in from the service kit: the token flags, the in-flight bound.
            if source.contains("AuthArgs") {
                names.extend(env_names_in_source(&read(&root().join("service-kit/src/auth.rs"))));
            }
            if source.contains("LoadArgs") {
                names.extend(env_names_in_source(&read(&root().join("service-kit/src/http/shed.rs"))));
            }
            names
        }
        // The workers' binary takes exactly the flags of `orderflow projections` (it parses the
        // same clap definition, `projections::cli::ProjectionsCommand`).
        "projections" => {
            let mut as_subcommand = vec!["orderflow".to_owned(), "projections".to_owned()];
            as_subcommand.extend(args.iter().cloned());
            variables_read_by(&as_subcommand)
        }
        other => panic!("unknown orderflow binary `{other}`"),
    }
}

#[test]
fn the_orderflow_services_exist_with_their_ports() {
    let compose = compose();
    for (name, port) in SERVICES {
        let service = service(&compose, name);
        let ports = container_ports(service);
        match port {
            Some(port) => assert_eq!(ports, vec![*port], "{name} publishes port {port} only"),
            None => assert!(ports.is_empty(), "{name} has no HTTP port to publish"),
        }
        let build = &service["build"];
        assert_eq!(
            build["context"].as_str(),
            Some("."),
            "{name} is built from this repository"
        );
        assert_eq!(
            build["dockerfile"].as_str(),
            Some("Dockerfile"),
            "{name} uses the Dockerfile"
        );
    }
    let projections = service(&compose, "projections");
    assert_eq!(
        projections["deploy"]["replicas"].as_u64(),
        Some(2),
        "two projection workers"
    );
    assert_eq!(
        strings(&projections["command"]),
        ["projections", "run"],
        "the workers run their own binary, `projections run`"
    );
    assert!(
        environment(projections).contains_key("ORDERFLOW_GROUP_PREFIX"),
        "the replicas set one shared group prefix, so each projection has one consumer group"
    );
    let kurrentdb = service(&compose, "kurrentdb");
    assert_eq!(
        strings(&kurrentdb["profiles"]),
        ["kurrentdb"],
        "KurrentDB runs only on request"
    );
}

#[test]
fn every_orderflow_variable_a_service_sets_is_read_by_its_binary() {
    let compose = compose();
    for (name, _) in SERVICES {
        let service = service(&compose, name);
        let known = variables_read_by(&strings(&service["command"]));
        let set: BTreeSet<String> = environment(service)
            .into_keys()
            .filter(|k| k.starts_with("ORDERFLOW_"))
            .collect();
        assert!(!set.is_empty(), "{name} is configured through ORDERFLOW_* variables");
        let unknown: Vec<&String> = set.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{name} sets variables its binary does not read: {unknown:?}"
        );
    }
}

#[test]
fn the_projections_health_check_uses_a_command_that_exists() {
    // No HTTP port: the health check runs `projections status`, which must exist and read its
    // database from the variables the service sets.
    let compose = compose();
    let projections = service(&compose, "projections");
    let test = strings(&projections["healthcheck"]["test"]).join(" ");
    assert!(test.contains("projections status"), "{test}");
    let known = variables_read_by(&["projections".to_owned(), "status".to_owned()]);
    assert!(known.contains("ORDERFLOW_READ_DB_URL"));
    assert!(environment(projections).contains_key("ORDERFLOW_READ_DB_URL"));
}

#[test]
fn every_service_has_a_health_check_and_ours_wait_for_healthy_dependencies() {
    let compose = compose();
    let all = services(&compose);
    let names: BTreeSet<String> = all.keys().map(scalar).collect();
    let expected: BTreeSet<String> = SERVERS
        .iter()
        .chain(SERVICES.iter().map(|(name, _)| name))
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(names, expected, "the services of the distributed deployment");

    for (name, service) in all {
        let name = scalar(name);
        let test = strings(&service["healthcheck"]["test"]);
        assert!(
            matches!(test.first().map(String::as_str), Some("CMD" | "CMD-SHELL")) && test.len() >= 2,
            "{name} has a health check, found {test:?}"
        );
        if SERVERS.contains(&name.as_str()) {
            continue;
        }
        let depends_on = service["depends_on"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name} lists its dependencies with conditions"));
        assert!(!depends_on.is_empty(), "{name} depends on servers");
        for (dependency, spec) in depends_on {
            let dependency = scalar(dependency);
            assert!(names.contains(&dependency), "{name} depends on unknown `{dependency}`");
            assert_eq!(
                spec["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {dependency} to be healthy"
            );
            assert!(
                all[dependency.as_str()]["profiles"].is_null(),
                "{name} depends on `{dependency}`, which runs only in a profile"
            );
        }
        // The runtime image has curl; a /ready or /health check must hit the port the service
        // listens on.
        let test = test.join(" ");
        for path in ["/ready", "/health"] {
            if test.contains(path) {
                let port = container_ports(service)[0];
                assert!(test.contains(&format!("127.0.0.1:{port}{path}")), "{name}: {test}");
            }
        }
    }
}

#[test]
fn secrets_come_from_the_environment() {
    let compose = compose();
    for (name, service) in services(&compose) {
        let name = scalar(name);
        for (key, value) in environment(service) {
            // Passwords, the bearer-token hashes and the orders service's bearer secret.
            if key.contains("PASSWORD") || key.contains("TOKEN") {
                assert!(
                    value.starts_with("${") && value.ends_with('}') && value.contains(":?"),
                    "{name}: {key} must be `${{VAR:?...}}`, found `{value}`"
                );
            }
            // A URL with credentials: the password part is a required variable, or (no password
            // in the URL) it comes from a pgpass file that compose makes from required variables.
            if let Some((userinfo, _)) = value.split_once("://").and_then(|(_, rest)| rest.split_once('@')) {
                match userinfo.split_once(':') {
                    Some((_, password)) => assert!(
                        password.starts_with("${") && password.ends_with('}') && password.contains(":?"),
                        "{name}: the password in {key} must be `${{VAR:?...}}`"
                    ),
                    None => {
                        let lines = pgpass_of(&compose, &name)
                            .unwrap_or_else(|| panic!("{name}: {key} has no password and no pgpass file"));
                        for (_, _, password) in lines {
                            assert!(
                                password.starts_with("${") && password.ends_with('}') && password.contains(":?"),
                                "{name}: a password of its pgpass file must be `${{VAR:?...}}`"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `NAME` of every `${NAME...}` in compose.yaml, and whether it is required (`${NAME:?...}`).
fn compose_variables(text: &str) -> BTreeMap<String, bool> {
    let mut variables = BTreeMap::new();
    for rest in text.split("${").skip(1) {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let required = rest[name.len()..].starts_with(":?");
        *variables.entry(name).or_insert(false) |= required;
    }
    variables
}

#[test]
fn env_example_lists_every_variable() {
    let example = read(&root().join(".env.example"));
    let set: BTreeSet<&str> = example
        .lines()
        .filter_map(|line| line.trim().split_once('=').map(|(k, _)| k.trim()))
        .filter(|k| !k.starts_with('#'))
        .collect();
    let mentioned: BTreeSet<&str> = example
        .lines()
        .filter_map(|line| {
            line.trim()
                .trim_start_matches('#')
                .trim()
                .split_once('=')
                .map(|(k, _)| k.trim())
        })
        .collect();
    for (name, required) in compose_variables(&compose_text()) {
        if required {
            assert!(set.contains(name.as_str()), ".env.example sets required `{name}`");
        } else {
            assert!(
                mentioned.contains(name.as_str()),
                ".env.example mentions optional `{name}`"
            );
        }
    }
}

#[test]
fn mounted_files_exist() {
    let compose = compose();
    let mut mounted = 0;
    for (name, service) in services(&compose) {
        let Some(volumes) = service["volumes"].as_sequence() else {
            continue;
        };
        for volume in volumes.iter().map(scalar) {
            if let Some(path) = volume.split(':').next().filter(|p| p.starts_with("./")) {
                assert!(root().join(path).is_file(), "{}: {path} exists", scalar(name));
                mounted += 1;
            }
        }
    }
    assert_eq!(mounted, 2, "PostgreSQL's init.sql and ClickHouse's reader.xml");
    let init = read(&root().join("deploy/postgres/init.sql"));
    for needle in [
        "CREATE DATABASE orderflow_customers OWNER customers",
        "CREATE DATABASE orderflow_inventory OWNER inventory",
        "CREATE DATABASE orderflow_orders OWNER orders",
        "CREATE DATABASE orderflow_orders_replica OWNER orders",
        "CREATE DATABASE orderflow_payments OWNER payments",
        "CREATE DATABASE orderflow_read OWNER projections",
        "GRANT SELECT ON TABLES TO reader",
    ] {
        assert!(init.contains(needle), "init.sql: {needle}");
    }
}

/// init.sql's statements, one per entry, without comments and psql's meta-commands.
fn init_statements() -> Vec<String> {
    let init = read(&root().join("deploy/postgres/init.sql"));
    let text: String = init
        .lines()
        .filter(|line| !line.trim_start().starts_with("--") && !line.trim_start().starts_with('\\'))
        .map(|line| format!("{line}\n"))
        .collect();
    text.split(';')
        .map(|statement| statement.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|statement| !statement.is_empty())
        .collect()
}

/// Who may connect to each database of init.sql: its owner and the roles granted CONNECT. Fails
/// on a database that PUBLIC may still connect to.
fn database_access() -> BTreeMap<String, BTreeSet<String>> {
    let statements = init_statements();
    let mut access: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for statement in &statements {
        let words: Vec<&str> = statement.split(' ').collect();
        match words.as_slice() {
            ["CREATE", "DATABASE", database, "OWNER", owner] => {
                access
                    .entry((*database).to_owned())
                    .or_default()
                    .insert((*owner).to_owned());
                assert!(
                    statements.contains(&format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC")),
                    "init.sql: PUBLIC may connect to {database}"
                );
            }
            ["GRANT", privileges @ .., "ON", "DATABASE", database, "TO", role]
                if privileges.join(" ").contains("CONNECT") =>
            {
                access
                    .entry((*database).to_owned())
                    .or_default()
                    .insert((*role).to_owned());
            }
            _ => {}
        }
    }
    access
}

/// The lines of the pgpass file a service reads (its `PGPASSFILE`, the target of one of its
/// `configs`, whose inline content compose writes), as `(database, role, password)`; `None`
/// without one.
fn pgpass_of(compose: &Value, name: &str) -> Option<Vec<(String, String, String)>> {
    let service = service(compose, name);
    let path = environment(service).remove("PGPASSFILE")?;
    let config = service["configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|config| config["target"].as_str() == Some(path.as_str()))
        .unwrap_or_else(|| panic!("{name}: PGPASSFILE {path} is none of its configs' targets"));
    // Copied in owned by the image's user and readable by it alone: sqlx and libpq ignore a
    // pgpass file that others may read.
    assert_eq!(
        scalar(&config["uid"]),
        "10001",
        "{name}: {path} belongs to the image's user"
    );
    assert!(
        matches!(scalar(&config["mode"]).as_str(), "256" | "0o400" | "0400"),
        "{name}: {path} is mode 400"
    );
    let source = scalar(&config["source"]);
    let content = compose["configs"][source.as_str()]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: config {source} has no inline content"))
        .to_owned();
    Some(
        content
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|line| {
                // host:port:database:role:password; the password (a `${VAR:?message}`) may hold
                // colons of its own.
                let fields: Vec<&str> = line.splitn(5, ':').collect();
                assert!(
                    fields.len() == 5,
                    "{name}: `{line}` is not host:port:database:role:password"
                );
                assert_eq!(
                    (fields[0], fields[1]),
                    ("postgres", "5432"),
                    "{name}: the compose PostgreSQL"
                );
                (fields[2].to_owned(), fields[3].to_owned(), fields[4].to_owned())
            })
            .collect(),
    )
}

/// The URLs a URL template names: each write service's for a `{service}` template, else itself.
fn expand(url: &str) -> Vec<String> {
    if url.contains("{service}") {
        WRITE_SERVICES
            .iter()
            .map(|service| url.replace("{service}", service))
            .collect()
    } else {
        vec![url.to_owned()]
    }
}

/// `(role, database)` of a `postgres://role:password@host:port/database` URL.
fn role_and_database(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("postgres://")?;
    let (userinfo, location) = rest.split_once('@')?;
    let role = userinfo.split_once(':').map_or(userinfo, |(role, _)| role);
    let (host, database) = location.split_once('/')?;
    assert_eq!(host, "postgres:5432", "{url}: the compose PostgreSQL");
    Some((
        role.to_owned(),
        database.split('?').next().unwrap_or_default().to_owned(),
    ))
}

#[test]
fn each_write_service_is_write_side_on_its_own_port_and_its_own_database() {
    let compose = compose();
    let mut stores = BTreeSet::new();
    for name in WRITE_SERVICES {
        let service = service(&compose, name);
        assert_eq!(
            strings(&service["command"]),
            ["write-side"],
            "{name}: one image, one binary"
        );
        let env = environment(service);
        assert_eq!(env["ORDERFLOW_SERVICE"], *name, "{name} runs the {name} service");
        let port = port_of(name);
        assert_eq!(
            env["ORDERFLOW_WRITE_LISTEN"],
            format!("0.0.0.0:{port}"),
            "{name} listens on the port it publishes"
        );
        let (role, database) = role_and_database(&env["ORDERFLOW_EVENT_STORE_URL"])
            .unwrap_or_else(|| panic!("{name}: its event store is a postgres:// URL with a role"));
        assert_eq!(
            (role.as_str(), database.as_str()),
            (*name, format!("orderflow_{name}").as_str()),
            "{name}: its own event store, as its own role"
        );
        assert!(stores.insert(database), "{name} shares an event store");
        // The relay of each store runs in the service's process: nothing else publishes it.
        assert_eq!(env["ORDERFLOW_KAFKA_BROKERS"], "kafka:19092", "{name}");
        assert!(
            !env.contains_key("ORDERFLOW_NO_RELAY"),
            "{name}: its relay runs in its process"
        );
        assert!(
            !env.contains_key("ORDERFLOW_NO_AUTH"),
            "{name}: authentication stays on"
        );
        let depends_on = service["depends_on"].as_mapping().expect("dependencies");
        for server in ["postgres", "kafka"] {
            assert!(depends_on.contains_key(server), "{name} waits for {server}");
        }
    }
    // Only the orders service calls others, and only it has a copy of their data.
    for name in ["customers", "inventory", "payments"] {
        let env = environment(service(&compose, name));
        for key in [
            "ORDERFLOW_INVENTORY_URL",
            "ORDERFLOW_CUSTOMERS_URL",
            "ORDERFLOW_SERVICE_TOKEN",
            "ORDERFLOW_REPLICA_DB_URL",
        ] {
            assert!(!env.contains_key(key), "{name} sets {key}, which only orders needs");
        }
    }
}

#[test]
fn every_database_url_is_one_its_role_may_connect_to_and_no_other_role_may() {
    let access = database_access();
    for (database, owner) in [
        ("orderflow_customers", "customers"),
        ("orderflow_inventory", "inventory"),
        ("orderflow_orders", "orders"),
        ("orderflow_orders_replica", "orders"),
        ("orderflow_payments", "payments"),
    ] {
        assert_eq!(
            access
                .get(database)
                .map(|roles| roles.iter().map(String::as_str).collect::<Vec<_>>()),
            Some(vec![owner]),
            "init.sql: only {owner} may connect to {database}"
        );
    }
    assert_eq!(
        access["orderflow_read"],
        BTreeSet::from(["projections".to_owned(), "reader".to_owned()]),
        "init.sql: the projections and read-api's reader only"
    );
    let compose = compose();
    let mut urls = 0;
    for (name, service) in services(&compose) {
        let name = scalar(name);
        for (key, value) in environment(service) {
            for url in expand(&value) {
                let Some((role, database)) = role_and_database(&url) else {
                    continue;
                };
                urls += 1;
                let allowed = access
                    .get(&database)
                    .unwrap_or_else(|| panic!("{name}: {key} names {database}, which init.sql does not create"));
                assert!(
                    allowed.contains(&role),
                    "{name}: {key}: {role} may not connect to {database}"
                );
            }
        }
    }
    assert_eq!(
        urls, 11,
        "four event stores, the orders' copy, the projections', read-api's, and the four stores \
         the projections' rebuilds read"
    );
    // Every password init.sql reads is one the postgres service is given.
    let postgres = environment(service(&compose, "postgres"));
    let init = read(&root().join("deploy/postgres/init.sql"));
    let read_by_init: Vec<&str> = init
        .lines()
        .filter_map(|line| line.strip_prefix("\\getenv "))
        .filter_map(|rest| rest.split_whitespace().nth(1))
        .collect();
    assert_eq!(read_by_init.len(), 6, "a password for each role of init.sql");
    for variable in read_by_init {
        assert!(postgres.contains_key(variable), "postgres is not given {variable}");
    }
}

#[test]
fn orders_reaches_inventory_payments_and_customers_with_a_token_they_grant() {
    let compose = compose();
    let orders = service(&compose, "orders");
    let env = environment(orders);
    // Its saga reserves and releases stock at inventory and authorizes, captures, voids and
    // refunds payments at payments: scope `service` there (ADR 0010); a customer its copy has
    // not seen yet is asked of customers: `commands` is enough there.
    for (key, peer, scope) in [
        ("ORDERFLOW_INVENTORY_URL", "inventory", "commands+service"),
        ("ORDERFLOW_PAYMENTS_URL", "payments", "commands+service"),
        ("ORDERFLOW_CUSTOMERS_URL", "customers", "commands"),
    ] {
        assert_eq!(
            env.get(key).map(String::as_str),
            Some(format!("http://{peer}:{}", port_of(peer)).as_str()),
            "orders: {key}"
        );
        let depends_on = &orders["depends_on"];
        assert_eq!(
            depends_on[peer]["condition"].as_str(),
            Some("service_healthy"),
            "orders starts once {peer} is healthy"
        );
        // The service token's hash is one of the peer's tokens, with the scopes it needs there
        // (and no more: it is not an operator's token, no `admin`).
        let tokens = &environment(service(&compose, peer))["ORDERFLOW_TOKENS"];
        let granted: Vec<&str> = tokens.split(',').collect();
        let expected =
            format!("orders:{scope}:${{ORDERFLOW_SERVICE_TOKEN_SHA256:?set ORDERFLOW_SERVICE_TOKEN_SHA256 in .env}}");
        assert!(
            granted.contains(&expected.as_str()),
            "{peer} grants the orders service's token scope `{scope}`: {tokens}"
        );
        let orders_grants: Vec<&&str> = granted.iter().filter(|t| t.starts_with("orders:")).collect();
        assert_eq!(
            orders_grants.len(),
            1,
            "{peer}: one grant to the orders service: {tokens}"
        );
    }
    assert!(
        env["ORDERFLOW_SERVICE_TOKEN"].starts_with("${ORDERFLOW_SERVICE_TOKEN:?"),
        "orders sends the secret whose hash the others grant"
    );
    assert!(
        env.contains_key("ORDERFLOW_SERVICE_TIMEOUT_MS"),
        "a call to another service is bounded"
    );
    let (role, database) = role_and_database(&env["ORDERFLOW_REPLICA_DB_URL"]).expect("a postgres:// URL");
    assert_eq!(
        (role.as_str(), database.as_str()),
        ("orders", "orderflow_orders_replica"),
        "orders keeps its copy in a database of its own, apart from its event store"
    );
    assert!(
        !env["ORDERFLOW_REPLICA_GROUP"].is_empty()
            && env["ORDERFLOW_REPLICA_GROUP"]
                != environment(service(&compose, "projections"))["ORDERFLOW_GROUP_PREFIX"],
        "the copy has a consumer group of its own"
    );
}

#[test]
fn the_read_side_starts_after_every_write_service() {
    let compose = compose();
    // The relays create the topics, and a read may wait for any service's token.
    let projections = &service(&compose, "projections")["depends_on"];
    for name in WRITE_SERVICES {
        assert_eq!(
            projections[*name]["condition"].as_str(),
            Some("service_healthy"),
            "projections wait for {name}"
        );
    }
    let read_api = &service(&compose, "read-api")["depends_on"];
    assert_eq!(read_api["projections"]["condition"].as_str(), Some("service_healthy"));
}

#[test]
fn the_header_comment_maps_every_service_and_port() {
    let text = compose_text();
    let header: Vec<&str> = text.lines().take_while(|line| line.starts_with('#')).collect();
    for (name, port) in SERVICES {
        let line = header
            .iter()
            .find(|line| {
                line.trim_start_matches('#')
                    .trim_start()
                    .starts_with(&format!("{name} "))
            })
            .unwrap_or_else(|| panic!("the header comment has no line for {name}"));
        if let Some(port) = port {
            assert!(line.contains(&format!("(:{port})")), "{line}: port {port}");
        }
    }
    for server in SERVERS {
        assert!(
            header.iter().any(|line| line
                .trim_start_matches('#')
                .trim_start()
                .starts_with(&format!("{server} "))),
            "the header comment has no line for {server}"
        );
    }
}

#[test]
fn the_projections_serve_rebuilds_reading_each_store_as_its_own_role() {
    let compose = compose();
    let projections = service(&compose, "projections");
    let env = environment(projections);
    assert_eq!(
        env["ORDERFLOW_PROJECTIONS_LISTEN"],
        format!("0.0.0.0:{PROJECTIONS_PORT}"),
        "the rebuild endpoint listens on the compose network"
    );
    // One template, each service's store as that service's role; the passwords in a pgpass
    // file, one line per store, each the password its service's own URL has.
    let template = &env["ORDERFLOW_EVENT_STORE_URL"];
    assert_eq!(
        template, "postgres://{service}@postgres:5432/orderflow_{service}",
        "every service's store through one template, no password in it"
    );
    let mut pgpass = pgpass_of(&compose, "projections").expect("the projections read a pgpass file");
    pgpass.sort();
    let mut expected = Vec::new();
    for name in WRITE_SERVICES {
        let url = &environment(service(&compose, name))["ORDERFLOW_EVENT_STORE_URL"];
        let password = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password.to_owned())
            .unwrap_or_else(|| panic!("{name}: a password in its URL"));
        expected.push((format!("orderflow_{name}"), (*name).to_owned(), password));
    }
    expected.sort();
    assert_eq!(
        pgpass, expected,
        "the projections' pgpass: each store, its role, its password"
    );
    // A rebuild needs `admin`: the operators' tokens; the console's read-only one is known, to
    // be refused with 403.
    assert_eq!(
        env["ORDERFLOW_TOKENS"],
        "${ORDERFLOW_TOKENS:?set ORDERFLOW_TOKENS in .env},\
         console:read:${ORDERFLOW_READ_TOKEN_SHA256:?set ORDERFLOW_READ_TOKEN_SHA256 in .env}"
    );
    assert!(
        !env.contains_key("ORDERFLOW_NO_AUTH"),
        "the rebuild endpoint's authentication stays on"
    );
}

#[test]
fn the_console_forwards_to_the_compose_services_and_they_grant_its_read_token() {
    let compose = compose();
    let console = service(&compose, "console");
    assert_eq!(strings(&console["command"]), ["console"], "one image, one binary");
    let env = environment(console);
    assert_eq!(
        env["ORDERFLOW_CONSOLE_LISTEN"],
        format!("0.0.0.0:{}", port_of("console")),
        "the console listens on the port it publishes"
    );
    for (key, upstream, port) in [
        ("ORDERFLOW_CONSOLE_READ_API_URL", "read-api", port_of("read-api")),
        ("ORDERFLOW_CONSOLE_PROJECTIONS_URL", "projections", PROJECTIONS_PORT),
        ("ORDERFLOW_CONSOLE_CUSTOMERS_URL", "customers", port_of("customers")),
        ("ORDERFLOW_CONSOLE_INVENTORY_URL", "inventory", port_of("inventory")),
        ("ORDERFLOW_CONSOLE_ORDERS_URL", "orders", port_of("orders")),
        ("ORDERFLOW_CONSOLE_PAYMENTS_URL", "payments", port_of("payments")),
    ] {
        assert_eq!(
            env.get(key).map(String::as_str),
            Some(format!("http://{upstream}:{port}").as_str()),
            "console: {key}"
        );
        assert_eq!(
            console["depends_on"][upstream]["condition"].as_str(),
            Some("service_healthy"),
            "the console starts once {upstream} is healthy"
        );
    }
    // It holds no credential: the browser's token goes through.
    assert!(
        !env.keys().any(|key| key.contains("TOKEN") || key.contains("PASSWORD")),
        "the console holds no credential: {env:?}"
    );
    // Every write service grants the read-only token scope `read`, and nothing more.
    let read_token = "console:read:${ORDERFLOW_READ_TOKEN_SHA256:?set ORDERFLOW_READ_TOKEN_SHA256 in .env}";
    for name in WRITE_SERVICES {
        let tokens = &environment(service(&compose, name))["ORDERFLOW_TOKENS"];
        let granted: Vec<&str> = tokens.split(',').filter(|t| t.starts_with("console:")).collect();
        assert_eq!(
            granted,
            [read_token],
            "{name} grants the console's read token scope read only"
        );
    }
}
