//! # tern-codec
//!
//! MQTT control packets for protocol levels 3 (3.1), 4 (3.1.1) and 5 (5.0):
//! the packet model, encoding, and incremental decoding from a `BytesMut`.
//! No I/O and no async: the broker and the client own their sockets and call
//! [`decode`] on whatever bytes have arrived.
//!
//! - [`packet`]: the packet structs and enums, one model for every level.
//! - [`properties`]: MQTT 5 properties, one struct per packet family.
//! - [`reason`]: reason codes (MQTT 5), also used for 3.1.1 return codes.
//! - [`codec`]: fixed header, remaining length, `decode` and `Packet::encode`.
//! - [`topic`]: topic name and filter validation and matching rules.
//! - [`error`]: `DecodeError` (what the peer did wrong) and `EncodeError`.
//!
//! Payloads and strings are `Bytes` slices of the receive buffer: decoding
//! copies no payload, and a message can be shared by every subscriber.

mod bytestr;
pub mod codec;
pub mod error;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod topic;

pub use bytestr::ByteStr;
pub use codec::{PublishFrame, connect_level, decode, frame_size, locate_publish};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::*;
pub use reason::ReasonCode;
