//! The CLI side of the admin API: `sluice tenants`, `sluice keys
//! create|list|revoke|rotate|grant|ungrant`, `sluice usage`, `sluice policy`. Each command
//! is one HTTP call; answers print as tables, or as the API's JSON with
//! `--json`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use crate::cli::{AdminArgs, KeysCommand, PolicyCommand, TenantsCommand};

struct Admin {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
    json: bool,
}

impl Admin {
    fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let token = args
            .token
            .clone()
            .context("the admin API needs its token: pass --token or set SLUICE_ADMIN_TOKEN")?;
        Ok(Self {
            http: reqwest::blocking::Client::new(),
            base: args.admin_url.trim_end_matches('/').to_owned(),
            token,
            json: args.json,
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/admin/v1{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = v["error"]["message"].as_str().map_or_else(|| v.to_string(), str::to_owned);
            let details = v["error"]["details"]
                .as_array()
                .map(|d| d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            anyhow::bail!("{status}: {msg}{}{details}", if details.is_empty() { "" } else { "\n" });
        }
        Ok(v)
    }

    fn print(&self, v: &Value, table: impl FnOnce(&Value) -> String) -> anyhow::Result<ExitCode> {
        let out = if self.json { serde_json::to_string_pretty(v)? } else { table(v) };
        println!("{}", out.trim_end());
        Ok(ExitCode::SUCCESS)
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        Value::Object(o) => {
            o.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// Lays rows out in aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let parts: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut out, &headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    for r in rows {
        line(&mut out, r);
    }
    out
}

fn tenant_table(t: &Value) -> String {
    let mut out = format!(
        "tenant {} ({})\n  tier: {}\n  environment: {}\n  groups: {}\n  labels: {}\n  time zone: {}\n  overrides: {}\n  exempt: {}\n",
        s(&t["id"]),
        s(&t["source"]),
        s(&t["tier"]),
        s(&t["environment"]),
        s(&t["groups"]),
        s(&t["labels"]),
        s(&t["time_zone"]),
        t["overrides"].as_object().map_or_else(
            || "-".into(),
            |o| o
                .iter()
                .map(|(k, v)| format!("{k}={}", s(&v["amount"])))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        s(&t["exempt"]),
    );
    if let Some(keys) = t["keys"].as_array().filter(|k| !k.is_empty()) {
        out.push_str("keys:\n");
        out.push_str(&keys_table(keys));
    }
    out
}

fn keys_table(keys: &[Value]) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                s(&k["id"]),
                s(&k["labels"]),
                grants(&k["overrides"]),
                s(&k["created_at"]),
                s(&k["expires_at"]),
                if k["revoked_at"].is_null() {
                    "active".into()
                } else {
                    format!("revoked {}", s(&k["revoked_at"]))
                },
            ]
        })
        .collect();
    table(&["key", "labels", "grants", "created", "expires", "state"], &rows)
}

