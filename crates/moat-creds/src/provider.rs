//! Grant providers: which hosts get a credential, in which header and format, what the
//! container sees instead, where the value comes from and how it is validated.
//!
//! Built in: `github`, `anthropic`, `openai`. Custom providers are YAML files
//! `<providers dir>/<name>.yaml` (the CLI passes `$MOAT_HOME/providers`):
//!
//! ```yaml
//! hosts: [api.example.com, "*.example.com"]
//! header: Authorization
//! format: bearer            # bearer | basic | raw | prefix
//! prefix: "token "          # format: prefix only
//! username: x-token         # format: basic only: Basic base64(username:value)
//! env: EXAMPLE_API_KEY      # container variable that gets the placeholder
//! placeholder_prefix: ex_   # optional: placeholders look like ex_<40 alphanumerics>
//! token_env: [EXAMPLE_API_KEY]   # optional: variables read at grant time (default: env)
//! validate: https://api.example.com/v1/me   # optional: GET must answer 2xx
//! ```

use std::fs;
use std::path::Path;
use std::path::PathBuf;

use moat_core::Secret;
use moat_core::creds::InjectionFormat;
use moat_core::creds::InjectionRule;
use moat_core::creds::ResolvedGrants;
use moat_core::host::HostPattern;
use serde::Deserialize;

use crate::store::validate_grant_name;

/// Names of the built-in providers.
pub const BUILTIN_PROVIDERS: &[&str] = &["anthropic", "github", "openai"];

/// One header injection: hosts, header and format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// Hosts that receive the credential.
    pub hosts: Vec<HostPattern>,
    /// Header name, lower-case.
    pub header: String,
    /// How the value is written.
    pub format: InjectionFormat,
}

/// The shape of the per-run placeholder the container sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceholderShape {
    /// Fixed prefix, e.g. `ghp_`.
    pub prefix: String,
    /// Number of random characters after the prefix.
    pub random_len: usize,
    /// Characters the random part is drawn from.
    pub alphabet: &'static [u8],
    /// Fixed suffix.
    pub suffix: String,
}

/// Letters and digits.
pub const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Letters, digits, `-` and `_` (URL-safe base64 characters).
pub const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl PlaceholderShape {
    /// A fresh random placeholder of this shape.
    pub fn generate(&self) -> Result<String, getrandom::Error> {
        let mut out =
            String::with_capacity(self.prefix.len() + self.random_len + self.suffix.len());
        out.push_str(&self.prefix);
        out.push_str(&random_string(self.alphabet, self.random_len)?);
        out.push_str(&self.suffix);
        Ok(out)
    }

    /// Whether `value` has this shape.
    pub fn matches(&self, value: &str) -> bool {
        value
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_suffix(self.suffix.as_str()))
            .is_some_and(|mid| {
                mid.len() == self.random_len && mid.bytes().all(|b| self.alphabet.contains(&b))
            })
    }
}

/// How a provider checks a value before it is saved: `GET url` with the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationSpec {
    /// An `https` URL on one of the provider's hosts.
    pub url: reqwest::Url,
    /// The credential header.
    pub header: String,
    /// How the value is written into it.
    pub format: InjectionFormat,
    /// Extra request headers (lower-case names).
    pub extra_headers: Vec<(String, String)>,
    /// A top-level string field of the JSON answer that names the account (`login`).
    pub account_field: Option<String>,
}

/// Where a provider is defined.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderOrigin {
    /// Compiled in.
    Builtin,
    /// A YAML file.
    Custom {
        /// The file.
        path: PathBuf,
    },
}

/// A grant provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    name: String,
    origin: ProviderOrigin,
    injections: Vec<Injection>,
    env_vars: Vec<String>,
    placeholder: PlaceholderShape,
    token_vars: Vec<String>,
    uses_gh_cli: bool,
    validation: Option<ValidationSpec>,
    /// Validation calls for values with a given prefix, tried before `validation`.
    prefixed_validations: Vec<(String, ValidationSpec)>,
}

impl Provider {
    /// The provider (and grant) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Built in or from a file.
    pub fn origin(&self) -> &ProviderOrigin {
        &self.origin
    }

