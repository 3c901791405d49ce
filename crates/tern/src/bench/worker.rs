//! The data path: one task per connection, publisher, subscriber or idle.
//!
//! Each task owns its socket and two buffers and waits on one `select!`:
//! the socket's readiness, the run's phase, and a timer (rate, window
//! patience, counter flush, keep-alive). A publisher copies a pre-encoded
//! PUBLISH per message into its output buffer and patches the packet id and
//! the payload header in place, so sending allocates nothing; many messages
//! go out in one write. A subscriber decodes with `tern-codec` straight from
//! its read buffer and times every message against one clock read per read.

use std::io;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tern_codec::{Packet, ProtocolVersion, PubAck, Publish, QoS};
use tokio::io::Interest;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bench::connection::Conn;
use crate::bench::stamp::{Stamp, now_ns};
use crate::bench::stats::{FLUSH_EVERY, Progress, Stats, Tally};

/// Where a run is; every task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Publishers publish.
    Run,
    /// Publishers stop; subscribers go on receiving (drain).
    Stop,
    /// Every connection sends DISCONNECT and closes.
    Close,
}

/// A publisher stops encoding while this many bytes wait to be written.
const OUT_HIGH: usize = 64 * 1024;
/// Read buffer growth step of publishers and subscribers.
const READ_CHUNK: usize = 64 * 1024;
/// How long a publisher waits for its window to open before it counts the
/// missing deliveries as lost and goes on.
pub const WINDOW_PATIENCE: Duration = Duration::from_secs(1);
/// How long closing may take per connection.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// A packet id is free, waits for PUBACK/PUBREC, or for PUBCOMP.
const FREE: u8 = 0;
const AWAIT_ACK: u8 = 1;
const AWAIT_COMP: u8 = 2;

/// Packet ids of a publisher's QoS 1/2 messages in flight, at most the
/// broker's Receive Maximum at a time; ids cycle through 1..=limit.
struct PacketIds {
    /// Indexed by id; index 0 unused.
    state: Vec<u8>,
    next: u16,
    in_use: usize,
    limit: u16,
}

impl PacketIds {
    fn new(limit: u16) -> Self {
        let limit = limit.max(1);
        PacketIds {
            state: vec![FREE; usize::from(limit) + 1],
            next: 1,
            in_use: 0,
            limit,
        }
    }

    fn free(&self) -> u64 {
        (usize::from(self.limit) - self.in_use) as u64
    }

    /// The next free id; `None` when `limit` are in flight.
    fn allocate(&mut self) -> Option<NonZeroU16> {
        if self.in_use >= usize::from(self.limit) {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id >= self.limit { 1 } else { id + 1 };
            let state = &mut self.state[usize::from(id)];
            if *state == FREE {
                *state = AWAIT_ACK;
                self.in_use += 1;
                return NonZeroU16::new(id);
            }
        }
    }

    /// PUBACK, PUBCOMP, or a failed PUBREC: the id is free again. Ids the
    /// broker made up are ignored.
    fn release(&mut self, id: NonZeroU16) {
        match self.state.get_mut(usize::from(id.get())) {
            Some(state) if *state != FREE => {
                *state = FREE;
                self.in_use -= 1;
            }
            _ => {}
        }
    }

    /// PUBREC: now waiting for PUBCOMP. False for an id not in flight.
    fn received(&mut self, id: NonZeroU16) -> bool {
        match self.state.get_mut(usize::from(id.get())) {
            Some(state) if *state != FREE => {
                *state = AWAIT_COMP;
                true
            }
            _ => false,
        }
    }
}

/// One PUBLISH encoded once; each message is a copy with its packet id and
/// payload header patched in.
struct Template {
    bytes: Bytes,
    id_at: Option<usize>,
    stamp_at: usize,
}

