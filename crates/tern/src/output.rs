//! How `tern sub` prints a message: payload only, `-v` topic and payload,
//! a `-F` format string (mosquitto_sub's `%` codes), or `--json`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use tern_client::Received;

/// The chosen output format.
#[derive(Debug, Clone)]
pub enum Format {
    Payload,
    TopicPayload,
    Template(String),
    Json,
}

/// Renders `message` as the bytes to print (without the trailing newline).
pub fn render(format: &Format, message: &Received) -> Vec<u8> {
    match format {
        Format::Payload => message.payload.to_vec(),
        Format::TopicPayload => {
            let mut out = format!("{} ", message.topic).into_bytes();
            out.extend_from_slice(&message.payload);
            out
        }
        Format::Template(t) => template(t, message),
        Format::Json => json(message).to_string().into_bytes(),
    }
}

/// Expands mosquitto_sub's format codes: %t topic, %p payload, %q QoS,
/// %r retain flag, %l payload length, %m packet id, %x / %X payload in hex,
/// %U Unix time, %I ISO-8601 time (UTC), %% a percent sign; and the escapes
/// \n, \t, \\ .
fn template(t: &str, m: &Received) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = t.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('t') => out.extend_from_slice(m.topic.as_bytes()),
                Some('p') => out.extend_from_slice(&m.payload),
                Some('q') => out.extend_from_slice((m.qos as u8).to_string().as_bytes()),
                Some('r') => out.push(if m.retain { b'1' } else { b'0' }),
                Some('l') => out.extend_from_slice(m.payload.len().to_string().as_bytes()),
                Some('m') => {
                    let id = m.packet_id.map_or(0, |id| id.get());
                    out.extend_from_slice(id.to_string().as_bytes())
                }
                Some('x') => out.extend(
                    m.payload
                        .iter()
                        .flat_map(|b| format!("{b:02x}").into_bytes()),
                ),
                Some('X') => out.extend(
                    m.payload
                        .iter()
                        .flat_map(|b| format!("{b:02X}").into_bytes()),
                ),
                Some('U') => out.extend_from_slice(unix_time().to_string().as_bytes()),
                Some('I') => out.extend_from_slice(iso_time(unix_time()).as_bytes()),
                Some('%') => out.push(b'%'),
                Some(other) => out.extend_from_slice(format!("%{other}").as_bytes()),
                None => out.push(b'%'),
            },
            '\\' => match chars.next() {
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('\\') => out.push(b'\\'),
                Some(other) => out.extend_from_slice(format!("\\{other}").as_bytes()),
                None => out.push(b'\\'),
            },
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH:MM:SSZ` from Unix seconds (civil-from-days, proleptic Gregorian).
fn iso_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One JSON object: topic, payload (UTF-8 text, or `payload_base64` when
/// binary), qos, retain, and the MQTT 5 properties that are present.
fn json(m: &Received) -> Value {
    let mut obj = Map::new();
    obj.insert("topic".into(), json!(m.topic.as_str()));
    match std::str::from_utf8(&m.payload) {
        Ok(text) => obj.insert("payload".into(), json!(text)),
        Err(_) => obj.insert("payload_base64".into(), json!(BASE64.encode(&m.payload))),
    };
    obj.insert("qos".into(), json!(m.qos as u8));
    obj.insert("retain".into(), json!(m.retain));
    let p = &m.properties;
    let mut props = Map::new();
    if let Some(v) = p.payload_format_indicator {
        props.insert("payload_format_indicator".into(), json!(u8::from(v)));
    }
    if let Some(v) = p.message_expiry_interval {
        props.insert("message_expiry_interval".into(), json!(v));
    }
    if let Some(v) = &p.content_type {
        props.insert("content_type".into(), json!(v.as_str()));
    }
    if let Some(v) = &p.response_topic {
        props.insert("response_topic".into(), json!(v.as_str()));
    }
    if let Some(v) = &p.correlation_data {
        match std::str::from_utf8(v) {
            Ok(text) => props.insert("correlation_data".into(), json!(text)),
            Err(_) => props.insert("correlation_data_base64".into(), json!(BASE64.encode(v))),
        };
    }
    if !p.subscription_identifiers.is_empty() {
        props.insert(
            "subscription_identifiers".into(),
            json!(p.subscription_identifiers),
        );
    }
    if !p.user_properties.is_empty() {
        let pairs: Vec<Value> = p
            .user_properties
            .iter()
            .map(|u| json!([u.name.as_str(), u.value.as_str()]))
            .collect();
        props.insert("user_properties".into(), Value::Array(pairs));
    }
    if !props.is_empty() {
        obj.insert("properties".into(), Value::Object(props));
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_client::{PublishProperties, QoS, UserProperty};

    fn message(payload: &'static [u8]) -> Received {
        Received {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "house/room1/temp".into(),
            packet_id: std::num::NonZeroU16::new(7),
            payload: Bytes::from_static(payload),
            properties: PublishProperties::default(),
        }
    }

    #[test]
    fn template_codes() {
        let out = template("%t %p q%q r%r l%l m%m %x %%\\n", &message(b"22.5"));
        assert_eq!(out, b"house/room1/temp 22.5 q1 r1 l4 m7 32322e35 %\n");
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso_time(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn json_text_binary_and_properties() {
        let mut m = message(b"22.5");
        m.properties.user_properties = vec![UserProperty {
            name: "site".into(),
            value: "paris".into(),
        }];
        m.properties.content_type = Some("text/plain".into());
        let v = json(&m);
        assert_eq!(v["payload"], "22.5");
        assert_eq!(v["qos"], 1);
        assert_eq!(v["retain"], true);
        assert_eq!(v["properties"]["user_properties"][0][1], "paris");
        assert_eq!(v["properties"]["content_type"], "text/plain");
        let v = json(&message(b"\xff\x00"));
        assert_eq!(v["payload_base64"], "/wA=");
        assert!(v.get("payload").is_none());
    }
}
