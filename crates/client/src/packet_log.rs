//! The packet log (`tern pub -d`, `RUST_LOG=tern_client=debug`): one
//! readable line per packet, in the words mosquitto_pub and mosquitto_sub
//! use for `-d`, so that users of either read the other's output.
//!
//! ```text
//! Client sensor-1 sending CONNECT (v5, c1, k60, u0, p0, w0)
//! Client sensor-1 received CONNACK (s0, rc 0x00)
//! Client sensor-1 sending PUBLISH (d0, q1, r0, m1, 'house/room1/temp', ... (4 bytes))
//! Client sensor-1 received PUBACK (Mid: 1, RC: 0x00)
//! ```

use tern_codec::{Packet, SubscriptionOptions};

/// One packet as a log line (without "Client ID sending/received").
pub(crate) fn line(packet: &Packet) -> String {
    let name = packet.name();
    match packet {
        Packet::Connect(c) => format!(
            "{name} (v{}, c{}, k{}, u{}, p{}, w{})",
            c.protocol.name(),
            u8::from(c.clean_start),
            c.keep_alive,
            u8::from(c.username.is_some()),
            u8::from(c.password.is_some()),
            u8::from(c.will.is_some()),
        ),
        Packet::ConnAck(a) => format!(
            "{name} (s{}, rc {:#04x})",
            u8::from(a.session_present),
            a.reason as u8
        ),
        Packet::Publish(p) => format!(
            "{name} (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
            u8::from(p.dup),
            p.qos as u8,
            u8::from(p.retain),
            p.packet_id.map_or(0, |id| id.get()),
            p.topic,
            p.payload.len()
        ),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            format!("{name} (Mid: {}, RC: {:#04x})", a.packet_id, a.reason as u8)
        }
        Packet::Subscribe(s) => {
            let filters: Vec<String> = s
                .filters
                .iter()
                .map(|f| {
                    format!(
                        "Topic: {}, QoS: {}, Options: {:#04x}",
                        f.filter,
                        f.options.qos as u8,
                        options_byte(&f.options)
                    )
                })
                .collect();
            format!("{name} (Mid: {}, {})", s.packet_id, filters.join("; "))
        }
        Packet::SubAck(a) => format!("{name} (Mid: {}, RC: {})", a.packet_id, codes(&a.reasons)),
        Packet::Unsubscribe(u) => {
            let topics: Vec<&str> = u.filters.iter().map(|f| f.as_str()).collect();
            format!(
                "{name} (Mid: {}, Topic: {})",
                u.packet_id,
                topics.join(", ")
            )
        }
        Packet::UnsubAck(a) => format!("{name} (Mid: {})", a.packet_id),
        Packet::Disconnect(d) => format!("{name} (RC: {:#04x})", d.reason as u8),
        Packet::Auth(a) => format!("{name} (RC: {:#04x})", a.reason as u8),
        Packet::PingReq | Packet::PingResp => name.to_owned(),
    }
}

/// The subscription options byte as it goes on the wire.
fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

fn codes(reasons: &[tern_codec::ReasonCode]) -> String {
    let codes: Vec<String> = reasons
        .iter()
        .map(|r| format!("{:#04x}", *r as u8))
        .collect();
    codes.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU16;
    use tern_codec::{Publish, QoS, SubAck};

    #[test]
    fn lines_read_like_mosquittos() {
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "house/room1/temp".into(),
            packet_id: NonZeroU16::new(3),
            payload: "22.5".into(),
            properties: Default::default(),
        });
        assert_eq!(
            line(&publish),
            "PUBLISH (d0, q1, r1, m3, 'house/room1/temp', ... (4 bytes))"
        );
        let suback = Packet::SubAck(SubAck {
            packet_id: NonZeroU16::new(1).unwrap(),
            reasons: vec![tern_codec::ReasonCode::GrantedQoS1],
            properties: Default::default(),
        });
        assert_eq!(line(&suback), "SUBACK (Mid: 1, RC: 0x01)");
        assert_eq!(line(&Packet::PingReq), "PINGREQ");
    }
}
