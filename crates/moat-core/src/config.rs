//! The moat.yaml model: types, parsing with positioned errors, and the JSON Schema.
//!
//! Every field of SPEC §4.1 is modelled here. Parsing is strict: unknown keys, wrong types and
//! invalid values are errors that carry the file, line and column and say how to fix them.
//! [`schema`] generates the JSON Schema from the same types, so the two never disagree.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::path::PathBuf;

use schemars::JsonSchema;
use schemars::Schema;
use schemars::SchemaGenerator;
use schemars::json_schema;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::de;

use crate::egress::HostRules;
use crate::egress::PathRule;
use crate::egress::PolicyMode;
use crate::host::HostPattern;

/// The file name moat looks for in a workspace.
pub const FILE_NAME: &str = "moat.yaml";

/// A parsed moat.yaml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "moat.yaml",
    description = "Configuration of a moat run (SPEC §4.1)."
)]
pub struct MoatConfig {
    /// Run name; lower-case letters, digits, `-` and `_`, at most 63 characters.
    pub name: Option<RunName>,
    /// Container image; overrides the image chosen from `dependencies`.
    pub image: Option<String>,
    /// Runtime dependencies such as `node@20` or `git`.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Credential grants to inject, e.g. `github`, `anthropic`, `ssh:github.com`.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Environment variables for the container.
    #[serde(default)]
    pub env: BTreeMap<EnvName, EnvValue>,
    /// Secrets resolved at run start: variable name → reference (`op://…`, `ssm://…`).
    #[serde(default)]
    pub secrets: BTreeMap<EnvName, String>,
    /// Command to run; a list of arguments, or a string run with `sh -c`.
    pub command: Option<CommandSpec>,
    /// Allocate a terminal and forward standard input.
    #[serde(default)]
    pub interactive: bool,
    /// Network policy.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Extra bind mounts.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Container ports to publish on 127.0.0.1.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Container runtime.
    pub runtime: Option<RuntimeKind>,
    /// Container resource limits.
    #[serde(default)]
    pub container: ContainerLimits,
    /// Workspace snapshot settings.
    #[serde(default)]
    pub snapshots: SnapshotConfig,
}

/// The `network:` block.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// `permissive` (default), `strict` or `none`.
    #[serde(default)]
    pub policy: PolicyMode,
    /// Hosts the run may reach (`rules:` is accepted as a synonym). Each item is a host pattern
    /// or a map from a host pattern to `allow|deny METHOD /path/glob` rules.
    #[serde(default, alias = "rules")]
    pub allow: Vec<AllowEntry>,
}

/// One item of `network.allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry(pub HostRules);

/// Which container runtime to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Docker Engine.
    Docker,
    /// Apple containers (macOS 15+, Apple silicon).
    Apple,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Docker => "docker",
            Self::Apple => "apple",
        })
    }
}

/// The `container:` block.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerLimits {
    /// Memory limit such as `512m` or `2g` (bytes if a bare number).
    pub memory: Option<ByteSize>,
    /// CPU limit, e.g. `1.5`.
    pub cpus: Option<Cpus>,
}

/// The `snapshots:` block.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Take a snapshot of the workspace before the run starts (default true).
    pub enabled: Option<bool>,
    /// How many snapshots to keep per workspace.
    pub keep: Option<u32>,
    /// Glob patterns excluded from snapshots.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A command: argument list, or a shell string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandSpec {
    /// Arguments, executed directly.
    Args(Vec<String>),
    /// A string executed with `sh -c`.
    Shell(String),
}

impl CommandSpec {
    /// The argument vector to execute.
    pub fn to_argv(&self) -> Vec<String> {
        match self {
            Self::Args(a) => a.clone(),
            Self::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        }
    }
}

/// A validated run name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RunName(String);

/// Why a run name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid run name `{0}`: use 1 to 63 lower-case letters, digits, `-` or `_`, starting with a letter or digit"
)]
pub struct RunNameError(pub String);

