//! The configuration file every orderflow program reads: one TOML format, read before the
//! command line is parsed.
//!
//! # The format
//!
//! Keys are the programs' long flag names (`--database-url` → `database-url = "postgres://..."`);
//! a repeatable flag takes an array (`token = ["a:commands:…", "b:admin:…"]`). Where a key goes:
//!
//! - in a section named after the program: `[write-side]`, `[read-api]`, `[orderflow]` (the
//!   last applies to every `orderflow` subcommand that has the flag);
//! - for `orderflow`, also in a section per subcommand, `[relay]`, `[serve]`, `[projections]`,
//!   ..., and per sub-subcommand, `[projections.run]`, `[bench.store]`;
//! - at the top of the file, outside any section: for every program that reads the file, so each
//!   of them must know the key (fine in a file of one service; in a file shared by the whole
//!   deployment, keep keys in sections).
//!
//! The most specific section wins: `[projections.run]` over `[projections]` over `[orderflow]`
//! over the top level. Across sources, clap decides as always: a flag on the command line over
//! its environment variable over the file over the built-in default.
//!
//! Strict, so that a typo never passes silently: a key that is no flag of the program (for a
//! section, of that subcommand or the subcommands beneath it) is an error naming the key, the
//! section and the file; so is a section that is neither this program's, nor one of its
//! subcommands, nor another program's ([`SECTIONS`]). Another program's sections are left to
//! that program to check. A bad value is clap's own error, naming the flag.
//!
//! # How
//!
//! [`try_parse_from`] finds `--config FILE` (or [`CONFIG_ENV`]) in the arguments before clap
//! parses them, loads the file ([`ConfigFile`]), and makes each key the default value of the
//! flag of that name in the clap [`Command`] (`Command::mut_args`, marked not required), then
//! parses. The process environment is never modified.
//!
//! # Secrets
//!
//! Nothing here logs or prints a value. Errors name a key, a section and the file, never a
//! value; a TOML syntax error gives its line and column but not the line (toml's own message
//! quotes it). `--help` shows a value from the file as the flag's default, except for the flags
//! whose environment value is hidden (`hide_env_values`: URLs with passwords, tokens,
//! passwords). [`ConfigFile`]'s `Debug` shows keys, not values.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, Command, CommandFactory, FromArgMatches, Subcommand};
use toml::{Table, Value};

/// The flag every program takes: `--config FILE`.
pub const CONFIG_FLAG: &str = "config";
/// The environment variable of `--config`.
pub const CONFIG_ENV: &str = "ORDERFLOW_CONFIG";

/// Every section a configuration file may hold at its top level: one per program, and one per
/// `orderflow` subcommand. A program checks its own sections and skips the others' (whose
/// keys it cannot know); a name outside this list is a typo. `orderflow` checks that each of
/// its subcommands is listed.
pub const SECTIONS: &[&str] = &[
    "orderflow",
    "write-side",
    "read-api",
    "console",
    "serve",
    "demo",
    "relay",
    "projections",
    "state",
    "events",
    "migrate",
    "export",
    "import",
    "split-store",
    "bench",
];

/// Why a configuration file cannot be used. Every variant is the operator's to fix in the file
/// (or in the `--config` path); none holds a value from the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read (missing, not readable, not UTF-8).
    #[error("cannot read the configuration file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{} is not valid TOML: line {line}, column {column}: {message}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key that is no flag of its section's program or subcommand.
    #[error(
        "unknown key `{key}` {} of {}: not a flag of `{command}`{}",
        section_label(.section.as_deref()), .path.display(), did_you_mean(.suggestion.as_deref())
    )]
    UnknownKey {
        path: PathBuf,
        /// `None`: the top of the file.
        section: Option<String>,
        key: String,
        /// The command whose flags (and its subcommands') the key was looked for in.
        command: String,
        /// The closest known key.
        suggestion: Option<String>,
    },
    /// A section that is neither a program's nor a subcommand's.
    #[error("unknown section [{section}] in {}; here a section is one of: {}", .path.display(), .known.join(", "))]
    UnknownSection {
        path: PathBuf,
        section: String,
        /// The sections allowed where this one is, as `[name]`.
        known: Vec<String>,
    },
    /// A value of the wrong shape for its flag (an array for a flag that takes one value, a
    /// table, an array of arrays).
    #[error("key `{key}` {} of {}: {reason}", section_label(.section.as_deref()), .path.display())]
    InvalidValue {
        path: PathBuf,
        section: Option<String>,
        key: String,
        reason: String,
    },
}

