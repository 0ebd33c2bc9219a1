//! What a message payload costs where it is stored, measured from its JSON text in one pass:
//! its nesting depth, and an upper bound of its size as a BSON document in the cold tier.
//! A leaf: addMessage refuses what the cold tier could not store, and the mover checks what
//! it writes against the same limits.

/// The shape of a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Nesting of arrays and objects: `{}` is 1, `{"a":[1]}` is 2; scalars are 0.
    pub depth: usize,
    /// At least the bytes of the value as a BSON document once `cold::document` has converted
    /// it (JSON text to `bson::Document`).
    pub bson_bytes: u64,
}

/// Measures valid JSON text (as a `RawValue` holds it), giving up (with the depth reached,
/// `max_depth + 1`) once it nests deeper than `max_depth`.
///
/// The BSON bound, per part of the JSON: a string is at most `5 + its text` (BSON: 4-byte
/// length, UTF-8, NUL; as a key: type byte, name, NUL; escapes only shrink); another scalar at
/// most 8; an array or object 5 (length and terminator); an array element also costs its type
/// byte and its index as a decimal key with NUL. This is why arrays of small numbers grow
/// most: `0,` is 2 bytes of JSON and up to 17 of BSON.
pub fn measure(json: &str, max_depth: usize) -> Shape {
    let bytes = json.as_bytes();
    // Per open container: Some(next index) for an array, None for an object.
    let mut open: Vec<Option<u64>> = Vec::new();
    let mut depth = 0;
    let mut size: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | b',' | b':') {
            i += 1;
            continue;
        }
        if matches!(byte, b'}' | b']') {
            open.pop();
            i += 1;
            continue;
        }
        // A value starts here (or an object's key, which costs no more than a value).
        if let Some(Some(index)) = open.last_mut() {
            size += 2 + decimal_digits(*index);
            *index += 1;
        }
        match byte {
            b'{' | b'[' => {
                size += 5;
                open.push((byte == b'[').then_some(0));
                depth = depth.max(open.len());
                if depth > max_depth {
                    break;
                }
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                size += 5 + (i - start) as u64;
            }
            _ => {
                // A number, true, false or null: up to the next delimiter.
                size += 8;
                while i < bytes.len()
                    && !matches!(bytes[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    i += 1;
                }
            }
        }
    }
    Shape {
        depth,
        bson_bytes: size,
    }
}

fn decimal_digits(n: u64) -> u64 {
    n.checked_ilog10().map_or(1, |log| u64::from(log) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bson_len(json: &str) -> u64 {
        let document: bson::Document = serde_json::from_str(json).unwrap();
        document.to_vec().unwrap().len() as u64
    }

    #[test]
    fn depth_counts_nested_containers() {
        assert_eq!(measure("{}", 64).depth, 1);
        assert_eq!(measure(r#"{"a":[1,{"b":"]}"}]}"#, 64).depth, 3);
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert_eq!(measure(&format!(r#"{{"a":{deep}}}"#), 64).depth, 65);
    }

    #[test]
    fn the_bson_bound_holds_and_is_close_for_jwe_payloads() {
        let jwe = r#"{"protected":"eyJlbmMiOiJ4Y2hhY2hhMjBwb2x5MTMwNV9pZXRmIn0","iv":"aXY","ciphertext":"Y2lwaGVy\"\u00e9","tag":"dGFn"}"#;
        let numbers = format!(r#"{{"a":[{}]}}"#, vec!["0"; 5000].join(","));
        let mixed = r#"{"x":[true,null,-1.5e3,"s",{"k":[[]]}],"y":{}}"#;
        for json in [jwe, numbers.as_str(), mixed] {
            let (bound, real) = (measure(json, 64).bson_bytes, bson_len(json));
            assert!(bound >= real, "{bound} < {real}: {json}");
        }
        let (bound, real) = (measure(jwe, 64).bson_bytes, bson_len(jwe));
        assert!(bound < real + 64, "{bound} vs {real}");
    }
}
