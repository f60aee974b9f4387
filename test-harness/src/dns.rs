//! The lab's DNS server: what the gateway's dynamic forward proxy resolves destinations through, as the production
//! gateway resolves them through the cluster's DNS.
//!
//! One [`Dns`] per lab, on 127.0.0.1 (an ephemeral port, the same number for UDP and TCP), authoritative for what its
//! [`Zone`] holds and for nothing else:
//! - a name in the zone is answered with its addresses of the family asked for (A: IPv4, AAAA: IPv6), in the order
//!   they were set (the order Envoy tries them in); a name without an address of that family gets an empty NOERROR
//!   answer, as on the Internet;
//! - every other name is NXDOMAIN, without an SOA record, so no resolver caches the negative answer (RFC 2308 §5);
//! - `*.example.org` stands for every name below example.org, at any depth, but not for example.org itself. An exact
//!   entry wins over wildcards, and the closest wildcard over farther ones. Unlike RFC 4592, an exact entry does not
//!   hide the wildcards above it from the names below it: this is a test zone, not a delegation tree;
//! - answers carry TTL [`TTL`] (0), so nothing between the zone and Envoy keeps an answer (c-ares ≥ 1.23 caches
//!   answers for their TTL): each lookup sees the zone as it is at that moment. Envoy re-resolves on its own
//!   schedule (the DNS cache's `dns_refresh_rate`), not by TTL;
//! - the zone may change at any time ([`Dns::set`], [`Dns::remove`]): names whose answer changes between two requests
//!   (rebinding), names with several addresses;
//! - a UDP answer larger than 512 bytes (or than the client's EDNS size, at most [`EDNS_UDP_SIZE`]) is sent truncated
//!   (TC, no records), so the client asks again over TCP, as c-ares does;
//! - questions for other classes than IN are REFUSED, other opcodes NOTIMP, messages with other than one question
//!   FORMERR. A message too short for a header, or one that is itself a response, gets no answer.
//!
//! The DNS wire format comes from `simple-dns`; it refuses to parse a question for a type number it does not know,
//! which this server then answers FORMERR (Envoy asks for A and AAAA only).
//!
//! Every question is logged ([`Dns::queries`]), so a test can see what the gateway asked for, and over which transport.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use simple_dns::rdata::{RData, A, AAAA, OPT};
use simple_dns::{Name, Packet, PacketFlag, ResourceRecord, CLASS, OPCODE, QCLASS, QTYPE, RCODE, TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;

use crate::pki::Error;

/// The TTL of every answer: none, so that no cache stands between a change of the zone and the next lookup.
pub const TTL: u32 = 0;

/// The largest UDP answer to a client without EDNS (RFC 1035 §4.2.1).
const UDP_SIZE_WITHOUT_EDNS: usize = 512;

/// The EDNS UDP payload size this server advertises, and the most it sends over UDP whatever the client offers
/// (the DNS Flag Day 2020 value, which fits any path's MTU).
pub const EDNS_UDP_SIZE: u16 = 1232;

/// The record type a question asked for, as far as this server tells types apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    A,
    Aaaa,
    /// Any other type (ANY included), by number.
    Other(u16),
}

/// How a question arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One question the server was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The name as asked (case kept; DNS names on the wire have no trailing dot).
    pub name: String,
    pub record: RecordType,
    pub transport: Transport,
}