fn section_label(section: Option<&str>) -> String {
    match section {
        Some(section) => format!("in [{section}]"),
        None => "at the top level".to_owned(),
    }
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

impl ConfigError {
    /// The clap error kind this becomes on the command line.
    fn kind(&self) -> ErrorKind {
        match self {
            ConfigError::Read { .. } => ErrorKind::Io,
            ConfigError::UnknownKey { .. } | ConfigError::UnknownSection { .. } => ErrorKind::UnknownArgument,
            ConfigError::Syntax { .. } | ConfigError::InvalidValue { .. } => ErrorKind::InvalidValue,
        }
    }

    /// The message with its causes, as one line.
    fn message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    }
}

/// A loaded configuration file.
#[derive(Clone)]
pub struct ConfigFile {
    path: PathBuf,
    table: Table,
}

/// Keys only (`relay.database-url`): the values may be secrets.
impl fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn keys(table: &Table, prefix: &str, out: &mut Vec<String>) {
            for (key, value) in table {
                let dotted = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match value {
                    Value::Table(nested) => keys(nested, &dotted, out),
                    _ => out.push(dotted),
                }
            }
        }
        let mut all = Vec::new();
        keys(&self.table, "", &mut all);
        f.debug_struct("ConfigFile")
            .field("path", &self.path)
            .field("keys", &all)
            .finish()
    }
}

/// What the file sets: per command path (subcommand names from the program), arg id → values.
type Plan = BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>;

/// Whether the keys every part of the program shares (the top of the file, `[program]`) must all
/// be flags of the command being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shared {
    Checked,
    /// The command is one part of the program: keys of the other parts are left alone.
    Partly,
}

/// One table whose keys apply at a level, with its section name for messages.
#[derive(Clone, Copy)]
struct Layer<'a> {
    table: &'a Table,
    section: Option<&'a str>,
}

