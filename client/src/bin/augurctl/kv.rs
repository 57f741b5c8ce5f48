//! `augurctl kv`: keys and values through the data API.
//!
//! Keys and values are text on the command line, or hex digits with `--hex`. Writes carry a
//! request id and are resent under it until the client's deadline; a write whose outcome is
//! still unknown then exits 4 (read the key to find out).

use crate::output::Encoding;
use crate::parse_expect;
use augur_client::{Client, DataClient};
use augur_proto::data::{Versioned, WriteOutcome, MAX_SCAN_LIMIT};
use augur_proto::ShardId;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct KvCmd {
    /// Keys and values are hex digits (input and output).
    #[arg(long, global = true)]
    hex: bool,
    #[command(subcommand)]
    op: KvOp,
}

#[derive(Subcommand)]
enum KvOp {
    /// Read a key (exit 1 if it is absent).
    Get {
        /// The key.
        key: String,
    },
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove a key.
    Del {
        /// The key.
        key: String,
    },
    /// Compare-and-set: write only if the key is at a version (exit 3 on a conflict).
    Cas {
        /// The key.
        key: String,
        /// The version it must be at, or `absent`.
        #[arg(long)]
        expect: String,
        /// The new value.
        #[arg(long, conflicts_with = "delete", required_unless_present = "delete")]
        value: Option<String>,
        /// Delete the key instead.
        #[arg(long)]
        delete: bool,
    },
    /// List keys in key order: with a prefix across every shard, or one shard's.
    Scan {
        /// Only keys that start with it (default: all keys).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Resume after this key (the last one of a previous page).
        #[arg(long)]
        start_after: Option<String>,
        /// Most items to print (1..=10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only this shard's keys.
        #[arg(long)]
        shard: Option<ShardId>,
    },
}

/// Runs one `kv` command.
pub async fn run(c: Client, cmd: KvCmd, json: bool) -> anyhow::Result<i32> {
    let enc = Encoding { hex: cmd.hex };
    let data = DataClient::new(c).await?;
    match cmd.op {
        KvOp::Get { key } => {
            let k = enc.parse(&key)?;
            let v = data.get(&k).await?;
            if json {
                let mut o = serde_json::Map::new();
                o.extend([enc.json("key", &k)]);
                o.insert("found".into(), v.is_some().into());
                if let Some(v) = &v {
                    o.insert("version".into(), v.version.into());
                    o.extend([enc.json("value", &v.value)]);
                }
                println!("{}", serde_json::Value::Object(o));
            }
            let Some(v) = v else {
                if !json {
                    eprintln!("{} is absent", enc.show(&k));
                }
                return Ok(1);
            };
            if !json {
                print_items(enc, &[(k, v)]);
            }
        }
        KvOp::Put { key, value } => {
            let version = data.put(enc.parse(&key)?, enc.parse(&value)?).await?;
            report_version(json, "written", version);
        }
        KvOp::Del { key } => {
            let version = data.delete(enc.parse(&key)?).await?;
            report_version(json, "deleted", version);
        }
        KvOp::Cas {
            key,
            expect,
            value,
            delete,
        } => {
            let expected = parse_expect(&expect)?;
            let value = match (value, delete) {
                (Some(v), false) => Some(enc.parse(&v)?),
                _ => None,
            };
            return match data.cas(enc.parse(&key)?, expected, value).await? {
                WriteOutcome::Applied { version } => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"committed": true, "version": version})
                        );
                    } else {
                        println!("committed at version {version}");
                    }
                    Ok(0)
                }
                WriteOutcome::Conflict { current } => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"committed": false, "current_version": current})
                        );
                    } else {
                        match current {
                            Some(v) => println!("conflict: the key is at version {v}"),
                            None => println!("conflict: the key is absent"),
                        }
                    }
                    Ok(3)
                }
            };
        }
        KvOp::Scan {
            prefix,
            start_after,
            limit,
            shard,
        } => {
            anyhow::ensure!(
                (1..=MAX_SCAN_LIMIT).contains(&limit),
                "--limit must be 1..={MAX_SCAN_LIMIT}"
            );
            let prefix = enc.parse(&prefix)?;
            let after = start_after.map(|a| enc.parse(&a)).transpose()?;
            let page = match shard {
                Some(s) => data.scan_shard(s, &prefix, after.as_deref(), limit).await?,
                None => data.scan_prefix(&prefix, after.as_deref(), limit).await?,
            };
            let next = page.items.last().filter(|_| page.more).map(|(k, _)| k);
            if json {
                let items: Vec<serde_json::Value> = page
                    .items
                    .iter()
                    .map(|(k, v)| {
                        let mut o = serde_json::Map::new();
                        o.extend([enc.json("key", k), enc.json("value", &v.value)]);
                        o.insert("version".into(), v.version.into());
                        serde_json::Value::Object(o)
                    })
                    .collect();
                let mut o = serde_json::Map::new();
                o.insert("items".into(), items.into());
                o.insert("more".into(), page.more.into());
                if let Some(k) = next {
                    let (name, v) = enc.json("next_start_after", k);
                    o.insert(name, v);
                }
                println!("{}", serde_json::Value::Object(o));
            } else {
                print_items(enc, &page.items);
                match next {
                    Some(k) => println!(
                        "({} items; more follow: {})",
                        page.items.len(),
                        enc.resume_hint(&prefix, k)
                    ),
                    None => println!("({} items)", page.items.len()),
                }
            }
        }
    }
    Ok(0)
}

fn report_version(json: bool, what: &str, version: u64) {
    if json {
        println!("{}", serde_json::json!({ "version": version }));
    } else {
        println!("{what} at version {version}");
    }
}

fn print_items(enc: Encoding, items: &[(Vec<u8>, Versioned)]) {
    let keys: Vec<String> = items.iter().map(|(k, _)| enc.show(k)).collect();
    let width = keys.iter().map(String::len).max().unwrap_or(0).clamp(3, 48);
    println!("{:<width$} {:>10}  VALUE", "KEY", "VERSION");
    for (k, (_, v)) in keys.iter().zip(items) {
        println!("{k:<width$} {:>10}  {}", v.version, enc.show(&v.value));
    }
}