/// Names and their addresses. Names are case-insensitive, a trailing dot is ignored, and `*.suffix` is a wildcard
/// (see the module docs for what it matches).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    /// Lowercase names without trailing dot (wildcards as `*.suffix`) → addresses, in answer order.
    entries: BTreeMap<String, Vec<IpAddr>>,
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Makes `name` (or the wildcard `*.suffix`) answer with `addresses`, replacing what it answered before. An empty
    /// list makes a name that exists without any address. Fails on what is not a DNS name: empty labels, labels over
    /// 63 bytes, names over 253, characters other than letters, digits, `-` and `_`, or a `*` anywhere but as the
    /// whole first label.
    pub fn set(&mut self, name: &str, addresses: Vec<IpAddr>) -> Result<(), Error> {
        self.entries.insert(entry_key(name)?, addresses);
        Ok(())
    }

    /// Removes `name` (or the wildcard `*.suffix`) from the zone; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        entry_key(name).is_ok_and(|key| self.entries.remove(&key).is_some())
    }

    /// The addresses a question for `name` finds: the exact entry, else the closest wildcard above it. `None`: the
    /// name does not exist (NXDOMAIN).
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Some(addresses) = self.entries.get(&name) {
            return Some(addresses);
        }
        let mut below = name.as_str();
        while let Some((_, parent)) = below.split_once('.') {
            if let Some(addresses) = self.entries.get(&format!("*.{parent}")) {
                return Some(addresses);
            }
            below = parent;
        }
        None
    }

    /// Every entry, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[IpAddr])> {
        self.entries.iter().map(|(name, addresses)| (name.as_str(), addresses.as_slice()))
    }
}

/// The key of `name` in [`Zone::entries`], if it is a name or a wildcard the zone can hold.
fn entry_key(name: &str) -> Result<String, Error> {
    let key = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let labels: Vec<&str> = key.split('.').collect();
    let label_ok = |(index, label): (usize, &&str)| {
        let wildcard = *label == "*" && index == 0 && labels.len() > 1;
        let ordinary = label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (1..=63).contains(&label.len()) && (wildcard || ordinary)
    };
    if key.len() <= 253 && labels.iter().enumerate().all(label_ok) {
        Ok(key)
    } else {
        Err(format!("{name:?} is neither a DNS name nor `*.` followed by one").into())
    }
}

/// What the server threads share with the [`Dns`] handle.
#[derive(Debug, Default)]
struct State {
    zone: Mutex<Zone>,
    queries: Mutex<Vec<Query>>,
}

impl State {
    /// The reply to `message` (`None`: no reply), logging its question.
    fn reply(&self, message: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let (query, reply) = answer(&self.zone.lock().unwrap_or_else(PoisonError::into_inner), message, transport);
        if let Some(query) = query {
            self.queries.lock().unwrap_or_else(PoisonError::into_inner).push(query);
        }
        reply
    }
}