impl ConfigFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`, the content of the file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let table = text.parse::<Table>().map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |span| line_and_column(text, span.start));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        Ok(ConfigFile {
            path: path.to_owned(),
            table,
        })
    }

    /// The file's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the file against `command`, the clap definition of the program whose own section
    /// is `program` (`"write-side"`, `"orderflow"`, ...), and makes each key that applies the
    /// default value of its flag.
    pub fn apply(&self, command: Command, program: &str) -> Result<Command, ConfigError> {
        let plan = self.plan(&command, program, Shared::Checked)?;
        Ok(set_defaults(command, &[], &plan))
    }

    /// [`Self::apply`] for `command`, a part of `program` run on its own (a binary that is one of
    /// its subcommands): the keys at the top of the file and in `[program]` may belong to the
    /// rest of the program, so those this part does not know are left alone; its own sections
    /// are checked as strictly as ever.
    pub fn apply_to_part(&self, command: Command, program: &str) -> Result<Command, ConfigError> {
        let plan = self.plan(&command, program, Shared::Partly)?;
        Ok(set_defaults(command, &[], &plan))
    }

    fn plan(&self, command: &Command, program: &str, shared: Shared) -> Result<Plan, ConfigError> {
        let mut own = None;
        let mut sections = BTreeMap::new();
        for (key, value) in &self.table {
            let Value::Table(table) = value else { continue };
            if key == program {
                own = Some(table);
            } else if subcommand(command, key).is_some() {
                sections.insert(key.as_str(), table);
            } else if !SECTIONS.contains(&key.as_str()) {
                let mut known: BTreeSet<&str> = SECTIONS.iter().copied().collect();
                known.extend(subcommand_names(command));
                return Err(ConfigError::UnknownSection {
                    path: self.path.clone(),
                    section: key.clone(),
                    known: known.into_iter().map(|s| format!("[{s}]")).collect(),
                });
            }
        }
        let name = command.get_name();
        if shared == Shared::Checked {
            self.check_keys(&self.table, command, None, name)?;
        }
        let mut layers = vec![Layer {
            table: &self.table,
            section: None,
        }];
        if let Some(own) = own {
            if let Some((key, _)) = own.iter().find(|(_, v)| v.is_table()) {
                // One way to write it: subcommands' sections are at the top level.
                let known = subcommand_names(command).map(|s| format!("[{s}]")).collect();
                return Err(ConfigError::UnknownSection {
                    path: self.path.clone(),
                    section: format!("{program}.{key}"),
                    known,
                });
            }
            if shared == Shared::Checked {
                self.check_keys(own, command, Some(program), name)?;
            }
            layers.push(Layer {
                table: own,
                section: Some(program),
            });
        }
        let mut plan = Plan::new();
        self.walk(command, name, &[], &layers, &sections, &mut plan)?;
        Ok(plan)
    }

    /// Every plain key of `table` (its sub-tables are sections, checked elsewhere) must be a
    /// flag of `command` (called `name` in messages) or of a subcommand beneath it.
    fn check_keys(
        &self,
        table: &Table,
        command: &Command,
        section: Option<&str>,
        name: &str,
    ) -> Result<(), ConfigError> {
        let known = flags_beneath(command);
        match table
            .iter()
            .find(|(key, value)| !value.is_table() && !known.contains(key.as_str()))
        {
            None => Ok(()),
            Some((key, _)) => Err(ConfigError::UnknownKey {
                path: self.path.clone(),
                section: section.map(str::to_owned),
                key: key.clone(),
                command: name.to_owned(),
                suggestion: closest(key, &known),
            }),
        }
    }

    /// Collects the values for `command` (at `path` below the program `root`) from `layers`,
    /// innermost first, then goes down into its subcommands with their sections.
    fn walk(
        &self,
        command: &Command,
        root: &str,
        path: &[String],
        layers: &[Layer<'_>],
        sections: &BTreeMap<&str, &Table>,
        plan: &mut Plan,
    ) -> Result<(), ConfigError> {
        for arg in command.get_arguments() {
            let Some(long) = settable(arg) else { continue };
            let found = layers.iter().rev().find_map(|layer| match layer.table.get(long) {
                Some(value) if !value.is_table() => Some((layer, value)),
                _ => None,
            });
            if let Some((layer, value)) = found {
                let values = self.values(value, arg, long, layer.section)?;
                plan.entry(path.to_vec())
                    .or_default()
                    .insert(arg.get_id().to_string(), values);
            }
        }
        for sub in command.get_subcommands() {
            let mut child_path = path.to_vec();
            child_path.push(sub.get_name().to_owned());
            let dotted = child_path.join(".");
            let mut child_layers = layers.to_vec();
            let mut child_sections = BTreeMap::new();
            if let Some(table) = sections.get(sub.get_name()) {
                for (key, value) in table.iter() {
                    let Value::Table(nested) = value else { continue };
                    if subcommand(sub, key).is_none() {
                        return Err(ConfigError::UnknownSection {
                            path: self.path.clone(),
                            section: format!("{dotted}.{key}"),
                            known: subcommand_names(sub).map(|s| format!("[{dotted}.{s}]")).collect(),
                        });
                    }
                    child_sections.insert(key.as_str(), nested);
                }
                let name = format!("{root} {}", child_path.join(" "));
                self.check_keys(table, sub, Some(&dotted), &name)?;
                child_layers.push(Layer {
                    table,
                    section: Some(&dotted),
                });
            }
            self.walk(sub, root, &child_path, &child_layers, &child_sections, plan)?;
        }
        Ok(())
    }

    /// The value as clap's raw values for `arg`.
    fn values(&self, value: &Value, arg: &Arg, key: &str, section: Option<&str>) -> Result<Vec<String>, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidValue {
            path: self.path.clone(),
            section: section.map(str::to_owned),
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        match value {
            Value::Array(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    return Err(invalid("the flag takes one value, not an array"));
                }
                items
                    .iter()
                    .map(|item| scalar(item).ok_or_else(|| invalid("an array holds strings, numbers or booleans")))
                    .collect()
            }
            other => scalar(other)
                .map(|v| vec![v])
                .ok_or_else(|| invalid("a value is a string, a number or a boolean")),
        }
    }
}

/// Line and column (1-based, in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    (line, column)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Datetime(d) => Some(d.to_string()),
        Value::Array(_) | Value::Table(_) => None,
    }
}

/// The long name of a flag the file may set: not a positional argument, not `--help`,
/// `--version` or `--config` itself.
fn settable(arg: &Arg) -> Option<&str> {
    if arg.is_positional() {
        return None;
    }
    let long = arg.get_long()?;
    let builtin = matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    );
    (!builtin && long != CONFIG_FLAG).then_some(long)
}

/// Long names of the flags of `command` and of every subcommand beneath it.
fn flags_beneath(command: &Command) -> BTreeSet<String> {
    let mut flags: BTreeSet<String> = command
        .get_arguments()
        .filter_map(settable)
        .map(str::to_owned)
        .collect();
    for sub in command.get_subcommands() {
        flags.extend(flags_beneath(sub));
    }
    flags
}

fn subcommand<'a>(command: &'a Command, name: &str) -> Option<&'a Command> {
    command.get_subcommands().find(|sub| sub.get_name() == name)
}

fn subcommand_names(command: &Command) -> impl Iterator<Item = &str> {
    command
        .get_subcommands()
        .map(Command::get_name)
        .filter(|name| *name != "help")
}

/// The known key nearest to `key` by edit distance, if near enough to be a typo.
fn closest(key: &str, known: &BTreeSet<String>) -> Option<String> {
    let limit = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.clone())
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Makes the planned values the flags' defaults, through the whole command tree. A flag set
/// from the file is no longer required; a secret one does not show its value in `--help`.
fn set_defaults(command: Command, path: &[String], plan: &Plan) -> Command {
    let command = match plan.get(path) {
        Some(settings) => command.mut_args(|arg| match settings.get(arg.get_id().as_str()) {
            Some(values) => {
                let secret = arg.is_hide_env_values_set();
                let arg = arg.default_values(values.clone()).required(false);
                if secret { arg.hide_default_value(true) } else { arg }
            }
            None => arg,
        }),
        None => command,
    };
    command.mut_subcommands(|sub| {
        let mut child = path.to_vec();
        child.push(sub.get_name().to_owned());
        set_defaults(sub, &child, plan)
    })
}

/// For the test that keeps a program's example file complete: the example at `path` documents
/// every flag of `P` (see [`undocumented_flags`]) and configures `program` without an error;
/// answers what it configures. The error names what is wrong.
pub fn parse_documented_example<P: CommandFactory + FromArgMatches>(
    path: &str,
    program: &str,
    skip: &[&str],
) -> Result<P, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let missing = undocumented_flags(&text, &P::command(), program, skip);
    if !missing.is_empty() {
        return Err(format!("{path} does not document {missing:?}"));
    }
    try_parse_from(program, [program, "--config", path], None).map_err(|e| format!("{program} --config {path}: {e}"))
}

/// The flags of `command` (the program whose own section is `program`) that `text`, an example
/// configuration file, does not mention where they would apply: as a key or a commented-out
/// key (`# key = ...`) in the subcommand's section, a parent's, the program's, or at the top.
/// Subcommands at the dotted paths in `skip` (and beneath them) are not checked. Each missing
/// flag comes as `[section] key`. For the test that keeps an example file complete.
pub fn undocumented_flags(text: &str, command: &Command, program: &str, skip: &[&str]) -> Vec<String> {
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if !line.starts_with("[[")
            && let Some((name, _)) = line.strip_prefix('[').and_then(|rest| rest.split_once(']'))
        {
            section = name.trim().to_owned();
            continue;
        }
        let uncommented = line.strip_prefix('#').unwrap_or(line).trim_start();
        if let Some((key, _)) = uncommented.split_once('=') {
            let key = key.trim();
            if !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                documented.entry(section.clone()).or_default().insert(key.to_owned());
            }
        }
    }
    let mut missing = Vec::new();
    let mut pending = vec![(Vec::<String>::new(), command)];
    while let Some((path, command)) = pending.pop() {
        let dotted = path.join(".");
        if skip.contains(&dotted.as_str()) {
            continue;
        }
        let mut sections = vec![String::new(), program.to_owned()];
        sections.extend((1..=path.len()).map(|n| path[..n].join(".")));
        for long in command.get_arguments().filter_map(settable) {
            let known = sections
                .iter()
                .any(|s| documented.get(s).is_some_and(|keys| keys.contains(long)));
            if !known {
                let label = if path.is_empty() { program } else { dotted.as_str() };
                missing.push(format!("[{label}] {long}"));
            }
        }
        for sub in command.get_subcommands() {
            let mut child = path.clone();
            child.push(sub.get_name().to_owned());
            pending.push((child, sub));
        }
    }
    missing.sort();
    missing
}