impl RunName {
    /// Validates a name.
    pub fn new(name: &str) -> Result<Self, RunNameError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && !(name.starts_with("run_") && name.len() == 16);
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(RunNameError(name.to_owned()))
        }
    }

    /// Derives a valid name from arbitrary text (e.g. a directory name), or `None`.
    pub fn sanitize(text: &str) -> Option<Self> {
        let mut s: String = text
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        s = s.trim_start_matches(['-', '_']).to_owned();
        s.truncate(63);
        Self::new(&s).ok()
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunName {
    fn default() -> Self {
        Self("run".to_owned())
    }
}

impl fmt::Display for RunName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RunName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(de::Error::custom)
    }
}

impl JsonSchema for RunName {
    fn schema_name() -> Cow<'static, str> {
        "RunName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$",
            "description": "Lower-case letters, digits, `-` and `_`, at most 63 characters."
        })
    }
}

/// A valid environment variable name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvName(pub String);

impl EnvName {
    /// Whether `name` is a portable environment variable name.
    pub fn is_valid(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }
}

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if Self::is_valid(&s) {
            Ok(Self(s))
        } else {
            Err(de::Error::custom(format!(
                "invalid environment variable name `{s}`: use letters, digits and `_`, not starting with a digit"
            )))
        }
    }
}

impl JsonSchema for EnvName {
    fn schema_name() -> Cow<'static, str> {
        "EnvName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" })
    }
}

/// An environment value; YAML numbers and booleans are accepted and kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for EnvValue {
    fn schema_name() -> Cow<'static, str> {
        "EnvValue".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

/// A memory size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `512m`, `2g`, `1024k`, `1.5g` or a number of bytes (suffixes are binary).
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim().to_ascii_lowercase();
        let t = t.strip_suffix('b').unwrap_or(&t);
        let (num, mult) = match t.chars().last()? {
            'k' => (&t[..t.len() - 1], 1u64 << 10),
            'm' => (&t[..t.len() - 1], 1 << 20),
            'g' => (&t[..t.len() - 1], 1 << 30),
            't' => (&t[..t.len() - 1], 1 << 40),
            _ => (t, 1),
        };
        let value: f64 = num.trim().parse().ok()?;
        if !value.is_finite() || value <= 0.0 {
            return None;
        }
        let bytes = value * mult as f64;
        (bytes >= 4.0 * 1024.0 * 1024.0 && bytes < u64::MAX as f64).then_some(Self(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = EnvValue::deserialize(d)?;
        Self::parse(&v.0).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid memory size `{}`: write a size of at least 4m such as `512m` or `2g`",
                v.0
            ))
        })
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "description": "A size such as `512m` or `2g`, or a number of bytes."
        })
    }
}

/// A CPU limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpus(pub f64);

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_finite() && v > 0.0 && v <= 1024.0 {
            Ok(Self(v))
        } else {
            Err(de::Error::custom(format!(
                "invalid cpus `{v}`: write a positive number such as `2` or `0.5`"
            )))
        }
    }
}

impl JsonSchema for Cpus {
    fn schema_name() -> Cow<'static, str> {
        "Cpus".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "number", "exclusiveMinimum": 0 })
    }
}

/// A bind mount: `source:target[:ro]` or a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Host path (relative paths are relative to the workspace).
    pub source: PathBuf,
    /// Absolute container path.
    pub target: String,
    /// Mount read-only.
    pub readonly: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MountMap {
    source: PathBuf,
    target: String,
    #[serde(default)]
    readonly: bool,
}

impl<'de> Deserialize<'de> for MountSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Short(String),
            Map(MountMap),
        }
        let spec = match Raw::deserialize(d).map_err(|_| {
            de::Error::custom(
                "invalid mount: write `source:target[:ro]` or a map with `source`, `target` and optional `readonly`",
            )
        })? {
            Raw::Short(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (source, target, readonly) = match parts.as_slice() {
                    [src, dst] => (*src, *dst, false),
                    [src, dst, "ro"] => (*src, *dst, true),
                    [src, dst, "rw"] => (*src, *dst, false),
                    _ => {
                        return Err(de::Error::custom(format!(
                            "invalid mount `{s}`: write `source:target` or `source:target:ro`"
                        )));
                    }
                };
                MountSpec {
                    source: PathBuf::from(source),
                    target: target.to_owned(),
                    readonly,
                }
            }
            Raw::Map(m) => MountSpec {
                source: m.source,
                target: m.target,
                readonly: m.readonly,
            },
        };
        if !spec.target.starts_with('/') {
            return Err(de::Error::custom(format!(
                "invalid mount target `{}`: the container path must be absolute",
                spec.target
            )));
        }
        if spec.target == "/workspace" {
            return Err(de::Error::custom(
                "invalid mount target `/workspace`: the workspace is always mounted there; choose another path",
            ));
        }
        Ok(spec)
    }
}

