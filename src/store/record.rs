//! A message as the functions store it in the connection's `msg` hash:
//! `<seq>\t<size>\t<received ms>[\t<did>...]\n<QueuedMessage JSON>`. The header lets a function
//! re-index, size-limit, age and delete a message without decoding JSON; a cold record (the body
//! moved to MongoDB) is the header alone.

/// A record after its sequence number (the add function prepends it); an empty body makes a
/// cold record.
pub fn record_tail(size: usize, received_ms: i64, dids: &[String], body: &str) -> String {
    let mut tail = String::with_capacity(body.len() + 32 + dids.len() * 64);
    tail.push_str(&size.to_string());
    tail.push('\t');
    tail.push_str(&received_ms.to_string());
    for did in dids {
        tail.push('\t');
        tail.push_str(did);
    }
    tail.push('\n');
    tail.push_str(body);
    tail
}

/// A record read back (by the mover).
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub size: usize,
    pub received_ms: i64,
    pub dids: Vec<&'a str>,
    /// The QueuedMessage JSON; empty for a cold record.
    pub body: &'a str,
}

impl<'a> Record<'a> {
    pub fn parse(record: &'a str) -> Option<Self> {
        let (header, body) = record.split_once('\n')?;
        let mut fields = header.split('\t');
        let _seq = fields.next()?;
        let size = fields.next()?.parse().ok()?;
        let received_ms = fields.next()?.parse().ok()?;
        Some(Self {
            size,
            received_ms,
            dids: fields.collect(),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let dids = vec!["did:key:z6Mk".to_owned()];
        let record = format!(
            "7\t{}",
            record_tail(5, 1_700_000_000_123, &dids, "{\"a\":1}")
        );
        assert_eq!(
            Record::parse(&record),
            Some(Record {
                size: 5,
                received_ms: 1_700_000_000_123,
                dids: vec!["did:key:z6Mk"],
                body: "{\"a\":1}",
            })
        );
    }

    #[test]
    fn a_cold_record_has_an_empty_body() {
        let dids = vec!["a".to_owned(), "b".to_owned()];
        let record = format!("-3\t{}", record_tail(12, 1_700_000_000_123, &dids, ""));
        let parsed = Record::parse(&record).unwrap();
        assert_eq!(parsed.dids, ["a", "b"]);
        assert_eq!(parsed.body, "");
    }
}