/// `--config FILE` (env [`CONFIG_ENV`]), global: add it to a program's [`Command`].
/// [`try_parse_from`] does.
pub fn config_arg() -> Arg {
    Arg::new(CONFIG_FLAG)
        .long(CONFIG_FLAG)
        .env(CONFIG_ENV)
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .action(ArgAction::Set)
        .global(true)
        .help("Settings from a TOML file: keys are the long flag names")
        .long_help(
            "Settings from a TOML file: keys are the long flag names (`listen = \"127.0.0.1:8081\"`, \
             an array for a repeatable flag) in a section per program or subcommand ([write-side], \
             [read-api], [orderflow], [relay], [projections.run], ...), so one file configures the \
             whole deployment. A flag, then its variable, win over the file; an unknown key is an \
             error. Example: deploy/orderflow.example.toml",
        )
}

/// The `--config` path in `args` (after the program name, before a `--`), if given there.
fn config_in_args(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    let long = format!("--{CONFIG_FLAG}");
    let inline = format!("--{CONFIG_FLAG}=");
    while let Some(arg) = args.next() {
        if arg == "--" {
            return None;
        }
        if *arg == *long {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix(&inline)) {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Parses the process's arguments into `P`, with the configuration file of `--config` or
/// [`CONFIG_ENV`] if there is one; on error, prints it (clap's format) and exits with status 2
/// (0 for `--help` and `--version`).
pub fn parse<P: CommandFactory + FromArgMatches>(program: &str) -> P {
    match try_parse_from(program, std::env::args_os(), std::env::var_os(CONFIG_ENV)) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    }
}

/// [`parse`] without the process: `args` (the program name first) and the value of
/// [`CONFIG_ENV`]. Clap still reads the flags' own environment variables from the process.
pub fn try_parse_from<P, I, T>(program: &str, args: I, config_env: Option<OsString>) -> Result<P, clap::Error>
where
    P: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let (mut command, mut matches) = matches_with_file(P::command(), program, args, config_env, Shared::Checked)?;
    P::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))
}

