//! The main loop of a connection past CONNECT: reads and handles packets
//! (within a time budget), writes what the handlers and the session's
//! deliveries queued, and keeps one timer for keep-alive and parking. It ends
//! with why the connection closes, or that it may park.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::close::Close;
use super::{Conn, IDLE_READ, Transport};
use crate::client_state::{ClientState, outbound, progress, pushback};
use crate::handler::ack::PubAcks;
use crate::handler::{self, Flow};
use crate::metrics::Metrics;
use crate::session::Described;

/// Read buffer size for a connection that is receiving a stream of data.
const READ_CHUNK: usize = 16 * 1024;
/// How soon a connection that could not park (bytes still to write) looks again.
const PARK_RETRY: Duration = Duration::from_millis(250);
/// How long one connection handles packets before it lets other tasks run.
/// Without it one read's worth of costly packets (a publish matching
/// thousands of filters) holds a worker thread for as long as they take.
const PROCESS_BUDGET: Duration = Duration::from_millis(2);

/// How the main loop ended.
pub(super) enum Exit {
    Close(Close),
    /// Quiet for the parking time: hand the connection to the parker.
    Park,
}

/// The main loop; returns why the connection is closing, or that it parks.
pub(super) async fn run<S: Transport>(conn: &mut Conn<S>) -> Exit {
    let Conn {
        io,
        client,
        parker,
        last_heard,
        peer,
        resumed,
        ..
    } = conn;
    let state = client.state.clone();
    let session = client.session.clone();
    // Packets that arrived in the same read as CONNECT are already buffered;
    // handle them now rather than when the next bytes come.
    // `backlog`: whole packets are left in the buffer after the budget ran out.
    let mut backlog = match process(client, &mut io.rbuf, last_heard) {
        Ok(backlog) => backlog,
        Err(close) => return Exit::Close(close),
    };
    let connected = state.metrics.clients_connected.load(Ordering::Relaxed);
    let park_after = parker
        .idle(connected as usize, *resumed)
        .filter(|_| S::PARKABLE);
    // Created once, not per loop turn: each creation would register anew
    // with the cancellation token and the timer wheel.
    let shutdown = state.draining.cancelled();
    tokio::pin!(shutdown);
    // One timer serves keep-alive and parking. It is not moved on every
    // packet; when it fires it checks how long the connection has really
    // been quiet, and sets itself again if not long enough.
    let mut last_active = Instant::now();
    let timer = tokio::time::sleep_until(
        next_check(client, *last_heard, last_active, park_after).unwrap_or(last_active),
    );
    tokio::pin!(timer);
    let timed = client.keep_alive_timeout().is_some() || park_after.is_some();
    let mut durable = state.store.as_ref().map(|s| s.watch());
    let mut applied = state.fabric.applied_changes();
    let mut stored = state.fabric.stored_changes();
    let mut mirrored = state.ownership.mirrored_changes();
    // Whether the last read filled the buffer: more is probably waiting.
    let mut busy = false;
    loop {
        match outbound::fill(client) {
            Err(ousted) => return Exit::Close(ousted.into()),
            // The admin API asks who this is.
            Ok(Some(asked)) => {
                let _ = asked.send(Described {
                    peer: *peer,
                    protocol: client.version,
                    listener: client.listener as usize,
                    keep_alive_secs: (client.keep_alive_ms / 1500) as u16,
                });
            }
            Ok(None) => {}
        }
        if client.release().is_err() {
            return Exit::Close(Close::Unstored);
        }
        let writable = client.writable();
        let spare = prepare_read_buffer(&mut io.rbuf, busy);
        tokio::select! {
            biased;
            _ = &mut shutdown => return Exit::Close(Close::Shutdown),
            written = io.writer.write(&client.out[..writable]), if writable > 0 => match written {
                Ok(0) => return Exit::Close(Close::Lost(None)),
                Ok(n) => {
                    client.advance(n);
                    Metrics::add(&state.metrics.bytes_sent, n as u64);
                }
                Err(e) => return Exit::Close(Close::Lost(Some(e))),
            },
            // Stop reading while our responses pile up unread (backpressure
            // on a client that publishes without reading its acks), and
            // while queues this client overfilled have no room.
            read = io.reader.read_buf(&mut io.rbuf), if !backlog && reading(client) => match read {
                Ok(0) => return Exit::Close(Close::Lost(None)),
                Ok(n) => {
                    busy = n >= spare;
                    Metrics::add(&state.metrics.bytes_received, n as u64);
                    backlog = match process(client, &mut io.rbuf, last_heard) {
                        Ok(backlog) => backlog,
                        Err(close) => return Exit::Close(close),
                    };
                }
                Err(e) => return Exit::Close(Close::Lost(Some(e))),
            },
            // The budget ran out: the rest of the buffer after other tasks.
            () = tokio::task::yield_now(), if backlog && reading(client) => {
                backlog = match process(client, &mut io.rbuf, last_heard) {
                    Ok(backlog) => backlog,
                    Err(close) => return Exit::Close(close),
                };
            }
            _ = session.notify.notified() => last_active = Instant::now(),
            () = pushback::wait(&state, client.extras.as_mut().and_then(|e| e.pushback.as_mut())), if client.pushed_back() => {
                client.pushback_done();
            }
            // Held responses go out once the store has what they promise.
            () = progress(&mut durable), if client.holds.is_some() => {}
            () = progress(&mut applied), if client.holds.is_some() => {}
            () = progress(&mut stored), if client.holds.is_some() => {}
            () = progress(&mut mirrored), if client.holds.is_some() => {}
            () = &mut timer, if timed => {
                let now = Instant::now();
                // Not reading it, we cannot tell whether it is silent.
                let waiting = client.pushed_back();
                if !waiting && client.keep_alive_timeout().is_some_and(|t| *last_heard + t <= now) {
                    return Exit::Close(Close::KeepAliveTimeout);
                }
                last_active = last_active.max(*last_heard);
                let quiet = client.out.is_empty() && io.rbuf.is_empty() && !waiting;
                if quiet && park_after.is_some_and(|p| last_active + p <= now) {
                    return Exit::Park;
                }
                if let Some(at) = next_check(client, *last_heard, last_active, park_after) {
                    // Not quiet yet (bytes still to write): look again soon.
                    timer.as_mut().reset(at.max(now + PARK_RETRY));
                }
            }
        }
    }
}