    /// Header injections.
    pub fn injections(&self) -> &[Injection] {
        &self.injections
    }

    /// Container variables that receive the placeholder.
    pub fn env_vars(&self) -> &[String] {
        &self.env_vars
    }

    /// The placeholder shape.
    pub fn placeholder(&self) -> &PlaceholderShape {
        &self.placeholder
    }

    /// Environment variables the grant flow takes the value from, in order. The CLI reads
    /// these from its environment and passes them to [`crate::grant::GrantRequest`].
    pub fn token_vars(&self) -> &[String] {
        &self.token_vars
    }

    /// Whether `gh auth token` is a source.
    pub fn uses_gh_cli(&self) -> bool {
        self.uses_gh_cli
    }

    /// The validation call, if the provider has one.
    pub fn validation(&self) -> Option<&ValidationSpec> {
        self.validation.as_ref()
    }

    /// The validation call for `value`: some kinds of token need another endpoint (GitHub
    /// App installation tokens, `ghs_…`, cannot read `/user`).
    pub fn validation_for(&self, value: &Secret) -> Option<&ValidationSpec> {
        self.prefixed_validations
            .iter()
            .find(|(prefix, _)| value.expose().starts_with(prefix.as_str()))
            .map(|(_, spec)| spec)
            .or(self.validation.as_ref())
    }

    /// Injection rules and container environment for one run, with a fresh placeholder.
    pub fn resolve(&self, value: &Secret) -> Result<ResolvedGrants, getrandom::Error> {
        let placeholder = self.placeholder.generate()?;
        let rules = self
            .injections
            .iter()
            .map(|inj| InjectionRule {
                grant: self.name.clone(),
                hosts: inj.hosts.clone(),
                header: inj.header.clone(),
                format: inj.format.clone(),
                value: value.clone(),
                placeholder: placeholder.clone(),
            })
            .collect();
        let env = self
            .env_vars
            .iter()
            .map(|var| (var.clone(), placeholder.clone()))
            .collect();
        Ok(ResolvedGrants { rules, env })
    }
}

/// Why a provider could not be found or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// No built-in provider and no custom file of that name.
    #[error("unknown provider `{name}`; known providers: {}; custom providers are read from {}", known.join(", "), dir_display(dir.as_deref()))]
    Unknown {
        /// The name asked for.
        name: String,
        /// Built-in and custom provider names.
        known: Vec<String>,
        /// Where custom providers would be.
        dir: Option<PathBuf>,
    },
    /// The custom provider file cannot be read.
    #[error("cannot read provider file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The custom provider file is not valid YAML for a provider.
    #[error("provider file {} is invalid: {source}; see the moat-creds documentation for the fields", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_yaml::Error,
    },
    /// A field of the custom provider file has an unusable value.
    #[error("provider file {}: field `{field}` {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A custom file would replace a built-in provider.
    #[error("provider file {} would replace the built-in provider `{name}`; rename the file", path.display())]
    ShadowsBuiltin {
        /// The file.
        path: PathBuf,
        /// The built-in name.
        name: String,
    },
}

/// Built-in providers plus the custom ones in a directory.
#[derive(Debug, Clone, Default)]
pub struct ProviderRegistry {
    custom_dir: Option<PathBuf>,
}

impl ProviderRegistry {
    /// Built-ins, plus custom providers from `custom_dir` (`$MOAT_HOME/providers`) if given.
    /// Custom files are read when asked for, so one broken file does not break the others.
    pub fn new(custom_dir: Option<PathBuf>) -> Self {
        Self { custom_dir }
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Result<Provider, ProviderError> {
        if let Some(p) = builtin(name) {
            return Ok(p);
        }
        if validate_grant_name(name).is_ok()
            && let Some(dir) = &self.custom_dir
        {
            for ext in ["yaml", "yml"] {
                let path = dir.join(format!("{name}.{ext}"));
                match fs::read_to_string(&path) {
                    Ok(text) => return parse_custom(name, &path, &text),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(ProviderError::Read { path, source }),
                }
            }
        }
        Err(ProviderError::Unknown {
            name: name.to_owned(),
            known: self.names(),
            dir: self.custom_dir.clone(),
        })
    }

    /// Built-in and custom provider names, sorted. Custom files that shadow a built-in are
    /// not listed.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = BUILTIN_PROVIDERS.iter().map(|s| (*s).to_owned()).collect();
        if let Some(dir) = &self.custom_dir
            && let Ok(entries) = fs::read_dir(dir)
        {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(file_name) = file_name.to_str() else {
                    continue;
                };
                let stem = file_name
                    .strip_suffix(".yaml")
                    .or_else(|| file_name.strip_suffix(".yml"));
                if let Some(stem) = stem
                    && validate_grant_name(stem).is_ok()
                    && !names.iter().any(|n| n == stem)
                {
                    names.push(stem.to_owned());
                }
            }
        }
        names.sort();
        names
    }
}