/// A running DNS server on 127.0.0.1. Dropping it (or [`Dns::shutdown`]) stops it and joins its thread.
#[derive(Debug)]
pub struct Dns {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Dns {
    /// Binds UDP and TCP on 127.0.0.1 (one ephemeral port number for both) and serves `zone` on a background thread.
    pub fn start(zone: Zone) -> Result<Dns, Error> {
        let (udp, tcp) = bind_udp_and_tcp()?;
        let addr = udp.local_addr()?;
        // One current-thread runtime: a lab's lookups are a handful a second.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (udp, tcp) = {
            let _in_runtime = runtime.enter();
            (UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?)
        };
        let state = Arc::new(State { zone: Mutex::new(zone), queries: Mutex::default() });
        let (shutdown, shutdown_requested) = oneshot::channel();
        let server = Arc::clone(&state);
        let thread = std::thread::Builder::new().name(format!("dns-{}", addr.port())).spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = serve_udp(udp, Arc::clone(&server)) => {}
                    () = serve_tcp(tcp, server) => {}
                    _ = shutdown_requested => {}
                }
            });
        })?;
        Ok(Dns { addr, state, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// Where it listens, UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// [`Zone::set`] on the zone being served: the next question sees it.
    pub fn set(&self, name: &str, addresses: Vec<IpAddr>) -> Result<(), Error> {
        self.zone_mut().set(name, addresses)
    }

    /// [`Zone::remove`] on the zone being served: from the next question on, the name is NXDOMAIN (unless a wildcard
    /// covers it).
    pub fn remove(&self, name: &str) -> bool {
        self.zone_mut().remove(name)
    }

    /// The zone as it is now.
    pub fn zone(&self) -> Zone {
        self.zone_mut().clone()
    }

    /// Every question asked so far, in arrival order.
    pub fn queries(&self) -> Vec<Query> {
        self.state.queries.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops the server and joins its thread (what dropping does).
    pub fn shutdown(self) {
        drop(self);
    }

    fn zone_mut(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.state.zone.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // Fails only if the server thread is already gone.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same ephemeral port of 127.0.0.1: the UDP port is picked by the kernel, and
/// a few other picks are tried when its TCP twin is taken.
fn bind_udp_and_tcp() -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    const TRIES: usize = 20;
    let mut last_error = None;
    for _ in 0..TRIES {
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(tcp) => {
                udp.set_nonblocking(true)?;
                tcp.set_nonblocking(true)?;
                return Ok((udp, tcp));
            }
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no port free for both UDP and TCP")))
}

async fn serve_udp(socket: UdpSocket, state: Arc<State>) {
    // The largest message UDP can carry; queries are far smaller.
    let mut buffer = vec![0u8; usize::from(u16::MAX)];
    loop {
        // Errors here are ICMP port-unreachable reports of earlier replies, and the like: keep serving.
        let Ok((length, peer)) = socket.recv_from(&mut buffer).await else { continue };
        let Some(message) = buffer.get(..length) else { continue };
        if let Some(reply) = state.reply(message, Transport::Udp) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                tokio::spawn(serve_tcp_connection(stream, Arc::clone(&state)));
            }
            // EMFILE and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// DNS over TCP (RFC 7766): messages prefixed by their length, as many as the client sends on the connection.
async fn serve_tcp_connection(mut stream: TcpStream, state: Arc<State>) {
    loop {
        let Ok(length) = stream.read_u16().await else { return };
        let mut message = vec![0u8; usize::from(length)];
        if stream.read_exact(&mut message).await.is_err() {
            return;
        }
        let Some(reply) = state.reply(&message, Transport::Tcp) else { return };
        let Ok(length) = u16::try_from(reply.len()) else { return };
        let framed = [length.to_be_bytes().as_slice(), &reply].concat();
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The reply to the DNS message `message` from `zone` (`None`: no reply), and the question it asked, if it asked one.
fn answer(zone: &Zone, message: &[u8], transport: Transport) -> (Option<Query>, Option<Vec<u8>>) {
    let Ok(query) = Packet::parse(message) else {
        return (None, format_error(message));
    };
    if query.has_flags(PacketFlag::RESPONSE) {
        return (None, None);
    }
    let mut reply = Packet::new_reply(query.id());
    *reply.opcode_mut() = query.opcode();
    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    // EDNS (RFC 6891): answered in kind, with the size this server sends at most.
    let edns_size = query.opt().map(|opt| opt.udp_packet_size);
    if edns_size.is_some() {
        *reply.opt_mut() = Some(OPT { opt_codes: Vec::new(), udp_packet_size: EDNS_UDP_SIZE, version: 0 });
    }
    let [question] = query.questions.as_slice() else {
        *reply.rcode_mut() = RCODE::FormatError;
        return (None, reply.build_bytes_vec_compressed().ok());
    };
    reply.questions.push(question.clone());
    let asked = Query { name: name_text(&question.qname), record: record_type(question.qtype), transport };
    if query.opcode() != OPCODE::StandardQuery {
        *reply.rcode_mut() = RCODE::NotImplemented;
    } else if !matches!(question.qclass, QCLASS::CLASS(CLASS::IN) | QCLASS::ANY) {
        *reply.rcode_mut() = RCODE::Refused;
    } else {
        match zone.lookup(&asked.name) {
            None => *reply.rcode_mut() = RCODE::NameError,
            Some(addresses) => {
                let records = addresses.iter().filter_map(|address| match (address, question.qtype) {
                    (IpAddr::V4(v4), QTYPE::TYPE(TYPE::A) | QTYPE::ANY) => Some(RData::A(A::from(*v4))),
                    (IpAddr::V6(v6), QTYPE::TYPE(TYPE::AAAA) | QTYPE::ANY) => Some(RData::AAAA(AAAA::from(*v6))),
                    _ => None,
                });
                // The question's name as asked (case kept: resolvers that randomize case check it).
                reply
                    .answers
                    .extend(records.map(|rdata| ResourceRecord::new(question.qname.clone(), CLASS::IN, TTL, rdata)));
            }
        }
    }
    let limit = match (transport, edns_size) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => UDP_SIZE_WITHOUT_EDNS,
        (Transport::Udp, Some(size)) => usize::from(size).clamp(UDP_SIZE_WITHOUT_EDNS, usize::from(EDNS_UDP_SIZE)),
    };
    let mut bytes = reply.build_bytes_vec_compressed().ok();
    if bytes.as_ref().is_some_and(|bytes| bytes.len() > limit) {
        reply.answers.clear();
        reply.set_flags(PacketFlag::TRUNCATION);
        bytes = reply.build_bytes_vec_compressed().ok();
    }
    (Some(asked), bytes)
}

/// FORMERR for a message that does not parse: its header's id, opcode and RD echoed, no sections. Nothing for a
/// message shorter than a header, or one with the response bit set (never answer an answer).
fn format_error(message: &[u8]) -> Option<Vec<u8>> {
    let [id_high, id_low, flags_high, ..] = *message else { return None };
    if message.len() < 12 || flags_high & 0x80 != 0 {
        return None;
    }
    // QR set; opcode (0x78) and RD (0x01) as asked; RCODE 1 (format error); every count zero.
    Some(vec![id_high, id_low, 0x80 | (flags_high & 0x79), 0x01, 0, 0, 0, 0, 0, 0, 0, 0])
}

/// A name's labels joined by dots, bytes that are not UTF-8 replaced (such a name matches no entry).
fn name_text(name: &Name<'_>) -> String {
    name.as_bytes().map(String::from_utf8_lossy).collect::<Vec<_>>().join(".")
}

fn record_type(qtype: QTYPE) -> RecordType {
    match qtype {
        QTYPE::TYPE(TYPE::A) => RecordType::A,
        QTYPE::TYPE(TYPE::AAAA) => RecordType::Aaaa,
        other => RecordType::Other(u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    //! Against the running server, with queries written byte by byte from RFC 1035 §4.1 and replies read by a parser
    //! of their own here: neither side shares the server's codec.

    use super::*;
    use std::net::{Ipv6Addr, TcpStream as StdTcpStream, UdpSocket as StdUdpSocket};

    const TYPE_A: u16 = 1;
    const TYPE_AAAA: u16 = 28;
    const TYPE_MX: u16 = 15;

    /// A query: header (ID, RD, one question, an OPT record when `edns` gives a payload size), then the question.
    fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut bytes = id.to_be_bytes().to_vec();
        bytes.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
        for label in name.trim_end_matches('.').split('.') {
            bytes.push(u8::try_from(label.len()).unwrap());
            bytes.extend(label.as_bytes());
        }
        bytes.push(0);
        bytes.extend(qtype.to_be_bytes());
        bytes.extend(1u16.to_be_bytes());
        if let Some(size) = edns {
            // Root name, TYPE OPT (41), CLASS = payload size, TTL 0 (extended RCODE, version, flags), RDLENGTH 0.
            bytes.extend([0, 0, 41]);
            bytes.extend(size.to_be_bytes());
            bytes.extend([0, 0, 0, 0, 0, 0]);
        }
        bytes
    }

    #[derive(Debug, PartialEq)]
    struct Reply {
        id: u16,
        rcode: u8,
        authoritative: bool,
        truncated: bool,
        question: String,
        /// (type, TTL, address) of each answer record.
        answers: Vec<(u16, u32, IpAddr)>,
        additional: u16,
    }

    impl Reply {
        fn addresses(&self) -> Vec<IpAddr> {
            self.answers.iter().map(|(_, _, address)| *address).collect()
        }
    }

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([bytes[at], bytes[at + 1]])
    }

    /// Reads a name at `at` (following compression pointers); returns it and the offset after it.
    fn read_name(bytes: &[u8], mut at: usize) -> (String, usize) {
        let mut labels = Vec::new();
        let mut end = None;
        loop {
            let length = bytes[at];
            if length & 0xc0 == 0xc0 {
                end.get_or_insert(at + 2);
                at = usize::from(u16_at(bytes, at) & 0x3fff);
            } else if length == 0 {
                return (labels.join("."), end.unwrap_or(at + 1));
            } else {
                let label = &bytes[at + 1..at + 1 + usize::from(length)];
                labels.push(String::from_utf8(label.to_vec()).unwrap());
                at += 1 + usize::from(length);
            }
        }
    }

    fn parse(bytes: &[u8]) -> Reply {
        assert!(bytes[2] & 0x80 != 0, "QR set");
        assert_eq!(u16_at(bytes, 4), 1, "one question");
        let (question, mut at) = read_name(bytes, 12);
        at += 4;
        let mut answers = Vec::new();
        for _ in 0..u16_at(bytes, 6) {
            let (name, after) = read_name(bytes, at);
            assert_eq!(name, question, "answers are for the name asked");
            let rtype = u16_at(bytes, after);
            let ttl = u32::from_be_bytes(bytes[after + 4..after + 8].try_into().unwrap());
            let length = usize::from(u16_at(bytes, after + 8));
            let data = &bytes[after + 10..after + 10 + length];
            let address = match rtype {
                TYPE_A => IpAddr::from(<[u8; 4]>::try_from(data).unwrap()),
                TYPE_AAAA => IpAddr::from(<[u8; 16]>::try_from(data).unwrap()),
                other => panic!("unexpected record type {other}"),
            };
            answers.push((rtype, ttl, address));
            at = after + 10 + length;
        }
        Reply {
            id: u16_at(bytes, 0),
            rcode: bytes[3] & 0x0f,
            authoritative: bytes[2] & 0x04 != 0,
            truncated: bytes[2] & 0x02 != 0,
            question,
            answers,
            additional: u16_at(bytes, 10),
        }
    }

    fn ask_udp(dns: &Dns, name: &str, qtype: u16, edns: Option<u16>) -> Reply {
        let socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.send_to(&query(0x1234, name, qtype, edns), dns.addr()).unwrap();
        let mut buffer = [0u8; 4096];
        let (length, from) = socket.recv_from(&mut buffer).unwrap();
        assert_eq!(from, dns.addr());
        let reply = parse(&buffer[..length]);
        assert_eq!(reply.id, 0x1234);
        reply
    }

    fn ask_tcp(dns: &Dns, names: &[(&str, u16)]) -> Vec<Reply> {
        use std::io::{Read, Write};
        let mut stream = StdTcpStream::connect(dns.addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Several queries on one connection, as RFC 7766 allows.
        let mut replies = Vec::new();
        for (id, (name, qtype)) in names.iter().enumerate() {
            let message = query(u16::try_from(id).unwrap(), name, *qtype, None);
            stream.write_all(&u16::try_from(message.len()).unwrap().to_be_bytes()).unwrap();
            stream.write_all(&message).unwrap();
            let mut length = [0u8; 2];
            stream.read_exact(&mut length).unwrap();
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
            stream.read_exact(&mut reply).unwrap();
            replies.push(parse(&reply));
        }
        replies
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn server() -> Dns {
        let mut zone = Zone::new();
        zone.set("httpbin.org", vec![v4(127, 9, 0, 1), "fd00::1".parse().unwrap()]).unwrap();
        zone.set("*.httpbin.org", vec![v4(127, 9, 0, 2)]).unwrap();
        zone.set("*.eu.httpbin.org", vec![v4(127, 9, 0, 3)]).unwrap();
        zone.set("v6only.example", vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]).unwrap();
        zone.set("empty.example", Vec::new()).unwrap();
        Dns::start(zone).unwrap()
    }

    #[test]
    fn a_and_aaaa_come_from_the_zone_authoritative_with_ttl_0() {
        let dns = server();
        let a = ask_udp(&dns, "httpbin.org", TYPE_A, None);
        assert_eq!((a.rcode, a.authoritative, a.truncated), (0, true, false));
        assert_eq!(a.answers, [(TYPE_A, 0, v4(127, 9, 0, 1))]);
        let aaaa = ask_udp(&dns, "httpbin.org", TYPE_AAAA, None);
        assert_eq!(aaaa.answers, [(TYPE_AAAA, 0, "fd00::1".parse().unwrap())]);
        // Case-insensitive; the question and the answers keep the case asked (resolvers randomizing case check it).
        let mixed = ask_udp(&dns, "HTTPBIN.Org", TYPE_A, None);
        assert_eq!((mixed.question.as_str(), mixed.addresses()), ("HTTPBIN.Org", vec![v4(127, 9, 0, 1)]));
        let queries: Vec<(String, RecordType, Transport)> =
            dns.queries().into_iter().map(|q| (q.name, q.record, q.transport)).collect();
        assert_eq!(
            queries,
            [
                ("httpbin.org".into(), RecordType::A, Transport::Udp),
                ("httpbin.org".into(), RecordType::Aaaa, Transport::Udp),
                ("HTTPBIN.Org".into(), RecordType::A, Transport::Udp),
            ]
        );
    }

    #[test]
    fn unknown_names_are_nxdomain_and_known_ones_without_that_family_empty() {
        let dns = server();
        for name in ["example.com", "org", "xhttpbin.org", "httpbin.org.evil"] {
            let reply = ask_udp(&dns, name, TYPE_A, None);
            assert_eq!((reply.rcode, reply.answers.len(), reply.authoritative), (3, 0, true), "{name}");
        }
        for (name, qtype) in [("v6only.example", TYPE_A), ("empty.example", TYPE_A), ("empty.example", TYPE_AAAA)] {
            let reply = ask_udp(&dns, name, qtype, None);
            assert_eq!((reply.rcode, reply.answers.len()), (0, 0), "{name} {qtype}: NOERROR, no data");
        }
        assert_eq!(ask_udp(&dns, "v6only.example", TYPE_AAAA, None).addresses(), [IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        let mx = ask_udp(&dns, "httpbin.org", TYPE_MX, None);
        assert_eq!((mx.rcode, mx.answers.len()), (0, 0), "a type the zone has no records of");
    }

    #[test]
    fn wildcards_cover_every_depth_below_never_the_apex_and_the_closest_wins() {
        let dns = server();
        let resolve = |name: &str| ask_udp(&dns, name, TYPE_A, None);
        assert_eq!(resolve("a.httpbin.org").addresses(), [v4(127, 9, 0, 2)]);
        assert_eq!(resolve("a.b.c.httpbin.org").addresses(), [v4(127, 9, 0, 2)]);
        assert_eq!(resolve("eu.httpbin.org").addresses(), [v4(127, 9, 0, 2)], "*.eu.httpbin.org is not eu itself");
        assert_eq!(resolve("x.eu.httpbin.org").addresses(), [v4(127, 9, 0, 3)], "the closer wildcard");
        assert_eq!(resolve("httpbin.org").addresses(), [v4(127, 9, 0, 1)], "the exact entry");
        dns.remove("httpbin.org");
        assert_eq!(resolve("httpbin.org").rcode, 3, "a wildcard never answers for its apex");
    }

    #[test]
    fn answers_follow_the_zone_as_it_changes() {
        let dns = server();
        let resolve = |name: &str| ask_udp(&dns, name, TYPE_A, None);
        assert_eq!(resolve("rebind.example").rcode, 3);
        dns.set("rebind.example", vec![v4(127, 9, 0, 7)]).unwrap();
        assert_eq!(resolve("rebind.example").addresses(), [v4(127, 9, 0, 7)]);
        dns.set("rebind.example.", vec![v4(10, 0, 0, 1)]).unwrap();
        assert_eq!(resolve("rebind.example").addresses(), [v4(10, 0, 0, 1)], "the next answer is the new one");
        // Several addresses, mixed families: each family in the order given.
        let mixed = vec![v4(203, 0, 113, 7), "fd00::2".parse().unwrap(), v4(10, 0, 0, 1)];
        dns.set("REBIND.example", mixed).unwrap();
        assert_eq!(resolve("rebind.example").addresses(), [v4(203, 0, 113, 7), v4(10, 0, 0, 1)]);
        assert!(dns.remove("rebind.example"));
        assert_eq!(resolve("rebind.example").rcode, 3);
        assert_eq!(dns.zone().lookup("a.httpbin.org"), Some([v4(127, 9, 0, 2)].as_slice()));
    }

    #[test]
    fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
        let dns = server();
        let many: Vec<IpAddr> = (1..=40).map(|n| v4(127, 9, 1, n)).collect();
        dns.set("many.example", many.clone()).unwrap();
        // 40 A records: 12 + 16 + 40 × 16 = 668 bytes, over the 512 of plain DNS.
        let udp = ask_udp(&dns, "many.example", TYPE_A, None);
        assert_eq!((udp.truncated, udp.answers.len(), udp.rcode), (true, 0, 0));
        // With EDNS the client's size (up to 1232) applies, and the reply carries an OPT record of its own.
        let edns = ask_udp(&dns, "many.example", TYPE_A, Some(4096));
        assert_eq!((edns.truncated, edns.addresses(), edns.additional), (false, many.clone(), 1));
        let small_edns = ask_udp(&dns, "many.example", TYPE_A, Some(600));
        assert!(small_edns.truncated);
        let tcp = ask_tcp(&dns, &[("many.example", TYPE_A), ("nothing.example", TYPE_A), ("httpbin.org", TYPE_A)]);
        assert_eq!((tcp[0].truncated, tcp[0].addresses()), (false, many));
        assert_eq!(tcp[1].rcode, 3);
        assert_eq!(tcp[2].addresses(), [v4(127, 9, 0, 1)]);
        assert!(dns.queries().iter().any(|q| q.transport == Transport::Tcp && q.name == "many.example"));
    }

    #[test]
    fn malformed_messages_get_formerr_and_answers_or_scraps_nothing() {
        let zone = Zone::new();
        // Two questions.
        let mut two = query(7, "a.example", TYPE_A, None);
        two[5] = 2;
        two.extend(&query(7, "b.example", TYPE_A, None)[12..]);
        let (asked, reply) = answer(&zone, &two, Transport::Udp);
        assert_eq!((asked, reply.as_deref().map(|r| (r[0], r[1], r[3] & 0x0f))), (None, Some((0, 7, 1))));
        // A header announcing a question that is not there.
        let truncated = &query(9, "a.example", TYPE_A, None)[..14];
        let (_, reply) = answer(&zone, truncated, Transport::Udp);
        assert_eq!(reply, Some(vec![0, 9, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]));
        // Shorter than a header, or a response: no reply at all.
        assert_eq!(answer(&zone, &[0, 1, 2], Transport::Udp), (None, None));
        let mut response = query(9, "a.example", TYPE_A, None);
        response[2] |= 0x80;
        assert_eq!(answer(&zone, &response, Transport::Udp), (None, None));
        // Another opcode (2, server status): NOTIMP.
        let mut status = query(11, "a.example", TYPE_A, None);
        status[2] = 0x10;
        let (_, reply) = answer(&zone, &status, Transport::Udp);
        assert_eq!(reply.map(|r| r[3] & 0x0f), Some(4));
    }

    #[test]
    fn zone_names_must_be_dns_names() {
        let mut zone = Zone::new();
        for bad in ["", "a..b", "*", "a.*.b", "*x.b", "a b.c", "bücher.de", &"a".repeat(64), "a/b"] {
            assert!(zone.set(bad, Vec::new()).is_err(), "{bad:?}");
        }
        for good in ["a", "_sip._udp.example", "3405803785", "xn--bcher-kva.de", "*.a", "A.B."] {
            zone.set(good, Vec::new()).unwrap();
        }
        assert!(zone.lookup("a.b").is_some() && zone.lookup("x.a").is_some());
        assert!(zone.remove("A.b") && !zone.remove("A.b"));
    }
}