/// Whether the connection reads more: not while its responses pile up
/// unwritten, nor while it waits for queues it overfilled.
fn reading(client: &ClientState) -> bool {
    client.out.len() < outbound::HIGH_WATER && !client.pushed_back()
}

/// When the timer should next look: the keep-alive deadline or the time the
/// connection may park, whichever is first.
fn next_check(
    client: &ClientState,
    last_heard: Instant,
    last_active: Instant,
    park_after: Option<Duration>,
) -> Option<Instant> {
    let keep_alive = client.keep_alive_timeout().map(|t| last_heard + t);
    let park = park_after.map(|p| last_active.max(last_heard) + p);
    match (keep_alive, park) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sizes the read buffer for the next read and returns its spare capacity.
///
/// An idle connection gives its buffer back once every byte in it was
/// decoded and keeps only [`IDLE_READ`] bytes: with thousands of idle clients
/// this is most of the broker's memory. A connection whose last read filled
/// the buffer gets [`READ_CHUNK`] bytes, so a stream is read in few syscalls.
/// Dropping the old buffer also lets go of a chunk that decoded payloads may
/// still share; it is freed when the last of them is.
fn prepare_read_buffer(rbuf: &mut BytesMut, busy: bool) -> usize {
    if !busy && rbuf.is_empty() && rbuf.capacity() > IDLE_READ {
        *rbuf = BytesMut::new();
    }
    let mut want = if busy { READ_CHUNK } else { IDLE_READ };
    // The rest of a packet begun in the buffer is read in one go (`decode`
    // has checked its size against the maximum already).
    if let Some(size) = tern_codec::frame_size(rbuf) {
        want = want.max(size.saturating_sub(rbuf.len()));
    }
    if rbuf.capacity() - rbuf.len() < want {
        rbuf.reserve(want);
    }
    rbuf.capacity() - rbuf.len()
}

/// Decodes and handles the whole packets in the read buffer, for up to
/// [`PROCESS_BUDGET`], or until a message overfilled a queue
/// (`client_state::pushback`). `Ok(true)`: it stopped with bytes left, to go
/// on after other tasks had their turn (or after the queues have room). `Err`: the connection closes (the client's
/// DISCONNECT, or a protocol violation).
fn process(
    client: &mut ClientState,
    rbuf: &mut BytesMut,
    last_heard: &mut Instant,
) -> Result<bool, Close> {
    let mut pubacks = PubAcks::default();
    let result = handle_packets(client, rbuf, last_heard, &mut pubacks);
    // Whatever ended the reading, the PUBACKs before it count.
    pubacks.flush(client);
    result
}

/// The loop of [`process`]; PUBACKs gather in `pubacks`.
fn handle_packets(
    client: &mut ClientState,
    rbuf: &mut BytesMut,
    last_heard: &mut Instant,
    pubacks: &mut PubAcks,
) -> Result<bool, Close> {
    let max = client.state.config.max_packet_size as usize;
    let started = Instant::now();
    let mut now = started;
    loop {
        if now - started >= PROCESS_BUDGET && !rbuf.is_empty() {
            return Ok(true);
        }
        let packet = match tern_codec::decode(rbuf, client.version, max) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(false),
            Err(e) => return Err(Close::Violation(e.into())),
        };
        *last_heard = now;
        Metrics::add(&client.state.metrics.packets_received, 1);
        if matches!(packet, Packet::Publish(_))
            && !(client.state.limits).publish_allowed(
                client.extras.as_deref_mut().and_then(|e| e.limits.as_mut()),
                *last_heard,
            )
        {
            return Err(Close::PublishRate);
        }
        tracing::trace!(client_id = %client.client_id(), packet = ?packet, "received");
        match handler::dispatch(client, packet, pubacks) {
            // The rest waits until the queues it overfilled have room.
            Ok(Flow::Continue) if client.pushed_back() => return Ok(!rbuf.is_empty()),
            Ok(Flow::Continue) => {}
            Ok(Flow::Disconnect { publish_will }) => {
                return Err(Close::Disconnect { publish_will });
            }
            Err(v) => return Err(Close::Violation(v)),
        }
        now = Instant::now();
    }
}