impl JsonSchema for MountSpec {
    fn schema_name() -> Cow<'static, str> {
        "MountSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "type": "string", "description": "`source:target` or `source:target:ro`" },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["source", "target"],
                    "properties": {
                        "source": { "type": "string" },
                        "target": { "type": "string" },
                        "readonly": { "type": "boolean" }
                    }
                }
            ]
        })
    }
}

/// A published port: `8080` (same port on the host) or `"9000:8080"` (host:container).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// Host port on 127.0.0.1.
    pub host: u16,
    /// Container port.
    pub container: u16,
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = EnvValue::deserialize(d)?;
        let parse = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p != 0);
        let spec = match v.0.split_once(':') {
            Some((h, c)) => parse(h).zip(parse(c)),
            None => parse(&v.0).map(|p| (p, p)),
        };
        spec.map(|(host, container)| PortSpec { host, container })
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "invalid port `{}`: write a port such as `8080` or `\"9000:8080\"` (host:container)",
                    v.0
                ))
            })
    }
}

impl JsonSchema for PortSpec {
    fn schema_name() -> Cow<'static, str> {
        "PortSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["integer", "string"],
            "description": "A port (`8080`) or `host:container` (`\"9000:8080\"`), published on 127.0.0.1."
        })
    }
}

impl<'de> Deserialize<'de> for AllowEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = AllowEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a host pattern, or a map from a host pattern to a list of rules")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AllowEntry, E> {
                let pattern = HostPattern::parse(v).map_err(E::custom)?;
                Ok(AllowEntry(HostRules::any(pattern)))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<AllowEntry, A::Error> {
                let Some((host, rules)) = map.next_entry::<String, Vec<String>>()? else {
                    return Err(de::Error::custom(
                        "empty map in network.allow: write `- \"host\": [\"allow GET /path\"]`",
                    ));
                };
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "each network.allow map must have exactly one host; start a new `-` item for the next host",
                    ));
                }
                let pattern = HostPattern::parse(&host).map_err(de::Error::custom)?;
                let rules = rules
                    .iter()
                    .map(|r| PathRule::parse(r))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(de::Error::custom)?;
                Ok(AllowEntry(HostRules { pattern, rules }))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for AllowEntry {
    fn schema_name() -> Cow<'static, str> {
        "AllowEntry".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                {
                    "type": "string",
                    "description": "Host pattern: `api.github.com`, `*.github.com`, optional `:port`."
                },
                {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": {
                        "type": "array",
                        "items": {
                            "type": "string",
                            "pattern": "^(?i:allow|deny)\\s+(\\*|[A-Za-z]+)\\s+/\\S*$",
                            "description": "`allow|deny METHOD /path/glob`"
                        }
                    }
                }
            ]
        })
    }
}

/// A moat.yaml (or config.yaml) error, positioned where possible.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or does not fit the model.
    #[error("{}{}: {message}", path.display(), position(*line, *column))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: String,
    },
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

impl ConfigError {
    /// How to fix the error.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Self::Read { .. } => None,
            Self::Invalid { hint, .. } => Some(hint),
        }
    }
}

impl MoatConfig {
    /// Reads `dir/moat.yaml` if it exists; an absent file is an empty configuration.
    pub fn load_from_dir(dir: &Path) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let path = dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Self::parse(&path, &text)?, Some(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Self::default(), None)),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses moat.yaml text; `path` is used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        parse_yaml(path, text)
    }

    /// The host rules of `network.allow`.
    pub fn allow_rules(&self) -> Vec<HostRules> {
        self.network.allow.iter().map(|a| a.0.clone()).collect()
    }
}

