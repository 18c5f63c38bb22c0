//! Reading one request line: strict JSON, then the protocol's shape.
//!
//! This file owns [`Request::parse_line`], the one function that turns the bytes of a request
//! line into a [`Request`]: the server calls it for every line, and the fuzz target
//! `control_request` (in `fuzz/`) and the property tests call the very same function. It does
//! no I/O and must never panic, whatever the bytes.

use serde::Deserialize;

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
        let Some(object) = value.as_object() else {
            return Err(format!(
                "a request must be a JSON object, found {}",
                json_kind(&value)
            ));
        };
        match object.get("v") {
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
        // serde reads an enum's tag from a variant's index as well as from its name, so
        // `"cmd": 2` would run a stop: the command must be written as its name.
        match object.get("cmd") {
            None | Some(serde_json::Value::String(_)) => {}
            Some(other) => {
                return Err(format!(
                    "command \"cmd\" must be a string such as \"status\", found {other}"
                ));
            }
        }
        let request = Request::deserialize(&value).map_err(|e| format!("bad request: {e}"))?;
        // serde ignores unknown fields beside a command without fields (`deny_unknown_fields`
        // does not reach a unit variant of an internally tagged enum): every field of the line
        // must be one the request has, holding the value written.
        let meant = serde_json::to_value(&request).map_err(|e| format!("bad request: {e}"))?;
        for (key, v) in object {
            match meant.get(key) {
                Some(m) if m == v => {}
                Some(m) => return Err(format!("bad request: field `{key}` read as {m}")),
                None => {
                    let cmd = meant.get("cmd").unwrap_or(&serde_json::Value::Null);
                    return Err(format!(
                        "bad request: unknown field `{key}` for command {cmd}"
                    ));
                }
            }
        }
        Ok(request)
    }
}

/// What a JSON value is, for a message: "an array", "a number", ...
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Command;

    /// Found by the `control_request` fuzz target: `{"v":1,"cmd":0}` was a `status` and
    /// `{"v":1,"cmd":2,"programs":["web"]}` a stop, serde taking the variant's index for its
    /// name; a log, an audit or a proxy's filter that reads "cmd" sees no command there.
    #[test]
    fn a_command_is_named_never_numbered() {
        for (line, found) in [
            (r#"{"v":1,"cmd":0}"#, "0"),
            (r#"{"v":1,"cmd":2,"programs":["web"]}"#, "2"),
            (r#"{"v":1,"cmd":5,"dry_run":true}"#, "5"),
            (
                r#"{"v":1,"cmd":["stop"],"programs":["web"]}"#,
                r#"["stop"]"#,
            ),
            (r#"{"v":1,"cmd":null}"#, "null"),
        ] {
            let e = Request::parse_line(line.as_bytes()).unwrap_err();
            assert_eq!(
                e,
                format!(r#"command "cmd" must be a string such as "status", found {found}"#),
                "{line}"
            );
        }
        let r = Request::parse_line(br#"{"v":1,"cmd":"stop","programs":["web"]}"#).unwrap();
        assert_eq!(
            r.command,
            Command::Stop {
                programs: vec!["web".into()]
            }
        );
    }

    /// Found by the `control_request` fuzz target: `{"v":1,"mv":1,"cmd":"reopen-logs"}` was
    /// accepted, the unknown field ignored, where every other command refuses one.
    #[test]
    fn unknown_fields_are_refused_for_every_command() {
        for line in [
            r#"{"v":1,"mv":1,"cmd":"reopen-logs"}"#,
            r#"{"v":1,"cmd":"reopen-logs","programs":["web"]}"#,
            r#"{"v":1,"cmd":"status","x":null}"#,
            r#"{"v":1,"cmd":"reload","dry_run":false,"force":true}"#,
            r#"{"v":1,"cmd":"scale","program":"w","instances":2,"x":1}"#,
        ] {
            let e = Request::parse_line(line.as_bytes()).unwrap_err();
            assert!(e.contains("unknown field"), "{line}: {e}");
        }
        let e = Request::parse_line(br#"{"v":1,"mv":1,"cmd":"reopen-logs"}"#).unwrap_err();
        assert_eq!(
            e,
            r#"bad request: unknown field `mv` for command "reopen-logs""#
        );
        // Fields left to their defaults may be written or not.
        for line in [
            r#"{"v":1,"cmd":"reopen-logs"}"#,
            r#"{"v":1,"cmd":"status"}"#,
            r#"{"v":1,"cmd":"status","programs":[]}"#,
            r#"{"v":1,"cmd":"reload"}"#,
            r#"{"v":1,"cmd":"reload","dry_run":false}"#,
        ] {
            assert!(Request::parse_line(line.as_bytes()).is_ok(), "{line}");
        }
    }

    #[test]
    fn a_request_that_is_not_an_object_says_so() {
        for (line, kind) in [
            ("[]", "an array"),
            ("5", "a number"),
            (r#""status""#, "a string"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            assert_eq!(
                Request::parse_line(line.as_bytes()).unwrap_err(),
                format!("a request must be a JSON object, found {kind}"),
                "{line}"
            );
        }
        let e = Request::parse_line(br#"{"v":1}"#).unwrap_err();
        assert!(e.contains("cmd"), "{e}");
    }
}
