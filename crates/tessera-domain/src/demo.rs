//! The demo shared domain (`demo/`): the domain file and each trust's part of a small
//! clinical record, described in `docs/demo-domain.md`. Dates in the records are written
//! relative to today (`{{DAYS_AGO:n}}`) so that care relationships and their expiry look
//! the same whenever the demo is loaded.

/// The demo domain file: three trusts, their sites and wards, users for every role.
pub const DOMAIN_FILE: &str = include_str!("../demo/demo-domain.toml");

/// Each trust's clinical record (a transaction bundle) and the site that writes it.
pub const RECORDS: &[(&str, &str)] = &[
    ("rx1-general", include_str!("../demo/clinical-rx1.json")),
    ("rx2-southbank-hc", include_str!("../demo/clinical-rx2.json")),
    ("rx3-riverside-house", include_str!("../demo/clinical-rx3.json")),
];

/// Replaces `{{DAYS_AGO:n}}` with the UTC date-time `n` days before `now_unix_seconds`.
pub fn relative_dates(text: &str, now_unix_seconds: i64) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{DAYS_AGO:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "{{DAYS_AGO:".len()..];
        let Some(end) = after.find("}}") else { break };
        let days: i64 = after[..end].parse().unwrap_or(0);
        out.push_str(&format_utc(now_unix_seconds - days * 86_400));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `YYYY-MM-DDThh:mm:ssZ` for Unix seconds (civil-from-days, proleptic Gregorian).
fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", tod / 3600, tod % 3600 / 60, tod % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_relative() {
        // 2026-11-27T12:00:00Z
        let now = 1_795_780_800;
        assert_eq!(super::format_utc(now), "2026-11-27T12:00:00Z");
        assert_eq!(super::relative_dates(r#"{"a":"{{DAYS_AGO:2}}","b":"{{DAYS_AGO:0}}"}"#, now), r#"{"a":"2026-11-25T12:00:00Z","b":"2026-11-27T12:00:00Z"}"#);
        for (_, r) in super::RECORDS {
            let json: serde_json::Value = serde_json::from_str(&super::relative_dates(r, now)).unwrap();
            assert_eq!(json["type"], "transaction");
        }
    }
}