/// [`parse`] for a binary that is one of `program`'s subcommands on its own: `projections run`
/// parses as `orderflow projections run`, so it reads the same sections of the same file
/// (`[orderflow]`, `[projections]`, `[projections.run]`) and takes the same flags.
pub fn parse_subcommand<P: Subcommand + FromArgMatches>(program: &str, subcommand: &str) -> P {
    let args = std::env::args_os().skip(1);
    match try_parse_subcommand_from(program, subcommand, args, std::env::var_os(CONFIG_ENV)) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    }
}

/// [`parse_subcommand`] without the process: `args` are what follows the binary's name.
pub fn try_parse_subcommand_from<P, I, T>(
    program: &str,
    subcommand: &str,
    args: I,
    config_env: Option<OsString>,
) -> Result<P, clap::Error>
where
    P: Subcommand + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let inner = P::augment_subcommands(Command::new(subcommand.to_owned()))
        .subcommand_required(true)
        .arg_required_else_help(true);
    let outer = Command::new(program.to_owned())
        .bin_name(subcommand.to_owned())
        .subcommand_required(true)
        .subcommand(inner);
    let args: Vec<OsString> = [OsString::from(program), OsString::from(subcommand)]
        .into_iter()
        .chain(args.into_iter().map(Into::into))
        .collect();
    let (mut command, mut matches) = matches_with_file(outer, program, args, config_env, Shared::Partly)?;
    let Some((_, inner)) = matches.remove_subcommand() else {
        return Err(command.error(ErrorKind::MissingSubcommand, "a subcommand is required"));
    };
    let mut inner = inner;
    P::from_arg_matches_mut(&mut inner).map_err(|e| e.format(&mut command))
}

