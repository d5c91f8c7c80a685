//! Canonical JSON and the audit entry.
//!
//! The canonical form (see the crate docs) is written by hand rather than through
//! `serde_json::to_vec`, so it does not depend on serde_json's `preserve_order` feature, which
//! another crate in a build could switch on and which would change key order.

use std::borrow::Cow;

use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// One audit log entry, as parsed back from its canonical bytes.
///
/// Its `Serialize` output is for display (`--json`); the hashed form is [`Entry::to_canonical`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the log, from 0; also the entry's Merkle leaf index.
    pub seq: u64,
    /// When the entry was appended, RFC 3339 UTC with microseconds.
    pub ts: String,
    /// The run the log belongs to.
    pub run_id: String,
    /// The event type, e.g. `run.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Event details.
    pub data: Value,
}

impl Entry {
    /// The canonical bytes of this entry: the exact bytes that are hashed.
    pub fn to_canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        write_entry(
            &mut out,
            self.seq,
            &self.ts,
            &self.run_id,
            &self.event_type,
            &self.data,
        );
        out
    }
}

/// Writes `value` in canonical JSON.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_canonical(out, item);
            }
            out.push(b'}');
        }
    }
}

/// The canonical JSON bytes of `value`.
pub fn to_canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(&mut out, value);
    out
}

/// Writes an entry in canonical form: keys `data`, `run_id`, `seq`, `ts`, `type` in that
/// (sorted) order.
pub(crate) fn write_entry(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &str,
    run_id: &str,
    event_type: &str,
    data: &Value,
) {
    out.extend_from_slice(b"{\"data\":");
    write_canonical(out, data);
    out.extend_from_slice(b",\"run_id\":");
    write_string(out, run_id);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"ts\":");
    write_string(out, ts);
    out.extend_from_slice(b",\"type\":");
    write_string(out, event_type);
    out.push(b'}');
}

/// The fields of an entry read back without copying `data`, for fast verification.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntryView<'a> {
    pub(crate) seq: u64,
    #[serde(borrow)]
    pub(crate) ts: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) run_id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub(crate) event_type: Cow<'a, str>,
    #[serde(borrow)]
    #[expect(
        dead_code,
        reason = "parsed so that a malformed data field is rejected"
    )]
    pub(crate) data: &'a RawValue,
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping is the canonical one: `"`, `\` and control characters are
    // escaped (short forms for \b \f \n \r \t, `\u00xx` otherwise), everything else is literal.
    if let Err(never) = serde_json::to_writer(&mut *out, s) {
        // Writing a `str` into a Vec cannot fail; keep the output well formed regardless.
        debug_assert!(false, "{never}");
    }
}

fn write_number(out: &mut Vec<u8>, n: &serde_json::Number) {
    if let Some(i) = n.as_u64() {
        out.extend_from_slice(i.to_string().as_bytes());
    } else if let Some(i) = n.as_i64() {
        out.extend_from_slice(i.to_string().as_bytes());
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        // serde_json prints finite floats in their shortest round-trip form and non-finite ones
        // as `null`.
        if let Err(never) = serde_json::to_writer(&mut *out, &f) {
            debug_assert!(false, "{never}");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_are_sorted_bytewise_and_whitespace_is_dropped() {
        let v =
            json!({"b": 1, "a": [true, null, {"z": "x", "Z": -2, "é": 1.5}], "aa": "q\"\n\u{1}"});
        assert_eq!(
            String::from_utf8(to_canonical(&v)).expect("utf-8"),
            r#"{"a":[true,null,{"Z":-2,"z":"x","é":1.5}],"aa":"q\"\n\u0001","b":1}"#
        );
    }

    #[test]
    fn serialized_entry_parses_back_to_the_same_canonical_bytes() {
        let e = Entry {
            seq: 1,
            ts: "2026-01-02T03:04:05.000006Z".into(),
            run_id: "run_x".into(),
            event_type: "ssh.sign".into(),
            data: json!({"host": "github.com", "allowed": true}),
        };
        let back: Entry =
            serde_json::from_slice(&serde_json::to_vec(&e).expect("serialize")).expect("parse");
        assert_eq!(back.to_canonical(), e.to_canonical());
    }

    #[test]
    fn entry_layout_is_fixed() {
        let e = Entry {
            seq: 7,
            ts: "2026-01-02T03:04:05.000006Z".into(),
            run_id: "run_0123456789ab".into(),
            event_type: "container.exited".into(),
            data: json!({"exit_code": 0}),
        };
        assert_eq!(
            String::from_utf8(e.to_canonical()).expect("utf-8"),
            r#"{"data":{"exit_code":0},"run_id":"run_0123456789ab","seq":7,"ts":"2026-01-02T03:04:05.000006Z","type":"container.exited"}"#
        );
    }

    fn json_strategy() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_form_round_trips(v in json_strategy()) {
            let bytes = to_canonical(&v);
            let back: Value = serde_json::from_slice(&bytes).expect("canonical output parses");
            prop_assert_eq!(to_canonical(&back), bytes);
        }
    }
}
