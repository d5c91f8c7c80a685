//! `moat trace --network`: the proxied requests of a run.

use chrono::Local;
use moat_core::egress::NetworkRecord;
use moat_core::egress::RecordDecision;
use moat_core::store::RunStore;

use crate::cli::TraceArgs;
use crate::context::Context;
use crate::error::CliError;
use crate::error::CliResult;
use crate::error::EXIT_FAILURE;
use crate::output;

pub(crate) async fn trace(ctx: &Context, args: TraceArgs) -> CliResult<i32> {
    let store = ctx.store();
    let (runs, _) = store
        .list()
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    let run = RunStore::resolve(&runs, args.run.as_deref(), |_| true, "")
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e).hint("`moat list` shows every run"))?
        .clone();
    let records = store
        .read_network_log(&run.id)
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    if let Some(path) = &args.har {
        let har = to_har(&records);
        let bytes = serde_json::to_vec_pretty(&har).unwrap_or_default();
        moat_core::store::write_atomic(path, &bytes)
            .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
        output::info(
            ctx,
            format_args!("{} requests written to {}", records.len(), path.display()),
        );
        return Ok(0);
    }
    print(ctx, &args, &records);
    if !args.follow {
        return Ok(0);
    }
    crate::cmd::runs::follow(
        &store,
        &run.id,
        records.len(),
        |id| store.read_network_log(id),
        |new| print(ctx, &args, new),
    )
    .await
}

fn print(ctx: &Context, args: &TraceArgs, records: &[NetworkRecord]) {
    let mut text = String::new();
    for r in records {
        if ctx.args.json {
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
            text.push('\n');
            continue;
        }
        let ts = r.ts.with_timezone(&Local).format("%H:%M:%S%.3f");
        let status = r.status.map_or_else(|| "---".to_owned(), |s| s.to_string());
        text.push_str(&format!(
            "[{ts}] {} {} {status} ({}ms)",
            r.method,
            r.url,
            r.duration_ms.round()
        ));
        if r.decision == RecordDecision::Denied {
            text.push_str(&format!(
                " DENIED: {}",
                r.reason.as_deref().unwrap_or("blocked")
            ));
        } else if let Some(grant) = &r.grant {
            text.push_str(&format!(" [grant: {grant}]"));
        }
        text.push('\n');
        if args.verbose_headers || ctx.args.verbose {
            for (k, v) in &r.req_headers {
                text.push_str(&format!("    > {k}: {v}\n"));
            }
            for (k, v) in &r.resp_headers {
                text.push_str(&format!("    < {k}: {v}\n"));
            }
        }
    }
    output::data(&text);
}

/// HTTP Archive 1.2 (what Chrome DevTools imports). Bodies are not recorded, only sizes.
fn to_har(records: &[NetworkRecord]) -> serde_json::Value {
    let headers = |h: &std::collections::BTreeMap<String, String>| {
        h.iter()
            .map(|(k, v)| serde_json::json!({ "name": k, "value": v }))
            .collect::<Vec<_>>()
    };
    let entries: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let query: Vec<serde_json::Value> = r
                .url
                .split_once('?')
                .map(|(_, q)| {
                    q.split('&')
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').unwrap_or((p, ""));
                            serde_json::json!({ "name": k, "value": v })
                        })
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "startedDateTime": r.ts.to_rfc3339(),
                "time": r.duration_ms,
                "request": {
                    "method": r.method,
                    "url": r.url,
                    "httpVersion": "HTTP/1.1",
                    "cookies": [],
                    "headers": headers(&r.req_headers),
                    "queryString": query,
                    "headersSize": -1,
                    "bodySize": r.req_bytes,
                },
                "response": {
                    "status": r.status.unwrap_or(0),
                    "statusText": "",
                    "httpVersion": "HTTP/1.1",
                    "cookies": [],
                    "headers": headers(&r.resp_headers),
                    "content": {
                        "size": r.resp_bytes,
                        "mimeType": r.resp_headers.get("content-type").cloned().unwrap_or_default(),
                    },
                    "redirectURL": r.resp_headers.get("location").cloned().unwrap_or_default(),
                    "headersSize": -1,
                    "bodySize": r.resp_bytes,
                },
                "cache": {},
                "timings": { "send": 0, "wait": r.duration_ms, "receive": 0 },
                "comment": match (&r.grant, r.decision, &r.reason) {
                    (_, RecordDecision::Denied, reason) => format!("denied: {}", reason.as_deref().unwrap_or("")),
                    (Some(g), _, _) => format!("credential injected: {g}"),
                    _ => String::new(),
                },
            })
        })
        .collect();
    serde_json::json!({
        "log": {
            "version": "1.2",
            "creator": { "name": "moat", "version": crate::context::VERSION },
            "pages": [],
            "entries": entries,
        }
    })
}