impl Template {
    fn new(topic: &str, qos: QoS, size: usize, version: ProtocolVersion) -> Result<Self, String> {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(NonZeroU16::MIN),
            payload: Bytes::from(vec![0u8; size]),
            properties: Default::default(),
        };
        let mut bytes = BytesMut::new();
        Packet::Publish(publish)
            .encode(version, &mut bytes)
            .map_err(|e| format!("cannot encode PUBLISH to '{topic}': {e}"))?;
        // The payload ends the packet; the packet id comes right before the
        // properties (one byte, their length 0, at MQTT 5).
        let stamp_at = bytes.len() - size;
        let properties = usize::from(version == ProtocolVersion::V5);
        let id_at = (qos != QoS::AtMostOnce).then(|| stamp_at - properties - 2);
        Ok(Template {
            bytes: bytes.freeze(),
            id_at,
            stamp_at,
        })
    }

    /// Appends one message.
    fn put(&self, out: &mut BytesMut, id: Option<NonZeroU16>, stamp: Stamp) {
        let base = out.len();
        out.extend_from_slice(&self.bytes);
        if let (Some(at), Some(id)) = (self.id_at, id) {
            out[base + at..base + at + 2].copy_from_slice(&id.get().to_be_bytes());
        }
        stamp.write(&mut out[base + self.stamp_at..]);
    }
}

/// When the next message is due at a fixed rate.
struct Pacer {
    start: Instant,
    /// Messages per second; 0: unlimited.
    rate: f64,
    sent: u64,
}

impl Pacer {
    /// Messages due at `now` and not yet sent.
    fn due(&self, now: Instant) -> u64 {
        if self.rate <= 0.0 {
            return u64::MAX;
        }
        let Some(elapsed) = now.checked_duration_since(self.start) else {
            return 0;
        };
        let due = (elapsed.as_secs_f64() * self.rate) as u64 + 1;
        due.saturating_sub(self.sent)
    }

    /// When the next message is due (`None`: unlimited).
    fn next(&self) -> Option<Instant> {
        (self.rate > 0.0)
            .then(|| self.start + Duration::from_secs_f64(self.sent as f64 / self.rate))
    }
}

/// What a publisher needs besides its connection.
pub struct PublisherJob {
    pub topic: String,
    /// Publisher id written into every payload.
    pub id: u32,
    /// Index into the progress slice (window).
    pub local: usize,
    /// Deliveries per message, when the subscribers are in this process.
    pub deliveries: Option<u64>,
    pub qos: QoS,
    pub size: usize,
    /// Messages per second; 0: unlimited.
    pub rate: f64,
    /// The `--inflight` window; 0: none.
    pub window: u64,
    /// When its first message is due.
    pub start: Instant,
}

