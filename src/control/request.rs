//! Reading one request line: strict JSON, then the protocol's shape.
//!
//! This file owns [`Request::parse_line`], the one function that turns the bytes of a request
//! line into a [`Request`]: the server calls it for every line, and the fuzz target
//! `control_request` (in `fuzz/`) and the property tests call the very same function. It does
//! no I/O and must never panic, whatever the bytes.

use super::{Request, VERSION};

impl Request {
    /// Reads one request line (without its newline): a JSON object in which no object has a
    /// key twice, with `"v"` equal to [`VERSION`], then a command of the protocol.
    ///
    /// The error is a message for the client (the server sends it as a `bad-request` reply):
    /// it says what is wrong — not JSON (with serde_json's line and column), a duplicate key, a
    /// missing or unsupported version, an unknown command or field.
    ///
    /// ```
    /// use warden::control::{Command, Request};
    ///
    /// let r = Request::parse_line(br#"{"v":1,"cmd":"stop","programs":["web"]}"#).unwrap();
    /// assert_eq!(r.command, Command::Stop { programs: vec!["web".into()] });
    /// let e = Request::parse_line(br#"{"v":1,"cmd":"status","cmd":"stop"}"#).unwrap_err();
    /// assert!(e.contains("duplicate key \"cmd\""), "{e}");
    /// ```
    pub fn parse_line(line: &[u8]) -> Result<Request, String> {
        let Strict(value) = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
        match value.get("v") {
            None => return Err("missing protocol version \"v\"".into()),
            Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
            Some(serde_json::Value::Number(n)) => {
                return Err(format!(
                    "protocol version {n} is not supported (this warden speaks {VERSION})"
                ));
            }
            Some(other) => {
                return Err(format!(
                    "protocol version \"v\" must be the integer {VERSION}, found {other}"
                ));
            }
        }
        serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))
    }
}

/// A JSON value in which no object has a key twice. serde_json keeps the last of duplicate keys,
/// so `{"cmd":"status","cmd":"stop"}` would run a stop that a reader of the line (a log, an
/// audit, a proxy that checks the first key) takes for a status: such a request is refused.
struct Strict(serde_json::Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Strict, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Strict(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Strict(serde_json::Value::Object(out)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(serde_json::Value::Array(out)))
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Strict, E> {
        Ok(Strict(
            serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into),
        ))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_unit<E>(self) -> std::result::Result<Strict, E> {
        Ok(Strict(serde_json::Value::Null))
    }

    fn visit_none<E>(self) -> std::result::Result<Strict, E> {
        Ok(Strict(serde_json::Value::Null))
    }
}
