//! DNS for s2s (RFC 6120 §3.2): `_xmpp-server._tcp` SRV queries and answers,
//! A/AAAA for the targets, RFC 2782 ordering. Pure message building and parsing
//! on hickory-proto; the host sends the bytes (UDP, then TCP when truncated).

use std::fmt;
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::rng::Rng;

/// The port used when a domain has no SRV records.
pub const DEFAULT_PORT: u16 = 5269;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsError {
    BadName(String),
    /// The answer could not be decoded or does not answer our query.
    BadAnswer(String),
    /// The server answered with an error code other than NXDOMAIN.
    Server(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::BadName(t) => write!(f, "not a DNS name: {t}"),
            DnsError::BadAnswer(t) => write!(f, "unusable DNS answer: {t}"),
            DnsError::Server(t) => write!(f, "DNS server error: {t}"),
        }
    }
}

impl std::error::Error for DnsError {}

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Without the trailing dot.
    pub target: String,
}

/// What an SRV lookup said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SrvAnswer {
    Records {
        records: Vec<Srv>,
        ttl: u32,
    },
    /// A single record with target "." (RFC 2782): the service is not offered.
    NoService,
    /// NXDOMAIN or no SRV records: fall back to the domain's addresses on 5269.
    None,
}

/// A decoded answer; `truncated` asks for the same query over TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<T> {
    pub truncated: bool,
    pub value: T,
}

fn query(id: u16, name: &str, rtype: RecordType) -> Result<Vec<u8>, DnsError> {
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    let name = Name::from_ascii(&fqdn).map_err(|e| DnsError::BadName(format!("{fqdn}: {e}")))?;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, rtype));
    m.to_vec().map_err(|e| DnsError::BadName(e.to_string()))
}

/// The `_xmpp-server._tcp.<domain>` SRV query.
pub fn srv_query(id: u16, domain: &str) -> Result<Vec<u8>, DnsError> {
    query(id, &format!("_xmpp-server._tcp.{domain}"), RecordType::SRV)
}

/// An A (`v6` false) or AAAA query.
pub fn addr_query(id: u16, host: &str, v6: bool) -> Result<Vec<u8>, DnsError> {
    query(id, host, if v6 { RecordType::AAAA } else { RecordType::A })
}

fn decode(bytes: &[u8], id: u16) -> Result<Option<Message>, DnsError> {
    let m = Message::from_vec(bytes).map_err(|e| DnsError::BadAnswer(e.to_string()))?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return Err(DnsError::BadAnswer(
            "the answer's id or type does not match the query".into(),
        ));
    }
    match m.metadata.response_code {
        ResponseCode::NoError => Ok(Some(m)),
        ResponseCode::NXDomain => Ok(None),
        other => Err(DnsError::Server(format!("{other:?}"))),
    }
}

/// The TC bit of a response to query `id`, read even when a truncated body does
/// not decode.
fn truncated(bytes: &[u8], id: u16) -> bool {
    let (Some(header), Some(&flags)) = (bytes.get(..2), bytes.get(2)) else {
        return false;
    };
    bytes.len() >= 12 && header == id.to_be_bytes() && flags & 0x80 != 0 && flags & 0x02 != 0
}

pub fn parse_srv(bytes: &[u8], id: u16) -> Result<Answer<SrvAnswer>, DnsError> {
    if truncated(bytes, id) {
        return Ok(Answer {
            truncated: true,
            value: SrvAnswer::None,
        });
    }
    let Some(m) = decode(bytes, id)? else {
        return Ok(Answer {
            truncated: false,
            value: SrvAnswer::None,
        });
    };
    let mut records = Vec::new();
    let mut ttl = u32::MAX;
    for r in &m.answers {
        if let RData::SRV(srv) = &r.data {
            ttl = ttl.min(r.ttl);
            let target = srv.target.to_ascii();
            records.push(Srv {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: target.trim_end_matches('.').to_ascii_lowercase(),
            });
        }
    }
    let value = match records.as_slice() {
        [] => SrvAnswer::None,
        [only] if only.target.is_empty() => SrvAnswer::NoService,
        _ => SrvAnswer::Records {
            records: records
                .into_iter()
                .filter(|r| !r.target.is_empty())
                .collect(),
            ttl,
        },
    };
    Ok(Answer {
        truncated: false,
        value,
    })
}

/// Addresses and the smallest TTL among them.
pub fn parse_addrs(bytes: &[u8], id: u16) -> Result<Answer<(Vec<IpAddr>, u32)>, DnsError> {
    if truncated(bytes, id) {
        return Ok(Answer {
            truncated: true,
            value: (Vec::new(), 0),
        });
    }
    let Some(m) = decode(bytes, id)? else {
        return Ok(Answer {
            truncated: false,
            value: (Vec::new(), 0),
        });
    };
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for r in &m.answers {
        match &r.data {
            RData::A(a) => addrs.push(IpAddr::V4(a.0)),
            RData::AAAA(a) => addrs.push(IpAddr::V6(a.0)),
            _ => continue,
        }
        ttl = ttl.min(r.ttl);
    }
    Ok(Answer {
        truncated: false,
        value: (addrs, if ttl == u32::MAX { 0 } else { ttl }),
    })
}