/// Parses any YAML document of moat's into `T` with positioned, hinted errors.
pub fn parse_yaml<T: de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| {
        let loc = e.location();
        let raw = e.to_string();
        // serde_yaml appends " at line L column C"; we report the position separately.
        let message = match raw.find(" at line ") {
            Some(i) => raw[..i].to_owned(),
            None => raw,
        };
        let hint = hint_for(&message);
        ConfigError::Invalid {
            path: path.to_owned(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message,
            hint,
        }
    })
}

fn hint_for(message: &str) -> String {
    if message.starts_with("unknown field") {
        "remove the key or fix its spelling; `moat schema` prints every valid key".into()
    } else if message.starts_with("unknown variant") {
        "use one of the values listed above".into()
    } else if message.starts_with("invalid type") {
        "change the value to the expected type; `moat schema` shows the type of every key".into()
    } else if message.starts_with("duplicate field") {
        "each key may appear once (`rules:` is a synonym of `allow:`); merge the two".into()
    } else if message.contains("did not find expected")
        || message.contains("found character")
        || message.contains("mapping values are not allowed")
    {
        "fix the YAML syntax at that position (indentation, quoting, or a missing `:`)".into()
    } else {
        "fix the value as described; see docs/moat-yaml.md".into()
    }
}

/// The JSON Schema of moat.yaml, as pretty-printed JSON with a trailing newline.
pub fn schema() -> String {
    let schema = schemars::schema_for!(MoatConfig);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MoatConfig, ConfigError> {
        MoatConfig::parse(Path::new("moat.yaml"), text)
    }

    fn err(text: &str) -> (usize, usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid {
                line,
                column,
                message,
                hint,
                ..
            }) => (line.unwrap_or(0), column.unwrap_or(0), message, hint),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn full_example_parses() {
        let cfg = parse(
            r#"
name: my-agent
image: debian:bookworm
dependencies: [node@20, git]
grants: [github, anthropic]
env:
  DEBUG: 1
  MODE: fast
secrets:
  OPENAI_API_KEY: op://vault/openai/key
command: ["npm", "test"]
interactive: false
network:
  policy: strict
  allow:
    - api.github.com
    - "*.anthropic.com"
    - "api.example.com":
        - allow GET /repos/**
        - deny * /admin/*
mounts:
  - ./cache:/cache:ro
  - { source: /tmp, target: /host-tmp }
ports: [8080, "9000:3000"]
runtime: docker
container:
  memory: 2g
  cpus: 1.5
snapshots:
  enabled: true
  keep: 5
  exclude: [node_modules]
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.name.as_ref().map(RunName::as_str), Some("my-agent"));
        assert_eq!(cfg.network.policy, PolicyMode::Strict);
        assert_eq!(cfg.network.allow.len(), 3);
        assert_eq!(cfg.network.allow[2].0.rules.len(), 2);
        assert_eq!(
            cfg.env.get(&EnvName("DEBUG".into())),
            Some(&EnvValue("1".into()))
        );
        assert!(cfg.mounts[0].readonly);
        assert_eq!(
            cfg.ports[1],
            PortSpec {
                host: 9000,
                container: 3000
            }
        );
        assert_eq!(cfg.container.memory, Some(ByteSize(2 << 30)));
        assert_eq!(
            cfg.command.as_ref().map(CommandSpec::to_argv),
            Some(vec!["npm".to_owned(), "test".to_owned()])
        );
    }

    #[test]
    fn rules_is_a_synonym_of_allow() {
        let cfg =
            parse("network:\n  rules:\n    - example.com\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.network.allow.len(), 1);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let (line, column, message, hint) = err("name: x\nimagee: foo\n");
        assert_eq!((line, column), (2, 1));
        assert!(message.contains("unknown field `imagee`"), "{message}");
        assert!(hint.contains("moat schema"));
    }

    #[test]
    fn nested_unknown_key() {
        let (line, column, message, _) = err("network:\n  policy: strict\n  alow: []\n");
        assert_eq!((line, column), (3, 3));
        assert!(message.contains("alow"));
    }

    #[test]
    fn wrong_type_and_bad_policy() {
        let (line, _, message, _) = err("grants: github\n");
        assert_eq!(line, 1);
        assert!(message.contains("invalid type"), "{message}");
        let (line, column, message, _) = err("network:\n  policy: strictest\n");
        assert_eq!((line, column), (2, 11));
        assert!(message.contains("permissive"), "{message}");
    }

    #[test]
    fn invalid_values_are_positioned() {
        let (line, _, message, _) = err("network:\n  allow:\n    - \"a.*.com\"\n");
        assert_eq!(line, 3);
        assert!(message.contains("a.*.com"), "{message}");
        let (line, _, message, _) =
            err("network:\n  allow:\n    - \"x.com\": [\"permit GET /\"]\n");
        assert_eq!(line, 3);
        assert!(message.contains("allow"), "{message}");
        let (_, _, message, _) = err("name: Bad Name\n");
        assert!(message.contains("invalid run name"), "{message}");
        let (_, _, message, _) = err("env:\n  1BAD: x\n");
        assert!(message.contains("environment variable name"), "{message}");
        let (_, _, message, _) = err("container:\n  memory: lots\n");
        assert!(message.contains("memory size"), "{message}");
        let (_, _, message, _) = err("ports: [0]\n");
        assert!(message.contains("invalid port"), "{message}");
        let (_, _, message, _) = err("mounts: [\"a:relative\"]\n");
        assert!(message.contains("absolute"), "{message}");
    }

    #[test]
    fn syntax_error_has_position() {
        let (line, _, _, hint) = err("name: x\n  bad: [\n");
        assert!(line >= 1);
        assert!(!hint.is_empty());
    }

    #[test]
    fn empty_file_is_default() {
        assert_eq!(
            parse("").unwrap_or_else(|e| panic!("{e}")),
            MoatConfig::default()
        );
        assert_eq!(
            parse("# comment only\n").unwrap_or_else(|e| panic!("{e}")),
            MoatConfig::default()
        );
    }

    #[test]
    fn schema_mentions_every_top_level_key() {
        let schema = schema();
        for key in [
            "name",
            "image",
            "dependencies",
            "grants",
            "env",
            "secrets",
            "command",
            "interactive",
            "network",
            "mounts",
            "ports",
            "runtime",
            "container",
            "snapshots",
        ] {
            assert!(
                schema.contains(&format!("\"{key}\"")),
                "{key} missing from schema"
            );
        }
    }

    #[test]
    fn run_name_sanitize() {
        assert_eq!(
            RunName::sanitize("My Project!").map(|n| n.0),
            Some("my-project-".into())
        );
        assert_eq!(RunName::sanitize("___"), None);
    }
}

/// `$MOAT_HOME/config.yaml`: installation-wide settings. Environment variables with the same
/// meaning override these (the CLI applies that rule).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// Image used when neither `--image` nor moat.yaml names one (`MOAT_DEFAULT_IMAGE`).
    pub default_image: Option<String>,
    /// Runtime to use (`MOAT_RUNTIME`).
    pub runtime: Option<RuntimeKind>,
    /// Docker Engine endpoint (`DOCKER_HOST`).
    pub docker_host: Option<String>,
    /// Where the credential store key comes from: `auto`, `os` or `file` (`MOAT_KEYRING`).
    pub keyring: Option<String>,
    /// Upstream settings for the proxy and grant validation.
    #[serde(default)]
    pub proxy: ProxySettings,
}

/// The `proxy:` block of config.yaml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// PEM bundle of extra trusted upstream roots (`MOAT_UPSTREAM_CA`).
    pub upstream_ca: Option<PathBuf>,
    /// `host:port=ip:port` overrides for upstream dialling (`MOAT_RESOLVE`).
    #[serde(default)]
    pub resolve: Vec<String>,
}

impl GlobalConfig {
    /// Reads `path`; an absent file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Ok(Self::default()),
            Ok(text) => parse_yaml(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}