/// A key's grants: `limit=amount`, with `until …` if it ends.
fn grants(o: &Value) -> String {
    let Some(o) = o.as_object().filter(|o| !o.is_empty()) else {
        return "-".into();
    };
    o.iter()
        .map(|(limit, g)| match g["until"].as_str() {
            Some(u) => format!("{limit}={} until {u}", s(&g["amount"])),
            None => format!("{limit}={}", s(&g["amount"])),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn tenants(args: &AdminArgs, cmd: TenantsCommand) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let a = Admin::new(args)?;
    match cmd {
        TenantsCommand::List => {
            let v = a.call(Method::GET, "/tenants", None)?;
            a.print(&v, |v| {
                let rows: Vec<Vec<String>> = v["data"]
                    .as_array()
                    .map(|d| {
                        d.iter()
                            .map(|t| {
                                vec![
                                    s(&t["id"]),
                                    s(&t["tier"]),
                                    s(&t["environment"]),
                                    s(&t["groups"]),
                                    t["keys"].as_array().map_or(0, Vec::len).to_string(),
                                    s(&t["source"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["tenant", "tier", "environment", "groups", "keys", "source"], &rows)
            })
        }
        TenantsCommand::Get { id } => {
            let v = a.call(Method::GET, &format!("/tenants/{id}"), None)?;
            a.print(&v, tenant_table)
        }
        TenantsCommand::Create { id, name, tier, environment, groups, labels, time_zone } => {
            let labels: serde_json::Map<String, Value> =
                labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let body = json!({
                "id": id, "name": name, "tier": tier, "environment": environment,
                "groups": groups, "labels": labels, "time_zone": time_zone,
            });
            let v = a.call(Method::POST, "/tenants", Some(body))?;
            a.print(&v, tenant_table)
        }
        TenantsCommand::Set { id, tier, environment, groups, time_zone } => {
            let mut body = serde_json::Map::new();
            if let Some(t) = tier {
                body.insert("tier".into(), json!(t));
            }
            if let Some(e) = environment {
                body.insert("environment".into(), json!(e));
            }
            if let Some(g) = groups {
                let g: Vec<&str> = g.split(',').map(str::trim).filter(|x| !x.is_empty()).collect();
                body.insert("groups".into(), json!(g));
            }
            if let Some(z) = time_zone {
                body.insert("time_zone".into(), json!(z));
            }
            let v = a.call(Method::PATCH, &format!("/tenants/{id}"), Some(Value::Object(body)))?;
            a.print(&v, tenant_table)
        }
        TenantsCommand::Grant { id, limit, amount, until } => {
            let v = a.call(
                Method::PUT,
                &format!("/tenants/{id}/overrides/{}", encode(&limit)),
                Some(json!({ "amount": amount, "until": until })),
            )?;
            a.print(&v, tenant_table)
        }
        TenantsCommand::Ungrant { id, limit } => {
            a.call(Method::DELETE, &format!("/tenants/{id}/overrides/{}", encode(&limit)), None)?;
            println!("grant of {limit} removed from {id}");
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Delete { id } => {
            a.call(Method::DELETE, &format!("/tenants/{id}"), None)?;
            println!("tenant {id} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Limit names contain `/` (`DeepSeek-V3.1/rpm`): escape for a path.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

pub fn keys(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match cmd {
        KeysCommand::Create { admin, tenant, id, labels, expires } => {
            let a = Admin::new(&admin)?;
            let labels: serde_json::Map<String, Value> =
                labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let v = a.call(
                Method::POST,
                &format!("/tenants/{tenant}/keys"),
                Some(json!({ "id": id, "labels": labels, "expires_at": expires })),
            )?;
            a.print(&v, |v| {
                format!(
                    "key {} for tenant {}\nsecret: {}\n\nGive the secret to the client now: it is not shown again.",
                    s(&v["key"]["id"]),
                    s(&v["key"]["tenant"]),
                    s(&v["secret"])
                )
            })
        }
        KeysCommand::List { admin, tenant } => {
            let a = Admin::new(&admin)?;
            let v = a.call(Method::GET, &format!("/tenants/{tenant}/keys"), None)?;
            a.print(&v, |v| keys_table(v["data"].as_array().map_or(&[][..], Vec::as_slice)))
        }
        KeysCommand::Revoke { admin, tenant, key } => {
            let a = Admin::new(&admin)?;
            a.call(Method::DELETE, &format!("/tenants/{tenant}/keys/{key}"), None)?;
            println!("key {key} of {tenant} revoked");
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate { admin, tenant, key } => {
            let a = Admin::new(&admin)?;
            let v = a.call(Method::POST, &format!("/tenants/{tenant}/keys/{key}/rotate"), None)?;
            a.print(&v, |v| {
                format!(
                    "key {key} revoked; new key {}\nsecret: {}\n\nGive the secret to the client now: it is not shown again.",
                    s(&v["key"]["id"]),
                    s(&v["secret"])
                )
            })
        }
        KeysCommand::Grant { admin, tenant, key, limit, amount, until } => {
            let a = Admin::new(&admin)?;
            let v = a.call(
                Method::PUT,
                &format!("/tenants/{tenant}/keys/{key}/overrides/{}", encode(&limit)),
                Some(json!({ "amount": amount, "until": until })),
            )?;
            a.print(&v, |v| keys_table(std::slice::from_ref(v)))
        }
        KeysCommand::Ungrant { admin, tenant, key, limit } => {
            let a = Admin::new(&admin)?;
            a.call(
                Method::DELETE,
                &format!("/tenants/{tenant}/keys/{key}/overrides/{}", encode(&limit)),
                None,
            )?;
            println!("grant of {limit} removed from key {key} of {tenant}");
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Generate { .. } | KeysCommand::Hash => {
            anyhow::bail!("handled locally")
        }
    }
}

pub fn usage(
    args: &AdminArgs,
    tenant: &str,
    reset: bool,
    limit: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let a = Admin::new(args)?;
    if reset {
        let v = a.call(
            Method::POST,
            &format!("/tenants/{tenant}/usage/reset"),
            Some(json!({ "limit": limit })),
        )?;
        return a.print(&v, |v| format!("{} counter(s) of {tenant} reset", s(&v["reset"])));
    }
    let v = a.call(Method::GET, &format!("/tenants/{tenant}/usage"), None)?;
    a.print(&v, |v| {
        let rows: Vec<Vec<String>> = v["limits"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|r| {
                        // A budget is shown in money (its `money` object).
                        let n = |field: &str| match r["money"][field].as_str() {
                            Some(m) => format!("{m} {}", s(&r["money"]["currency"])),
                            None => s(&r[field]),
                        };
                        vec![
                            s(&r["limit"]),
                            s(&r["window"]),
                            s(&r["partition"]),
                            n("amount"),
                            n("used"),
                            n("remaining"),
                            s(&r["reset_at"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "usage of {tenant} at {}\n{}",
            s(&v["at"]),
            table(&["limit", "window", "for", "amount", "used", "remaining", "reset"], &rows)
        )
    })
}

pub fn policy(args: &AdminArgs, cmd: &PolicyCommand) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let a = Admin::new(args)?;
    match cmd {
        PolicyCommand::Show => {
            let v = a.call(Method::GET, "/policy", None)?;
            a.print(&v, |v| s(&v["report"]))
        }
        PolicyCommand::Reload => {
            let v = a.call(Method::POST, "/policy/reload", None)?;
            a.print(&v, |v| {
                let w = v["warnings"].as_array().map(Vec::len).unwrap_or(0);
                format!("policy reloaded ({w} warning(s))\n{}", s(&v["warnings"]))
            })
        }
    }
}