/// RFC 2782 order: ascending priority; within a priority, a weighted random
/// choice, repeated (weight 0 records come first so they keep a small chance).
pub fn order(mut records: Vec<Srv>, rng: &mut Rng) -> Vec<Srv> {
    records.sort_by_key(|r| (r.priority, r.weight));
    let mut out = Vec::with_capacity(records.len());
    while let Some(first) = records.first().map(|r| r.priority) {
        let mut group: Vec<Srv> = Vec::new();
        records.retain(|r| {
            if r.priority == first {
                group.push(r.clone());
                false
            } else {
                true
            }
        });
        while !group.is_empty() {
            let total: u64 = group.iter().map(|r| u64::from(r.weight)).sum();
            let pick = if total == 0 {
                0
            } else {
                rng.next_u64() % (total + 1)
            };
            let mut running = 0u64;
            let idx = group
                .iter()
                .position(|r| {
                    running += u64::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(idx));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SRV};
    use hickory_proto::rr::Record;

    fn answer(id: u16, records: Vec<Record>, code: ResponseCode) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.metadata.response_code = code;
        m.answers = records;
        m.to_vec().expect("encode")
    }

    fn srv(p: u16, w: u16, port: u16, target: &str) -> Record {
        let name = Name::from_ascii("_xmpp-server._tcp.example.org.").expect("name");
        Record::from_rdata(
            name,
            300,
            RData::SRV(SRV::new(
                p,
                w,
                port,
                Name::from_ascii(target).expect("target"),
            )),
        )
    }

    #[test]
    fn queries_encode() {
        let q = srv_query(7, "example.org").expect("query");
        let m = Message::from_vec(&q).expect("decode");
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "_xmpp-server._tcp.example.org."
        );
        assert!(srv_query(1, "bad name!").is_err());
        assert!(addr_query(2, "xmpp.example.org", true).is_ok());
    }

    #[test]
    fn srv_answers() {
        let bytes = answer(
            7,
            vec![
                srv(10, 5, 5269, "a.example.org."),
                srv(20, 0, 5270, "B.example.org."),
            ],
            ResponseCode::NoError,
        );
        let a = parse_srv(&bytes, 7).expect("parse");
        let SrvAnswer::Records { records, ttl } = a.value else {
            panic!("records")
        };
        assert_eq!(ttl, 300);
        assert_eq!(records[1].target, "b.example.org");
        let dot = answer(8, vec![srv(0, 0, 0, ".")], ResponseCode::NoError);
        assert_eq!(
            parse_srv(&dot, 8).expect("parse").value,
            SrvAnswer::NoService
        );
        let nx = answer(9, vec![], ResponseCode::NXDomain);
        assert_eq!(parse_srv(&nx, 9).expect("parse").value, SrvAnswer::None);
        assert!(parse_srv(&bytes, 99).is_err(), "wrong id");
        let fail = answer(10, vec![], ResponseCode::ServFail);
        assert!(matches!(parse_srv(&fail, 10), Err(DnsError::Server(_))));
        assert!(parse_srv(b"\x00\x07garbage", 7).is_err());
        let mut tc = bytes.clone();
        tc[2] |= 0x02;
        assert!(parse_srv(&tc, 7).expect("parse").truncated);
    }

    #[test]
    fn address_answers() {
        let name = Name::from_ascii("a.example.org.").expect("name");
        let rec = Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 1)));
        let bytes = answer(3, vec![rec], ResponseCode::NoError);
        let a = parse_addrs(&bytes, 3).expect("parse");
        assert_eq!(a.value, (vec!["192.0.2.1".parse().expect("ip")], 60));
    }

    #[test]
    fn rfc_2782_order() {
        let recs = vec![
            Srv {
                priority: 20,
                weight: 0,
                port: 1,
                target: "c".into(),
            },
            Srv {
                priority: 10,
                weight: 60,
                port: 1,
                target: "a".into(),
            },
            Srv {
                priority: 10,
                weight: 40,
                port: 1,
                target: "b".into(),
            },
        ];
        let mut first_a = 0;
        let mut rng = Rng::new(5);
        for _ in 0..1000 {
            let o = order(recs.clone(), &mut rng);
            assert_eq!(o.len(), 3);
            assert_eq!(o[2].target, "c", "priority 20 comes last");
            if o[0].target == "a" {
                first_a += 1;
            }
        }
        // Weight 60 against 40: "a" leads about 60 % of the time.
        assert!((500..700).contains(&first_a), "{first_a}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng::new(9);
        for _ in 0..2000 {
            let len = (rng.next_u64() % 64) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let _ = parse_srv(&junk, 1);
            let _ = parse_addrs(&junk, 1);
        }
    }
}
