//! Credential rules and the injection rule of SPEC §4.2.
//!
//! For each rule whose hosts match the request: a placeholder present in the credential header
//! (also inside a Basic `base64(user:placeholder)` value) is replaced with the real value; no
//! credential header at all means the formatted real value is injected; a header with some
//! other value is left untouched.

use std::sync::Arc;

use http::HeaderMap;
use http::HeaderName;
use http::HeaderValue;
use moat_core::creds::InjectionFormat;
use moat_core::creds::InjectionRule;
use moat_core::creds::base64_encode;
use zeroize::Zeroizing;

/// Where the proxy gets a run's credential rules from.
///
/// Called once per intercepted request, so implementations can rotate credentials while a run
/// is live. Implementations must be cheap: return a shared snapshot.
pub trait CredentialSource: Send + Sync {
    /// The current rules of the run.
    fn rules(&self) -> Arc<[InjectionRule]>;
}

/// A fixed set of rules, for runs whose grants do not change.
#[derive(Debug, Clone, Default)]
pub struct StaticCredentials(Arc<[InjectionRule]>);

impl StaticCredentials {
    /// Wraps `rules`.
    pub fn new(rules: Vec<InjectionRule>) -> Self {
        Self(rules.into())
    }
}

impl CredentialSource for StaticCredentials {
    fn rules(&self) -> Arc<[InjectionRule]> {
        self.0.clone()
    }
}

/// A snapshot of a run's rules with what every request needs precomputed: the parsed header
/// names, the pairs the scrubber replaces (real value → placeholder, also in their
/// Basic-encoded form) and the header names that are always redacted in records.
pub(crate) struct CompiledRules {
    pub(crate) rules: Arc<[InjectionRule]>,
    /// Per rule, in order: the credential header (`None` when the name is invalid) and the
    /// formatted real value ready to insert.
    compiled: Vec<(Option<HeaderName>, Option<HeaderValue>)>,
    pub(crate) scrub_pairs: Arc<[ScrubPair]>,
    pub(crate) headers: Vec<String>,
}

/// A secret and what replaces it; the secret half is wiped on drop.
pub(crate) type ScrubPair = (Zeroizing<Vec<u8>>, Vec<u8>);

impl CompiledRules {
    pub(crate) fn new(rules: Arc<[InjectionRule]>) -> Self {
        let mut pairs: Vec<ScrubPair> = Vec::new();
        for r in rules.iter() {
            let real = r.value.expose();
            if real.is_empty() {
                continue;
            }
            pairs.push((
                Zeroizing::new(real.as_bytes().to_vec()),
                r.placeholder.as_bytes().to_vec(),
            ));
            if let InjectionFormat::Basic { username } = &r.format {
                let enc = base64_encode(format!("{username}:{real}").as_bytes());
                let ph = base64_encode(format!("{username}:{}", r.placeholder).as_bytes());
                pairs.push((Zeroizing::new(enc.into_bytes()), ph.into_bytes()));
            }
        }
        let headers = rules
            .iter()
            .map(|r| r.header.to_ascii_lowercase())
            .collect();
        let compiled = rules
            .iter()
            .map(|r| {
                (
                    HeaderName::from_bytes(r.header.as_bytes()).ok(),
                    sensitive(r.format.render(r.value.expose()).as_bytes()).ok(),
                )
            })
            .collect();
        Self {
            rules,
            compiled,
            scrub_pairs: pairs.into(),
            headers,
        }
    }
}

/// What injection did to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Injection {
    /// No rule covers the host.
    NotCovered,
    /// A rule covers the host but the request carried another real value.
    LeftUntouched,
    /// The real value was added or substituted for the placeholder, for this grant.
    Injected(String),
}

/// Whether any rule covers `host:port`.
pub(crate) fn covers(rules: &[InjectionRule], host: &str, port: u16) -> bool {
    rules
        .iter()
        .any(|r| r.hosts.iter().any(|h| h.matches(host, port)))
}