/// The built-in provider `name`.
pub fn builtin(name: &str) -> Option<Provider> {
    let hosts = |list: &[&str]| -> Vec<HostPattern> {
        list.iter()
            .filter_map(|h| HostPattern::parse(h).ok())
            .collect()
    };
    let url = |u: &str| reqwest::Url::parse(u).ok();
    match name {
        "github" => Some(Provider {
            name: name.to_owned(),
            origin: ProviderOrigin::Builtin,
            injections: vec![
                Injection {
                    hosts: hosts(&["api.github.com", "uploads.github.com"]),
                    header: "authorization".to_owned(),
                    format: InjectionFormat::Bearer,
                },
                Injection {
                    hosts: hosts(&["github.com"]),
                    header: "authorization".to_owned(),
                    format: InjectionFormat::Basic {
                        username: "x-access-token".to_owned(),
                    },
                },
            ],
            env_vars: vec!["GH_TOKEN".to_owned(), "GITHUB_TOKEN".to_owned()],
            placeholder: PlaceholderShape {
                prefix: "ghp_".to_owned(),
                random_len: 36,
                alphabet: ALPHANUMERIC,
                suffix: String::new(),
            },
            token_vars: vec!["GITHUB_TOKEN".to_owned(), "GH_TOKEN".to_owned()],
            uses_gh_cli: true,
            validation: url("https://api.github.com/user")
                .map(|url| github_validation(url, Some("login"))),
            prefixed_validations: url(
                "https://api.github.com/installation/repositories?per_page=1",
            )
            .map(|url| ("ghs_".to_owned(), github_validation(url, None)))
            .into_iter()
            .collect(),
        }),
        "anthropic" => Some(Provider {
            name: name.to_owned(),
            origin: ProviderOrigin::Builtin,
            injections: vec![Injection {
                hosts: hosts(&["api.anthropic.com"]),
                header: "x-api-key".to_owned(),
                format: InjectionFormat::Raw,
            }],
            env_vars: vec!["ANTHROPIC_API_KEY".to_owned()],
            placeholder: PlaceholderShape {
                prefix: "sk-ant-api03-".to_owned(),
                random_len: 93,
                alphabet: URL_SAFE,
                suffix: "AA".to_owned(),
            },
            token_vars: vec!["ANTHROPIC_API_KEY".to_owned()],
            uses_gh_cli: false,
            validation: url("https://api.anthropic.com/v1/models?limit=1").map(|url| {
                ValidationSpec {
                    url,
                    header: "x-api-key".to_owned(),
                    format: InjectionFormat::Raw,
                    extra_headers: vec![("anthropic-version".to_owned(), "2023-06-01".to_owned())],
                    account_field: None,
                }
            }),
            prefixed_validations: Vec::new(),
        }),
        "openai" => Some(Provider {
            name: name.to_owned(),
            origin: ProviderOrigin::Builtin,
            injections: vec![Injection {
                hosts: hosts(&["api.openai.com"]),
                header: "authorization".to_owned(),
                format: InjectionFormat::Bearer,
            }],
            env_vars: vec!["OPENAI_API_KEY".to_owned()],
            placeholder: PlaceholderShape {
                prefix: "sk-".to_owned(),
                random_len: 48,
                alphabet: ALPHANUMERIC,
                suffix: String::new(),
            },
            token_vars: vec!["OPENAI_API_KEY".to_owned()],
            uses_gh_cli: false,
            validation: url("https://api.openai.com/v1/models").map(|url| ValidationSpec {
                url,
                header: "authorization".to_owned(),
                format: InjectionFormat::Bearer,
                extra_headers: Vec::new(),
                account_field: None,
            }),
            prefixed_validations: Vec::new(),
        }),
        _ => None,
    }
}