/// Why a connection ended before its time.
type Lost = String;

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn notified(progress: Option<&Progress>) {
    match progress {
        Some(p) => p.notify.notified().await,
        None => std::future::pending().await,
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Writes what the socket takes now; keeps the rest.
fn write_some(conn: &mut Conn) -> Result<bool, Lost> {
    if conn.out.is_empty() {
        return Ok(false);
    }
    match conn.stream.try_write(&conn.out) {
        Ok(n) => {
            conn.out.advance(n);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(format!("write failed: {e}")),
    }
}

/// Reads what the socket has; false if nothing was there.
fn read_some(conn: &mut Conn) -> Result<bool, Lost> {
    if conn.rbuf.capacity() - conn.rbuf.len() < READ_CHUNK / 2 {
        conn.rbuf.reserve(READ_CHUNK);
    }
    match conn.stream.try_read_buf(&mut conn.rbuf) {
        Ok(0) => Err("the broker closed the connection".into()),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(format!("read failed: {e}")),
    }
}

fn next_packet(conn: &mut Conn) -> Result<Option<Packet>, Lost> {
    tern_codec::decode(&mut conn.rbuf, conn.version, usize::MAX)
        .map_err(|e| format!("undecodable packet from the broker: {e}"))
}

fn encode(conn: &mut Conn, packet: &Packet) {
    // Acks and pings always encode.
    let _ = packet.encode(conn.version, &mut conn.out);
}

fn broker_disconnect(packet: &Packet) -> Lost {
    match packet {
        Packet::Disconnect(d) => format!(
            "the broker disconnected: {}{}",
            tern_client::describe(d.reason),
            d.properties
                .reason_string
                .as_ref()
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        ),
        other => format!("unexpected {} from the broker", other.name()),
    }
}

/// The keep-alive ping is due after this long without writing.
fn ping_after(conn: &Conn) -> Option<Duration> {
    conn.keep_alive.map(|k| k / 2)
}

/// Ends a connection's task: counts and reports an unexpected end, or
/// closes cleanly once the run is over.
async fn finish(conn: Conn, result: Result<(), Lost>, stats: &Stats, what: &str) {
    match result {
        Ok(()) => conn.close(CLOSE_LIMIT).await,
        Err(reason) => {
            stats.connections_lost.fetch_add(1, Relaxed);
            stats.error(format!("{what}: {reason}"));
        }
    }
}

/// Publishes until the phase leaves [`Phase::Run`], then waits for its
/// acknowledgements until [`Phase::Close`].
pub async fn publisher(
    mut conn: Conn,
    job: PublisherJob,
    stats: Arc<Stats>,
    progress: Option<Arc<[Progress]>>,
    mut phase: watch::Receiver<Phase>,
) {
    let result = publish_loop(&mut conn, &job, &stats, progress.as_deref(), &mut phase).await;
    finish(conn, result, &stats, &format!("publisher {}", job.id)).await;
}

async fn publish_loop(
    conn: &mut Conn,
    job: &PublisherJob,
    stats: &Stats,
    progress: Option<&[Progress]>,
    phase: &mut watch::Receiver<Phase>,
) -> Result<(), Lost> {
    let template = Template::new(&job.topic, job.qos, job.size, conn.version)?;
    let mut ids = PacketIds::new(conn.receive_maximum);
    let mut pacer = Pacer {
        start: job.start,
        rate: job.rate,
        sent: 0,
    };
    let mine = progress.and_then(|p| p.get(job.local));
    let deliveries = job.deliveries.unwrap_or(1).max(1);
    let mut seq: u32 = 0;
    let mut forgiven: u64 = 0;
    let mut blocked_since: Option<Instant> = None;
    let mut last_write = Instant::now();
    let mut stopping = *phase.borrow() != Phase::Run;
    let qos = job.qos != QoS::AtMostOnce;
    loop {
        let now = Instant::now();
        let mut window_blocked = false;
        // Waiting for the next message due at the rate.
        let mut rate_bound = false;
        // Something was encoded: loop again rather than wait.
        let mut can_produce = false;
        if !stopping && now >= job.start {
            let mut budget = pacer.due(now);
            if let (Some(p), true) = (mine, job.window > 0) {
                let done = p.delivered.load(Relaxed) / deliveries + forgiven;
                let in_flight = pacer.sent.saturating_sub(done);
                let mut room = job.window.saturating_sub(in_flight);
                if room == 0 {
                    let since = *blocked_since.get_or_insert(now);
                    if now.duration_since(since) >= WINDOW_PATIENCE {
                        // Deliveries that never came (QoS 0 drops): go on.
                        forgiven += in_flight;
                        stats.window_stalls.fetch_add(1, Relaxed);
                        blocked_since = None;
                        room = job.window;
                    } else {
                        window_blocked = true;
                    }
                } else {
                    blocked_since = None;
                }
                budget = budget.min(room);
            }
            if qos {
                budget = budget.min(ids.free());
            }
            let mut n = 0u64;
            if budget > 0 && conn.out.len() < OUT_HIGH {
                let sent_ns = now_ns();
                while n < budget && conn.out.len() < OUT_HIGH {
                    let id = if qos { ids.allocate() } else { None };
                    let stamp = Stamp {
                        publisher: job.id,
                        seq,
                        sent_ns,
                    };
                    template.put(&mut conn.out, id, stamp);
                    seq = seq.wrapping_add(1);
                    n += 1;
                }
                pacer.sent += n;
                stats.sent.fetch_add(n, Relaxed);
                if stats.measured(sent_ns) {
                    stats.sent_measured.fetch_add(n, Relaxed);
                    if job.deliveries.is_some() {
                        stats.expected.fetch_add(n * deliveries, Relaxed);
                    }
                }
            }
            // After encoding, look again at once: the window, the ids or
            // the rate may now hold the next message back, and which one
            // decides what to wait for.
            can_produce = n > 0;
            rate_bound = pacer.due(now) == 0;
        }
        if write_some(conn)? {
            last_write = now;
        }

        let mut wake = ping_after(conn).map(|p| last_write + p);
        if !stopping {
            if now < job.start {
                wake = earliest(wake, Some(job.start));
            } else if rate_bound {
                wake = earliest(wake, pacer.next());
            }
            if window_blocked {
                wake = earliest(wake, blocked_since.map(|t| t + WINDOW_PATIENCE));
            }
        }
        // Waiting for writable also covers "more to encode": the socket is
        // usually writable at once, and `ready` yields to other tasks when
        // this one has run long enough.
        let interest = if conn.out.is_empty() && !can_produce {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        tokio::select! {
            biased;
            changed = phase.changed() => {
                let now = if changed.is_ok() { *phase.borrow() } else { Phase::Close };
                if now == Phase::Close {
                    return Ok(());
                }
                stopping = now != Phase::Run;
            }
            ready = conn.stream.ready(interest) => {
                let ready = ready.map_err(|e| format!("socket error: {e}"))?;
                if ready.is_readable() && read_some(conn)? {
                    while let Some(packet) = next_packet(conn)? {
                        publisher_packet(conn, &mut ids, stats, packet)?;
                    }
                }
            }
            () = notified(mine), if window_blocked => {}
            () = sleep_until(wake) => {
                if ping_after(conn).is_some_and(|p| last_write + p <= Instant::now()) {
                    encode(conn, &Packet::PingReq);
                    last_write = Instant::now();
                }
            }
        }
    }
}

/// Acknowledgements (and pings) coming back to a publisher.
fn publisher_packet(
    conn: &mut Conn,
    ids: &mut PacketIds,
    stats: &Stats,
    packet: Packet,
) -> Result<(), Lost> {
    let refused = |ack: &PubAck| {
        if ack.reason.is_error() {
            stats.publish_refused.fetch_add(1, Relaxed);
            stats.error(format!(
                "the broker refused a message: {:?} ({:#04x})",
                ack.reason, ack.reason as u8
            ));
            true
        } else {
            false
        }
    };
    match packet {
        Packet::PubAck(ack) => {
            refused(&ack);
            ids.release(ack.packet_id);
        }
        Packet::PubRec(ack) => {
            if refused(&ack) {
                ids.release(ack.packet_id);
            } else if ids.received(ack.packet_id) {
                encode(conn, &Packet::PubRel(PubAck::new(ack.packet_id)));
            }
        }
        Packet::PubComp(ack) => ids.release(ack.packet_id),
        Packet::PingResp => {}
        other => return Err(broker_disconnect(&other)),
    }
    Ok(())
}

/// Receives, acknowledges and counts until [`Phase::Close`].
pub async fn subscriber(
    mut conn: Conn,
    index: u32,
    mut tally: Tally,
    stats: Arc<Stats>,
    mut phase: watch::Receiver<Phase>,
) {
    let result = subscribe_loop(&mut conn, &mut tally, &mut phase).await;
    tally.flush(std::time::Instant::now());
    finish(conn, result, &stats, &format!("subscriber {index}")).await;
}

async fn subscribe_loop(
    conn: &mut Conn,
    tally: &mut Tally,
    phase: &mut watch::Receiver<Phase>,
) -> Result<(), Lost> {
    let mut last_write = Instant::now();
    let mut next_flush = Instant::now() + FLUSH_EVERY;
    // Bytes may have come right behind the SUBACK.
    let mut pending = !conn.rbuf.is_empty();
    loop {
        if pending {
            pending = false;
            let now = std::time::Instant::now();
            let received_ns = now_ns();
            loop {
                // The fast path: a PUBLISH counted and acknowledged in place.
                if let Some(p) = tern_codec::locate_publish(&conn.rbuf, conn.version) {
                    tally.message(&conn.rbuf[p.payload_at..p.len], received_ns);
                    conn.rbuf.advance(p.len);
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            encode(conn, &Packet::PubAck(PubAck::new(id)))
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            encode(conn, &Packet::PubRec(PubAck::new(id)))
                        }
                        _ => {}
                    }
                    continue;
                }
                match next_packet(conn)? {
                    Some(packet) => subscriber_packet(conn, tally, packet, received_ns)?,
                    None => break,
                }
            }
            tally.end_batch(now, received_ns);
        }
        if write_some(conn)? {
            last_write = Instant::now();
        }
        let wake = earliest(Some(next_flush), ping_after(conn).map(|p| last_write + p));
        let interest = if conn.out.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Close {
                    return Ok(());
                }
            }
            ready = conn.stream.ready(interest) => {
                let ready = ready.map_err(|e| format!("socket error: {e}"))?;
                if ready.is_readable() {
                    pending = read_some(conn)?;
                }
            }
            () = sleep_until(wake) => {
                let now = Instant::now();
                if now >= next_flush {
                    tally.flush(now.into_std());
                    next_flush = now + FLUSH_EVERY;
                }
                if ping_after(conn).is_some_and(|p| last_write + p <= now) {
                    encode(conn, &Packet::PingReq);
                    last_write = now;
                }
            }
        }
    }
}