/// Applies the injection rule for `host:port` to `headers`.
pub(crate) fn apply(
    compiled: &CompiledRules,
    host: &str,
    port: u16,
    headers: &mut HeaderMap,
) -> Injection {
    let mut outcome = Injection::NotCovered;
    for (rule, (name, rendered)) in compiled.rules.iter().zip(&compiled.compiled) {
        if !rule.hosts.iter().any(|h| h.matches(host, port)) {
            continue;
        }
        let Some(name) = name else {
            continue;
        };
        let real = rule.value.expose();
        let mut present = headers.get_all(name).iter();
        let Some(first) = present.next() else {
            if let Some(value) = rendered {
                headers.insert(name.clone(), value.clone());
                return Injection::Injected(rule.grant.clone());
            }
            continue;
        };
        if present.next().is_none() {
            // The usual case: one credential header.
            if let Some(nv) = substitute(first, &rule.placeholder, real) {
                headers.insert(name.clone(), nv);
                return Injection::Injected(rule.grant.clone());
            }
            outcome = Injection::LeftUntouched;
            continue;
        }
        let mut replaced = false;
        let new_values: Vec<HeaderValue> = headers
            .get_all(name)
            .iter()
            .map(|v| match substitute(v, &rule.placeholder, real) {
                Some(nv) => {
                    replaced = true;
                    nv
                }
                None => v.clone(),
            })
            .collect();
        if replaced {
            headers.remove(name);
            for v in new_values {
                headers.append(name.clone(), v);
            }
            return Injection::Injected(rule.grant.clone());
        }
        outcome = Injection::LeftUntouched;
    }
    outcome
}

/// Replaces the placeholder in one header value, looking inside Basic credentials too.
fn substitute(value: &HeaderValue, placeholder: &str, real: &str) -> Option<HeaderValue> {
    if placeholder.is_empty() {
        return None;
    }
    let bytes = value.as_bytes();
    if memchr::memmem::find(bytes, placeholder.as_bytes()).is_some() {
        let out = crate::scrub::replace_all(bytes, placeholder.as_bytes(), real.as_bytes());
        return sensitive(&out).ok();
    }
    let text = value.to_str().ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(rest.trim())?;
    let pair = String::from_utf8(decoded).ok()?;
    if !pair.contains(placeholder) {
        return None;
    }
    let swapped = pair.replace(placeholder, real);
    sensitive(format!("{scheme} {}", base64_encode(swapped.as_bytes())).as_bytes()).ok()
}

fn sensitive(s: &[u8]) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut v = HeaderValue::from_bytes(s)?;
    v.set_sensitive(true);
    Ok(v)
}

/// Standard base64 with optional padding; `None` on any invalid input.
pub(crate) fn base64_decode(input: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::DecodePaddingMode;
    use base64::engine::GeneralPurpose;
    use base64::engine::GeneralPurposeConfig;
    // Clients differ in padding; accept it present or absent.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(input).ok()
}

#[cfg(test)]
mod tests {
    use moat_core::Secret;
    use moat_core::host::HostPattern;

    use super::*;

    fn rule(format: InjectionFormat, header: &str) -> InjectionRule {
        InjectionRule {
            grant: "github".into(),
            hosts: vec![HostPattern::parse("api.github.com").unwrap_or_else(|e| panic!("{e}"))],
            header: header.into(),
            format,
            value: Secret::new("REAL"),
            placeholder: "PH".into(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                *k,
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "x-access-token:ghp_x",
        ] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).as_deref(),
                Some(s.as_bytes())
            );
        }
        assert_eq!(base64_decode("Zg=="), Some(b"f".to_vec()));
        assert_eq!(base64_decode("Z"), None);
        assert_eq!(base64_decode("Zm9v!"), None);
    }

    #[test]
    fn injection_matrix() {
        let rules = CompiledRules::new(vec![rule(InjectionFormat::Bearer, "authorization")].into());
        // No header: injected.
        let mut h = HeaderMap::new();
        assert_eq!(
            apply(&rules, "api.github.com", 443, &mut h),
            Injection::Injected("github".into())
        );
        assert_eq!(h["authorization"], "Bearer REAL");
        // Placeholder: replaced.
        let mut h = headers(&[("authorization", "Bearer PH")]);
        assert!(matches!(
            apply(&rules, "api.github.com", 443, &mut h),
            Injection::Injected(_)
        ));
        assert_eq!(h["authorization"], "Bearer REAL");
        // Another real value: untouched.
        let mut h = headers(&[("authorization", "Bearer OTHER")]);
        assert_eq!(
            apply(&rules, "api.github.com", 443, &mut h),
            Injection::LeftUntouched
        );
        assert_eq!(h["authorization"], "Bearer OTHER");
        // Other host: nothing.
        let mut h = HeaderMap::new();
        assert_eq!(
            apply(&rules, "example.com", 443, &mut h),
            Injection::NotCovered
        );
        assert!(h.is_empty());
        // Basic with the placeholder inside.
        let mut h = headers(&[(
            "authorization",
            &format!("Basic {}", base64_encode(b"x-access-token:PH")),
        )]);
        assert!(matches!(
            apply(&rules, "api.github.com", 443, &mut h),
            Injection::Injected(_)
        ));
        assert_eq!(
            h["authorization"],
            format!("Basic {}", base64_encode(b"x-access-token:REAL")).as_str()
        );
    }
}
