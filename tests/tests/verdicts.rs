//! The verdict on each of the 18 negotiation rows, as the configuration loader gives
//! it for a real configuration file: refused (with the error an admin reads), loaded
//! with warnings, or loaded.

use isthmus_core::config::{Config, Negotiation};

#[test]
fn eighteen_rows() {
    let mut out = String::new();
    for row in Negotiation::all_rows() {
        let text = format!(
            "[gateway]\nserved_domains = [\"sip.example.com\"]\n\n[[partner]]\ndomain = \"xmpp.example.org\"\ntls = \"{}\"\nsasl = \"{}\"\ndialback = {}\n",
            row.tls.as_str(),
            row.sasl.as_str(),
            row.dialback
        );
        let methods: Vec<&str> = row.methods().iter().map(|m| m.as_str()).collect();
        out.push_str(&format!("row {:>2}: {}\n", row.row_number(), row.label()));
        out.push_str(&format!(
            "  methods: {}\n",
            if methods.is_empty() {
                "none".to_owned()
            } else {
                methods.join(", ")
            }
        ));
        match Config::from_toml(&text) {
            Ok(loaded) if loaded.warnings.is_empty() => out.push_str("  verdict: valid\n"),
            Ok(loaded) => {
                let rules: Vec<&str> = loaded.warnings.iter().map(|w| w.rule.name()).collect();
                out.push_str(&format!("  verdict: warning ({})\n", rules.join(", ")));
                for w in &loaded.warnings {
                    out.push_str(&format!("  warning: {w}\n"));
                }
            }
            Err(e) => out.push_str(&format!("  verdict: invalid\n  error: {e}\n")),
        }
    }
    insta::assert_snapshot!("eighteen_rows", out);
}