/// A packet arriving at a subscriber.
fn subscriber_packet(
    conn: &mut Conn,
    tally: &mut Tally,
    packet: Packet,
    received_ns: u64,
) -> Result<(), Lost> {
    match packet {
        Packet::Publish(publish) => {
            tally.message(&publish.payload, received_ns);
            match (publish.qos, publish.packet_id) {
                (QoS::AtMostOnce, _) => {}
                (QoS::AtLeastOnce, Some(id)) => encode(conn, &Packet::PubAck(PubAck::new(id))),
                (QoS::ExactlyOnce, Some(id)) => encode(conn, &Packet::PubRec(PubAck::new(id))),
                (_, None) => return Err("QoS 1/2 PUBLISH without packet id".into()),
            }
        }
        Packet::PubRel(ack) => encode(conn, &Packet::PubComp(PubAck::new(ack.packet_id))),
        Packet::PingResp | Packet::SubAck(_) => {}
        other => return Err(broker_disconnect(&other)),
    }
    Ok(())
}

/// Holds an idle connection (conn scenario) until [`Phase::Close`]: pings
/// when keep-alive asks for it, and notices if the broker drops it.
pub async fn idle(
    mut conn: Conn,
    index: usize,
    stats: Arc<Stats>,
    mut phase: watch::Receiver<Phase>,
) {
    // An idle connection keeps no buffers: memory is what is measured.
    conn.rbuf = BytesMut::new();
    conn.out = BytesMut::new();
    let ping = ping_after(&conn);
    let result: Result<(), Lost> = async {
        let mut scrap = BytesMut::with_capacity(64);
        loop {
            let wake = ping.map(|p| Instant::now() + p);
            tokio::select! {
                biased;
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Close {
                        return Ok(());
                    }
                }
                read = conn.stream.read_buf(&mut scrap) => match read {
                    Ok(0) => return Err("the broker closed the connection".into()),
                    // PINGRESP; a DISCONNECT is followed by the close.
                    Ok(_) => scrap.clear(),
                    Err(e) => return Err(format!("read failed: {e}")),
                },
                () = sleep_until(wake) => {
                    conn.stream
                        .write_all(&[0xC0, 0x00])
                        .await
                        .map_err(|e| format!("write failed: {e}"))?;
                }
            }
        }
    }
    .await;
    finish(conn, result, &stats, &format!("connection {index}")).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_patches_id_and_stamp() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let t = Template::new("bench/7", qos, 64, version).unwrap();
                let mut out = BytesMut::new();
                let id = NonZeroU16::new(0x1234);
                let stamp = Stamp {
                    publisher: 7,
                    seq: 9,
                    sent_ns: now_ns(),
                };
                t.put(&mut out, id.filter(|_| qos != QoS::AtMostOnce), stamp);
                t.put(&mut out, id.filter(|_| qos != QoS::AtMostOnce), stamp);
                for _ in 0..2 {
                    let Some(Packet::Publish(p)) =
                        tern_codec::decode(&mut out, version, usize::MAX).unwrap()
                    else {
                        panic!("a PUBLISH");
                    };
                    assert_eq!(p.topic, "bench/7");
                    assert_eq!(p.qos, qos);
                    assert_eq!(p.payload.len(), 64);
                    if qos != QoS::AtMostOnce {
                        assert_eq!(p.packet_id, id);
                    }
                    assert_eq!(Stamp::read(&p.payload, stamp.sent_ns), Some(stamp));
                }
            }
        }
    }

    #[test]
    fn locate_publish_finds_what_the_templates_write() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for size in [16, 200, 20_000] {
                    let t = Template::new("a/b", qos, size, version).unwrap();
                    let mut out = BytesMut::new();
                    let id = (qos != QoS::AtMostOnce).then_some(NonZeroU16::MAX);
                    let stamp = Stamp {
                        publisher: 1,
                        seq: 2,
                        sent_ns: now_ns(),
                    };
                    t.put(&mut out, id, stamp);
                    let view = tern_codec::locate_publish(&out, version).unwrap();
                    assert_eq!(view.len, out.len());
                    assert_eq!(view.qos, qos);
                    assert_eq!(view.packet_id, id);
                    assert_eq!(out.len() - view.payload_at, size);
                    assert_eq!(
                        Stamp::read(&out[view.payload_at..], stamp.sent_ns),
                        Some(stamp)
                    );
                    assert_eq!(
                        tern_codec::locate_publish(&out[..out.len() - 1], version),
                        None
                    );
                }
            }
        }
        let mut ack = BytesMut::new();
        Packet::PubAck(PubAck::new(NonZeroU16::MIN))
            .encode(ProtocolVersion::V5, &mut ack)
            .unwrap();
        assert_eq!(tern_codec::locate_publish(&ack, ProtocolVersion::V5), None);
        assert_eq!(
            tern_codec::locate_publish(&[0x36, 0x00], ProtocolVersion::V5),
            None,
            "QoS 3"
        );
        assert_eq!(
            tern_codec::locate_publish(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], ProtocolVersion::V5),
            None
        );
    }

    #[test]
    fn packet_ids_respect_the_limit_and_skip_ids_in_flight() {
        let mut ids = PacketIds::new(2);
        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        assert_eq!((a.get(), b.get()), (1, 2));
        assert_eq!(ids.free(), 0);
        assert!(ids.allocate().is_none());
        ids.release(a);
        assert_eq!(
            ids.allocate().unwrap().get(),
            1,
            "ids cycle within the limit"
        );
        assert!(ids.received(b));
        ids.release(b);
        assert_eq!(ids.free(), 1);

        assert_eq!(ids.allocate().unwrap().get(), 2);
        ids.release(NonZeroU16::MAX);
        assert!(!ids.received(NonZeroU16::MAX), "not ours");
        assert_eq!(ids.free(), 0);

        let mut ids = PacketIds::new(u16::MAX);
        ids.next = u16::MAX;
        let last = ids.allocate().unwrap();
        assert_eq!(last.get(), u16::MAX);
        assert_eq!(ids.allocate().unwrap().get(), 1, "wraps past zero");
    }

    #[test]
    fn pacer_spreads_messages_over_time() {
        let start = Instant::now();
        let mut p = Pacer {
            start,
            rate: 1000.0,
            sent: 0,
        };
        assert_eq!(p.due(start), 1);
        assert_eq!(p.due(start + Duration::from_millis(10)), 11);
        p.sent = 11;
        assert_eq!(p.due(start + Duration::from_millis(10)), 0);
        assert_eq!(p.next(), Some(start + Duration::from_millis(11)));
        p.rate = 0.0;
        assert_eq!(p.due(start), u64::MAX);
        assert_eq!(p.next(), None);
    }
}
