//! Error mapping (RFC 7247 §6): XMPP stanza error conditions to SIP failure
//! responses and back. The rows follow RFC 7247's tables as recorded in the
//! project's reference notes; where the notes mark a row as unconfirmed, the choice
//! is the most specific code of the same meaning, and `docs/error-mapping.md` says so.

/// The defined condition of an error stanza's `<error/>` (RFC 6120 §8.3.2), or
/// `undefined-condition` when it names none.
pub fn stanza_error_condition(stanza: &crate::xml::Element) -> &str {
    use crate::xml::ns;
    stanza
        .find(ns::SERVER, "error")
        .and_then(|e| {
            e.elements()
                .find(|c| c.ns == ns::STANZAS_ERR && c.name != "text")
        })
        .map_or("undefined-condition", |c| &*c.name)
}

/// The 22 stanza error conditions of RFC 6120 §8.3.3.
pub const STANZA_CONDITIONS: [&str; 22] = [
    "bad-request",
    "conflict",
    "feature-not-implemented",
    "forbidden",
    "gone",
    "internal-server-error",
    "item-not-found",
    "jid-malformed",
    "not-acceptable",
    "not-allowed",
    "not-authorized",
    "policy-violation",
    "recipient-unavailable",
    "redirect",
    "registration-required",
    "remote-server-not-found",
    "remote-server-timeout",
    "resource-constraint",
    "service-unavailable",
    "subscription-required",
    "undefined-condition",
    "unexpected-request",
];

pub use crate::sip::reason_phrase;

/// XMPP condition → SIP response code (RFC 7247 §6.1).
pub fn condition_to_sip(condition: &str) -> (u16, &'static str) {
    let code = match condition {
        "bad-request" => 400,
        "conflict" => 400,
        "feature-not-implemented" => 501,
        "forbidden" => 403,
        "gone" => 410,
        "internal-server-error" => 500,
        "item-not-found" => 404,
        "jid-malformed" => 400,
        "not-acceptable" => 406,
        "not-allowed" => 403,
        "not-authorized" => 401,
        "policy-violation" => 403,
        "recipient-unavailable" => 480,
        "redirect" => 302,
        "registration-required" => 400,
        "remote-server-not-found" => 404,
        "remote-server-timeout" => 408,
        "resource-constraint" => 500,
        "service-unavailable" => 503,
        "subscription-required" => 400,
        "unexpected-request" => 491,
        // undefined-condition, and anything unknown.
        _ => 500,
    };
    (code, reason_phrase(code))
}

/// SIP final failure code → XMPP condition (RFC 7247 §6.2). Codes without a row
/// are treated as the x00 code of their class, as RFC 3261 §8.1.3.2 does.
pub fn sip_to_condition(code: u16) -> &'static str {
    match code {
        301 => "gone",
        400 => "bad-request",
        401 | 407 => "not-authorized",
        402 => "bad-request",
        403 => "forbidden",
        404 => "item-not-found",
        405 => "feature-not-implemented",
        406 => "not-acceptable",
        408 => "remote-server-timeout",
        410 => "gone",
        413 | 414 => "policy-violation",
        415 | 416 | 421 | 488 => "not-acceptable",
        420 => "feature-not-implemented",
        423 => "resource-constraint",
        480 | 486 => "recipient-unavailable",
        481 => "item-not-found",
        482 | 483 => "not-acceptable",
        484 | 485 => "item-not-found",
        487 => "service-unavailable",
        489 | 513 => "policy-violation",
        491 => "unexpected-request",
        493 => "bad-request",
        500 => "internal-server-error",
        501 => "feature-not-implemented",
        502 => "remote-server-not-found",
        503 => "service-unavailable",
        504 => "remote-server-timeout",
        505 => "not-acceptable",
        604 => "item-not-found",
        606 => "not-acceptable",
        _ => match code / 100 {
            3 => "redirect",
            5 => "internal-server-error",
            6 => "service-unavailable",
            _ => "bad-request",
        },
    }
}

/// The error `type` RFC 6120 §8.3.3 gives each condition.
pub fn error_type(condition: &str) -> &'static str {
    match condition {
        "bad-request" | "jid-malformed" | "not-acceptable" | "policy-violation" | "redirect" => {
            "modify"
        }
        "forbidden" | "not-authorized" | "registration-required" | "subscription-required" => {
            "auth"
        }
        "recipient-unavailable"
        | "remote-server-timeout"
        | "resource-constraint"
        | "unexpected-request" => "wait",
        _ => "cancel",
    }
}

/// The SIP final failure codes the documentation tables list.
pub const SIP_FAILURE_CODES: [u16; 46] = [
    300, 301, 302, 305, 380, 400, 401, 402, 403, 404, 405, 406, 407, 408, 410, 413, 414, 415, 416,
    420, 421, 423, 480, 481, 482, 483, 484, 485, 486, 487, 488, 489, 491, 493, 500, 501, 502, 503,
    504, 505, 513, 600, 603, 604, 606, 699,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_the_issue_names() {
        assert_eq!(sip_to_condition(480), "recipient-unavailable");
        assert_eq!(
            condition_to_sip("recipient-unavailable"),
            (480, "Temporarily Unavailable")
        );
        assert_eq!(condition_to_sip("item-not-found").0, 404);
        assert_eq!(sip_to_condition(404), "item-not-found");
        assert_eq!(condition_to_sip("service-unavailable").0, 503);
        assert_eq!(condition_to_sip("no-such-condition").0, 500);
    }

    #[test]
    fn every_condition_maps_to_a_failure_and_back_to_a_related_condition() {
        for c in STANZA_CONDITIONS {
            let (code, phrase) = condition_to_sip(c);
            assert!((300..700).contains(&code), "{c}");
            assert!(!phrase.is_empty());
            let back = sip_to_condition(code);
            assert!(STANZA_CONDITIONS.contains(&back), "{c} -> {code} -> {back}");
            assert!(["modify", "auth", "wait", "cancel"].contains(&error_type(c)));
        }
        // Conditions whose code maps straight back.
        for c in [
            "bad-request",
            "forbidden",
            "gone",
            "internal-server-error",
            "item-not-found",
            "not-acceptable",
            "not-authorized",
            "recipient-unavailable",
            "redirect",
            "remote-server-timeout",
            "service-unavailable",
            "unexpected-request",
            "feature-not-implemented",
        ] {
            assert_eq!(sip_to_condition(condition_to_sip(c).0), c);
        }
    }

    #[test]
    fn every_failure_code_maps_to_a_condition() {
        for code in 300..700 {
            assert!(
                STANZA_CONDITIONS.contains(&sip_to_condition(code)),
                "{code}"
            );
        }
        assert_eq!(sip_to_condition(499), "bad-request");
        assert_eq!(sip_to_condition(599), "internal-server-error");
        assert_eq!(sip_to_condition(699), "service-unavailable");
    }
}