/// Parses the custom provider file `path` (already read into `text`) for provider `name`.
pub fn parse_custom(name: &str, path: &Path, text: &str) -> Result<Provider, ProviderError> {
    if BUILTIN_PROVIDERS.contains(&name) {
        return Err(ProviderError::ShadowsBuiltin {
            path: path.to_owned(),
            name: name.to_owned(),
        });
    }
    let file: CustomFile = serde_yaml::from_str(text).map_err(|source| ProviderError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |field: &'static str, problem: String| ProviderError::Invalid {
        path: path.to_owned(),
        field,
        problem,
    };
    if file.hosts.is_empty() {
        return Err(invalid(
            "hosts",
            "is empty; list the hosts that receive the credential, e.g. [api.example.com]".into(),
        ));
    }
    let mut hosts = Vec::with_capacity(file.hosts.len());
    for h in &file.hosts {
        hosts
            .push(HostPattern::parse(h).map_err(|e| invalid("hosts", format!("is invalid: {e}")))?);
    }
    let header = file.header.trim().to_ascii_lowercase();
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if header.is_empty() || !header.bytes().all(token_char) {
        return Err(invalid(
            "header",
            format!(
                "`{}` is not an HTTP header name; use e.g. Authorization",
                file.header
            ),
        ));
    }
    if FORBIDDEN_HEADERS.contains(&header.as_str()) {
        return Err(invalid(
            "header",
            format!("`{header}` cannot carry a credential; use e.g. Authorization"),
        ));
    }
    let format = match file.format {
        CustomFormat::Bearer => InjectionFormat::Bearer,
        CustomFormat::Raw => InjectionFormat::Raw,
        CustomFormat::Basic => InjectionFormat::Basic {
            username: file
                .username
                .clone()
                .ok_or_else(|| invalid("username", "is required with `format: basic`".into()))?,
        },
        CustomFormat::Prefix => InjectionFormat::Prefix(file.prefix.clone().ok_or_else(|| {
            invalid(
                "prefix",
                "is required with `format: prefix`, e.g. `prefix: \"token \"`".into(),
            )
        })?),
    };
    if file.username.is_some() && !matches!(file.format, CustomFormat::Basic) {
        return Err(invalid(
            "username",
            "is only used with `format: basic`; remove it".into(),
        ));
    }
    if file.prefix.is_some() && !matches!(file.format, CustomFormat::Prefix) {
        return Err(invalid(
            "prefix",
            "is only used with `format: prefix`; remove it".into(),
        ));
    }
    if !is_env_name(&file.env) {
        return Err(invalid(
            "env",
            format!(
                "`{}` is not a variable name; use e.g. EXAMPLE_API_KEY",
                file.env
            ),
        ));
    }
    let token_vars = file
        .token_env
        .clone()
        .unwrap_or_else(|| vec![file.env.clone()]);
    if let Some(bad) = token_vars.iter().find(|v| !is_env_name(v)) {
        return Err(invalid(
            "token_env",
            format!("`{bad}` is not a variable name; use e.g. EXAMPLE_API_KEY"),
        ));
    }
    let placeholder_prefix = file.placeholder_prefix.clone().unwrap_or_default();
    if placeholder_prefix.len() > 64 || !placeholder_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "placeholder_prefix",
            "must be at most 64 printable ASCII characters without spaces".into(),
        ));
    }
    let validation = match &file.validate {
        None => None,
        Some(raw) => {
            let url = reqwest::Url::parse(raw)
                .map_err(|e| invalid("validate", format!("`{raw}` is not a URL: {e}")))?;
            if url.scheme() != "https" {
                return Err(invalid("validate", format!("`{raw}` must be an https URL")));
            }
            let host = url.host_str().unwrap_or_default();
            let port = url.port_or_known_default().unwrap_or(443);
            if !hosts.iter().any(|h| h.matches(host, port)) {
                return Err(invalid(
                    "validate",
                    format!(
                        "`{raw}` is not on one of the provider's hosts; the credential is only sent to those hosts"
                    ),
                ));
            }
            Some(ValidationSpec {
                url,
                header: header.clone(),
                format: format.clone(),
                extra_headers: Vec::new(),
                account_field: None,
            })
        }
    };
    Ok(Provider {
        name: name.to_owned(),
        origin: ProviderOrigin::Custom {
            path: path.to_owned(),
        },
        injections: vec![Injection {
            hosts,
            header,
            format,
        }],
        env_vars: vec![file.env],
        placeholder: PlaceholderShape {
            prefix: placeholder_prefix,
            random_len: 40,
            alphabet: ALPHANUMERIC,
            suffix: String::new(),
        },
        token_vars,
        uses_gh_cli: false,
        validation,
        prefixed_validations: Vec::new(),
    })
}