/// `command` with `--config`, the file's keys as defaults, matched against `args`.
fn matches_with_file(
    command: Command,
    program: &str,
    args: Vec<OsString>,
    config_env: Option<OsString>,
    shared: Shared,
) -> Result<(Command, clap::ArgMatches), clap::Error> {
    let mut command = command.arg(config_arg());
    let path = config_in_args(&args).or_else(|| config_env.filter(|p| !p.is_empty()).map(PathBuf::from));
    if let Some(path) = path {
        let applied = ConfigFile::load(&path).and_then(|file| match shared {
            Shared::Checked => file.apply(command.clone(), program),
            Shared::Partly => file.apply_to_part(command.clone(), program),
        });
        command = match applied {
            Ok(command) => command,
            Err(e) => return Err(command.error(e.kind(), e.message())),
        };
    }
    let matches = command.try_get_matches_from_mut(args)?;
    Ok((command, matches))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use clap::{Args, Parser, Subcommand};

    use super::*;

    /// A program shaped like `orderflow`: a flag on the root, subcommands, sub-subcommands.
    #[derive(Debug, Parser)]
    #[command(name = "orderflow")]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, Subcommand)]
    enum Sub {
        Relay(RelayArgs),
        #[command(subcommand)]
        Projections(Projections),
    }

    #[derive(Debug, Args)]
    struct RelayArgs {
        /// Required, a secret.
        #[arg(long, hide_env_values = true)]
        database_url: String,
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_brokers: String,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        #[arg(long)]
        no_relay: bool,
        #[arg(long = "token", value_delimiter = ',')]
        tokens: Vec<String>,
    }

    #[derive(Debug, Subcommand)]
    enum Projections {
        Run(RunArgs),
        Status(StatusArgs),
    }

    #[derive(Debug, Args)]
    struct RunArgs {
        #[arg(long)]
        read_db_url: String,
        #[arg(long, default_value_t = 2000)]
        batch_size: usize,
    }

    #[derive(Debug, Args)]
    struct StatusArgs {
        #[arg(long)]
        read_db_url: String,
    }

    /// A file in the temporary directory with `text`, unique to this test.
    fn file(text: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "service-kit-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write the test file");
        path
    }

    fn parse(args: &[&str], config: &str) -> Result<Cli, clap::Error> {
        let path = file(config);
        let mut all = vec!["orderflow", "--config"];
        let path_str = path.to_str().expect("temp paths are UTF-8 here").to_owned();
        all.push(&path_str);
        all.extend_from_slice(args);
        try_parse_from::<Cli, _, _>("orderflow", all, None)
    }

    fn relay(cli: Cli) -> RelayArgs {
        match cli.command {
            Sub::Relay(args) => args,
            other => panic!("expected relay, parsed {other:?}"),
        }
    }

    #[test]
    fn the_file_sets_defaults_and_the_command_line_wins() {
        let config = r#"
            [relay]
            database-url = "postgres://u:hunter2@db/orderflow"
            partitions = 8
            no-relay = true
            token = ["a:commands:00", "b:admin:11"]
        "#;
        let args = relay(parse(&["relay"], config).expect("parses"));
        assert_eq!(
            args.database_url, "postgres://u:hunter2@db/orderflow",
            "a required flag from the file"
        );
        assert_eq!(args.partitions, 8, "the file over the built-in default");
        assert_eq!(args.kafka_brokers, "127.0.0.1:9092", "the built-in default stays");
        assert!(args.no_relay, "a boolean flag");
        assert_eq!(
            args.tokens,
            ["a:commands:00", "b:admin:11"],
            "an array for a repeatable flag"
        );

        let args = relay(parse(&["relay", "--partitions", "2", "--token", "c:admin:22"], config).expect("parses"));
        assert_eq!(args.partitions, 2, "the command line over the file");
        assert_eq!(
            args.tokens,
            ["c:admin:22"],
            "the command line replaces the file's array"
        );
    }

    #[test]
    fn the_most_specific_section_wins() {
        let config = r#"
            [orderflow]
            read-db-url = "sqlite://shared.db"
            batch-size = 10
            [projections]
            batch-size = 20
            [projections.run]
            batch-size = 30
        "#;
        let Sub::Projections(Projections::Run(run)) = parse(&["projections", "run"], config).expect("parses").command
        else {
            panic!("expected projections run")
        };
        assert_eq!(
            run.read_db_url, "sqlite://shared.db",
            "[orderflow] reaches every subcommand"
        );
        assert_eq!(
            run.batch_size, 30,
            "[projections.run] over [projections] over [orderflow]"
        );

        let config = "[orderflow]\nbatch-size = 10\n[projections]\nbatch-size = 20\nread-db-url = \"x\"\n";
        let Sub::Projections(Projections::Run(run)) = parse(&["projections", "run"], config).expect("parses").command
        else {
            panic!("expected projections run")
        };
        assert_eq!(run.batch_size, 20, "[projections] over [orderflow]");
        // `status` has no --batch-size: a key of a parent section applies where it exists.
        let parsed = parse(&["projections", "status"], config).expect("parses");
        assert!(matches!(parsed.command, Sub::Projections(Projections::Status(s)) if s.read_db_url == "x"));
    }

    #[test]
    fn top_level_keys_apply_to_the_whole_program() {
        let args = relay(
            parse(
                &["relay"],
                "database-url = \"postgres://db\"\nkafka-brokers = \"k:1\"\n",
            )
            .expect("parses"),
        );
        assert_eq!(args.kafka_brokers, "k:1");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_the_key_the_section_and_the_file() {
        let path = file("[relay]\ndatabase-url = \"postgres://u:hunter2@db/x\"\npartitons = 3\n");
        let e = ConfigFile::load(&path)
            .and_then(|f| f.apply(Cli::command(), "orderflow"))
            .expect_err("a typo is refused");
        let message = e.to_string();
        assert!(
            matches!(e, ConfigError::UnknownKey { ref key, .. } if key == "partitons"),
            "{e:?}"
        );
        assert!(message.contains("`partitons`"), "{message}");
        assert!(message.contains("in [relay]"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("did you mean `partitions`?"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");

        // Through the parser: clap's error format, a usage error.
        let e = parse(&["relay"], "[relay]\npartitons = 3\n").expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
        assert!(e.to_string().contains("unknown key `partitons`"), "{e}");

        // A key known to another subcommand is not known to this one.
        let e = parse(&["relay"], "[relay]\nbatch-size = 3\n").expect_err("refused");
        assert!(e.to_string().contains("not a flag of `orderflow relay`"), "{e}");
        let e = parse(&["relay"], "no-such-flag = 1\n").expect_err("refused");
        assert!(e.to_string().contains("at the top level"), "{e}");
    }

    #[test]
    fn unknown_sections_are_errors_and_other_programs_sections_are_skipped() {
        let e = parse(&["relay"], "[rellay]\npartitions = 3\n").expect_err("refused");
        assert!(e.to_string().contains("unknown section [rellay]"), "{e}");
        let e = parse(&["relay"], "[projections.rnu]\nbatch-size = 3\n").expect_err("refused");
        assert!(e.to_string().contains("unknown section [projections.rnu]"), "{e}");
        assert!(e.to_string().contains("[projections.run]"), "{e}");
        let e = parse(&["relay"], "[orderflow.relay]\npartitions = 3\n").expect_err("refused");
        assert!(e.to_string().contains("unknown section [orderflow.relay]"), "{e}");

        // [write-side] belongs to another program: its keys are that program's to check.
        let config = "[write-side]\nlisten = \"0.0.0.0:1\"\nanything = 1\n[relay]\ndatabase-url = \"d\"\n";
        assert_eq!(relay(parse(&["relay"], config).expect("parses")).database_url, "d");
    }

    #[test]
    fn a_bad_value_is_clap_error_naming_the_flag() {
        let e = parse(&["relay"], "[relay]\ndatabase-url = \"d\"\npartitions = \"many\"\n").expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert!(e.to_string().contains("--partitions"), "{e}");
        let e = parse(&["relay"], "[relay]\ndatabase-url = [\"a\", \"b\"]\n").expect_err("refused");
        assert!(e.to_string().contains("takes one value"), "{e}");
    }

    #[test]
    fn a_syntax_error_gives_the_place_not_the_line() {
        let e = parse(&["relay"], "[relay]\ndatabase-url = postgres://u:hunter2@db\n").expect_err("refused");
        let message = e.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn secrets_from_the_file_stay_out_of_help_and_debug() {
        let path = file("[relay]\ndatabase-url = \"postgres://u:hunter2@db\"\nkafka-brokers = \"k:9\"\n");
        let loaded = ConfigFile::load(&path).expect("loads");
        let debug = format!("{loaded:?}");
        assert!(
            debug.contains("relay.database-url") && !debug.contains("hunter2"),
            "{debug}"
        );
        let mut command = loaded.apply(Cli::command(), "orderflow").expect("applies");
        let relay = command.find_subcommand_mut("relay").expect("relay");
        let help = relay.render_long_help().to_string();
        assert!(!help.contains("hunter2"), "{help}");
        assert!(help.contains("k:9"), "a plain value shows as the default: {help}");
    }

    #[test]
    fn the_path_comes_from_the_arguments_then_the_environment_value() {
        let config = file("[relay]\ndatabase-url = \"from-file\"\n");
        let inline = format!("--config={}", config.display());
        let parsed = try_parse_from::<Cli, _, _>("orderflow", ["orderflow", "relay", &inline], None).expect("parses");
        assert_eq!(relay(parsed).database_url, "from-file");
        let parsed = try_parse_from::<Cli, _, _>("orderflow", ["orderflow", "relay"], Some(config.clone().into()))
            .expect("parses");
        assert_eq!(relay(parsed).database_url, "from-file");
        let missing = config.with_extension("missing");
        let e = try_parse_from::<Cli, _, _>("orderflow", ["orderflow", "relay"], Some(missing.into()))
            .expect_err("no file");
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.to_string().contains("cannot read the configuration file"), "{e}");
        // Without a file, nothing changes: the required flag is still required.
        let e = try_parse_from::<Cli, _, _>("orderflow", ["orderflow", "relay"], None).expect_err("required");
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn undocumented_flags_are_found_in_their_sections() {
        let command = Cli::command();
        let complete = "[orderflow]\nread-db-url = \"x\"\n[relay]\ndatabase-url = \"d\"\n# kafka-brokers = \"k\"\n\
                        partitions = 4\nno-relay = false\ntoken = []\n[projections.run]\n# batch-size = 1\n";
        assert!(undocumented_flags(complete, &command, "orderflow", &[]).is_empty());
        let partial = "# partitions = 4 at the top of the file, in a comment: documented for every section\n\
                       [relay]\ndatabase-url = \"d\"\nkafka-brokers = \"k\"\nno-relay = false\ntoken = []\n\
                       [projections]\nread-db-url = \"x\"\n";
        assert_eq!(
            undocumented_flags(partial, &command, "orderflow", &[]),
            ["[projections.run] batch-size"]
        );
        assert!(undocumented_flags(partial, &command, "orderflow", &["projections"]).is_empty());
        let missing = undocumented_flags("[relay]\n", &command, "orderflow", &["projections"]);
        assert_eq!(
            missing,
            [
                "[relay] database-url",
                "[relay] kafka-brokers",
                "[relay] no-relay",
                "[relay] partitions",
                "[relay] token"
            ]
        );
    }

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        let known: BTreeSet<String> = ["database-url", "listen"].map(str::to_owned).into();
        assert_eq!(closest("databse-url", &known).as_deref(), Some("database-url"));
        assert_eq!(closest("zzz", &known), None);
    }
}
