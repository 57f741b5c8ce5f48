//! Formatting shared by the commands: byte sizes, ages, and keys and values that may not be
//! text.

use anyhow::bail;

/// Prints the risk policy's storm-guard alarm when automated moves are frozen: an alarm an
/// operator must see wherever the cluster's state is shown. Silent when there is nothing to
/// say or nobody to ask (no quorum, no data plane).
pub async fn storm_alarm(c: &augur_client::Client) {
    if let Ok(storm) = c.storm_guard().await {
        if storm.frozen {
            println!(
                "ALARM: {}",
                storm
                    .alarm
                    .as_deref()
                    .unwrap_or("storm guard: automated moves frozen")
            );
        }
    }
}

/// `1536` -> `1.5 KiB`: sizes people read at a glance (JSON keeps exact numbers).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// An age in milliseconds as `850ms`, `12.3s`, `4m05s` or `3h12m`.
pub fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Milliseconds since the Unix epoch on this machine.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How keys and values are written on the command line and shown.
#[derive(Clone, Copy)]
pub struct Encoding {
    /// Hex digits instead of text.
    pub hex: bool,
}

impl Encoding {
    /// The bytes a command-line argument stands for.
    pub fn parse(&self, arg: &str) -> anyhow::Result<Vec<u8>> {
        if !self.hex {
            return Ok(arg.as_bytes().to_vec());
        }
        let digit = |d: u8| (d as char).to_digit(16);
        arg.as_bytes()
            .chunks(2)
            .map(|pair| match pair {
                [h, l] => match (digit(*h), digit(*l)) {
                    (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                    _ => bail!("{arg:?} is not hex"),
                },
                _ => bail!("{arg:?} is not hex: odd number of digits"),
            })
            .collect()
    }

    /// Bytes for a table: hex when asked, the text when it is printable UTF-8, escaped
    /// otherwise, so a terminal never receives control characters from a stored value.
    pub fn show(&self, b: &[u8]) -> String {
        if self.hex {
            return hex(b);
        }
        match std::str::from_utf8(b) {
            Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
            _ => b.escape_ascii().to_string(),
        }
    }

    /// The flags that resume a scan of `prefix` after `key`. A key shown as its text is
    /// given back as text; one that [`Self::show`] had to escape is given in hex with
    /// `--hex` (and the prefix with it), since an escape like `\x00` typed back is four
    /// other bytes, which would resume elsewhere and skip keys without a word.
    pub fn resume_hint(&self, prefix: &[u8], key: &[u8]) -> String {
        let verbatim = |b: &[u8]| self.parse(&self.show(b)).is_ok_and(|p| p == b);
        if verbatim(key) && verbatim(prefix) {
            return format!("--start-after {}", self.show(key));
        }
        let hex_enc = Encoding { hex: true };
        format!(
            "--hex --start-after {} (the prefix in hex: {:?})",
            hex_enc.show(key),
            hex_enc.show(prefix)
        )
    }

    /// Bytes for JSON: `{"<name>": text}` when UTF-8 (and not asked for hex), else
    /// `{"<name>_hex": digits}`, so a script always gets the exact bytes back.
    pub fn json(&self, name: &str, b: &[u8]) -> (String, serde_json::Value) {
        match std::str::from_utf8(b) {
            Ok(s) if !self.hex => (name.to_string(), s.into()),
            _ => (format!("{name}_hex"), hex(b).into()),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_junk_is_refused() {
        let e = Encoding { hex: true };
        assert_eq!(e.parse("00ff7a").unwrap(), vec![0, 255, 0x7a]);
        assert_eq!(e.show(&[0, 255, 0x7a]), "00ff7a");
        assert!(e.parse("abc").is_err());
        assert!(e.parse("zz").is_err());
        assert!(e.parse("é1").is_err());
        let t = Encoding { hex: false };
        assert_eq!(t.show(b"a\x1bb"), "a\\x1bb");
        assert_eq!(t.json("value", &[0xff]).0, "value_hex");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(age(65_000), "1m05s");
    }

    #[test]
    fn a_scan_resumes_from_exactly_the_last_key() {
        let t = Encoding { hex: false };
        assert_eq!(
            t.resume_hint(b"user", b"user/alice"),
            "--start-after user/alice"
        );
        // Shown escaped, typed back it would be other bytes: hex instead, prefix too.
        assert_eq!(
            t.resume_hint(b"user", b"user\0alice"),
            "--hex --start-after 7573657200616c696365 (the prefix in hex: \"75736572\")"
        );
        assert!(t
            .resume_hint(b"\xff", b"\xff1")
            .starts_with("--hex --start-after ff31"));
        let h = Encoding { hex: true };
        assert_eq!(h.resume_hint(&[0xff], &[0xff, 1]), "--start-after ff01");
    }
}