/// Headers that must never be set from a provider file.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "keep-alive",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomFile {
    hosts: Vec<String>,
    header: String,
    format: CustomFormat,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    username: Option<String>,
    env: String,
    #[serde(default)]
    placeholder_prefix: Option<String>,
    #[serde(default)]
    token_env: Option<Vec<String>>,
    #[serde(default)]
    validate: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CustomFormat {
    Bearer,
    Basic,
    Raw,
    Prefix,
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn dir_display(dir: Option<&Path>) -> String {
    match dir {
        Some(d) => format!("{}/<name>.yaml", d.display()),
        None => "$MOAT_HOME/providers/<name>.yaml".to_owned(),
    }
}

/// `len` characters drawn uniformly from `alphabet` (rejection sampling, no modulo bias).
fn random_string(alphabet: &[u8], len: usize) -> Result<String, getrandom::Error> {
    let n = alphabet.len();
    if n == 0 || n > 256 {
        return Ok(String::new());
    }
    let limit = 256 - (256 % n);
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            if out.len() == len {
                break;
            }
            if usize::from(b) < limit
                && let Some(&c) = alphabet.get(usize::from(b) % n)
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

/// A GitHub REST API check of a token, answering `account_field` when there is one.
fn github_validation(url: reqwest::Url, account_field: Option<&str>) -> ValidationSpec {
    ValidationSpec {
        url,
        header: "authorization".to_owned(),
        format: InjectionFormat::Bearer,
        extra_headers: vec![
            (
                "accept".to_owned(),
                "application/vnd.github+json".to_owned(),
            ),
            ("x-github-api-version".to_owned(), "2022-11-28".to_owned()),
        ],
        account_field: account_field.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(name: &str) -> Provider {
        builtin(name).unwrap_or_else(|| panic!("builtin {name}"))
    }

    #[test]
    fn github_rules_and_placeholder() -> Result<(), getrandom::Error> {
        let gh = get("github");
        let token = Secret::new("ghp_realrealrealrealrealrealrealrealreal");
        let ResolvedGrants { rules, env } = gh.resolve(&token)?;
        assert_eq!(rules.len(), 2);
        let api = &rules[0];
        assert!(api.hosts.iter().any(|h| h.matches("api.github.com", 443)));
        assert!(
            api.hosts
                .iter()
                .any(|h| h.matches("uploads.github.com", 443))
        );
        assert!(!api.hosts.iter().any(|h| h.matches("github.com", 443)));
        assert_eq!(api.format.render("T"), "Bearer T");
        let git = &rules[1];
        assert!(git.hosts.iter().any(|h| h.matches("github.com", 443)));
        assert_eq!(
            git.format.render("T"),
            format!(
                "Basic {}",
                moat_core::creds::base64_encode(b"x-access-token:T")
            )
        );
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["GH_TOKEN", "GITHUB_TOKEN"]);
        let placeholder = &env[0].1;
        assert_eq!(placeholder, &env[1].1);
        assert_eq!(placeholder, &api.placeholder);
        assert!(placeholder.starts_with("ghp_") && placeholder.len() == 40);
        assert!(placeholder[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(placeholder, token.expose());
        Ok(())
    }

    #[test]
    fn placeholders_are_random_and_well_formed() -> Result<(), getrandom::Error> {
        for name in BUILTIN_PROVIDERS {
            let p = get(name);
            let a = p.placeholder().generate()?;
            let b = p.placeholder().generate()?;
            assert_ne!(a, b, "{name}");
            assert!(p.placeholder().matches(&a), "{name}: {a}");
        }
        let anthropic = get("anthropic").placeholder().generate()?;
        assert!(anthropic.starts_with("sk-ant-api03-") && anthropic.ends_with("AA"));
        assert_eq!(anthropic.len(), 13 + 93 + 2);
        let openai = get("openai").placeholder().generate()?;
        assert!(openai.starts_with("sk-") && openai.len() == 51);
        Ok(())
    }

    #[test]
    fn anthropic_and_openai_headers() {
        let a = get("anthropic");
        assert_eq!(a.injections()[0].header, "x-api-key");
        assert_eq!(a.injections()[0].format.render("K"), "K");
        assert_eq!(a.env_vars(), ["ANTHROPIC_API_KEY"]);
        let o = get("openai");
        assert_eq!(o.injections()[0].header, "authorization");
        assert_eq!(o.injections()[0].format.render("K"), "Bearer K");
        assert_eq!(o.env_vars(), ["OPENAI_API_KEY"]);
    }

    #[test]
    fn custom_provider_parses() -> Result<(), ProviderError> {
        let text = r#"
hosts: [api.example.com, "*.example.org"]
header: X-Api-Token
format: prefix
prefix: "token "
env: EXAMPLE_KEY
placeholder_prefix: ex_
validate: https://api.example.com/v1/me
"#;
        let p = parse_custom("example", Path::new("/p/example.yaml"), text)?;
        assert_eq!(p.injections()[0].header, "x-api-token");
        assert_eq!(p.injections()[0].format.render("v"), "token v");
        assert_eq!(p.token_vars(), ["EXAMPLE_KEY"]);
        assert!(p.validation().is_some());
        let ph = p.placeholder().generate().unwrap_or_default();
        assert!(ph.starts_with("ex_") && ph.len() == 43);
        Ok(())
    }

    #[test]
    fn custom_provider_errors_name_the_field() {
        let cases = [
            ("hosts: []\nheader: a\nformat: raw\nenv: A\n", "`hosts`"),
            (
                "hosts: [a.com]\nheader: Host\nformat: raw\nenv: A\n",
                "`header`",
            ),
            (
                "hosts: [a.com]\nheader: a\nformat: basic\nenv: A\n",
                "`username`",
            ),
            (
                "hosts: [a.com]\nheader: a\nformat: prefix\nenv: A\n",
                "`prefix`",
            ),
            ("hosts: [a.com]\nheader: a\nformat: raw\nenv: 1A\n", "`env`"),
            (
                "hosts: [a.com]\nheader: a\nformat: raw\nenv: A\nvalidate: https://evil.com/\n",
                "`validate`",
            ),
            (
                "hosts: [a.com]\nheader: a\nformat: raw\nenv: A\nvalidate: http://a.com/\n",
                "`validate`",
            ),
            (
                "hosts: [a.com]\nheader: a\nformat: raw\nenv: A\nbogus: 1\n",
                "bogus",
            ),
            ("hosts: [a.com]\nheader: a\nformat: jwt\nenv: A\n", "jwt"),
        ];
        for (text, want) in cases {
            let err = parse_custom("x", Path::new("/p/x.yaml"), text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("/p/x.yaml"), "{err}");
        }
        let err = parse_custom("github", Path::new("/p/github.yaml"), "");
        assert!(matches!(err, Err(ProviderError::ShadowsBuiltin { .. })));
    }

    #[test]
    fn unknown_provider_lists_known_ones() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::write(
            dir.path().join("acme.yaml"),
            "hosts: [api.acme.test]\nheader: authorization\nformat: bearer\nenv: ACME\n",
        )?;
        let reg = ProviderRegistry::new(Some(dir.path().to_owned()));
        assert_eq!(reg.names(), ["acme", "anthropic", "github", "openai"]);
        assert_eq!(reg.get("acme")?.name(), "acme");
        let err = reg
            .get("gitlab")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown provider `gitlab`"), "{err}");
        assert!(err.contains("acme, anthropic, github, openai"), "{err}");
        assert!(reg.get("../etc/passwd").is_err());
        Ok(())
    }
}
