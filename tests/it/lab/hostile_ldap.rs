//! A hostile LDAP server on loopback: it speaks just enough LDAP to be used as a source
//! (it answers the bind, the rootDSE and the searches that come before the one under
//! test), then misbehaves in one chosen way on the search that carries the trigger
//! control: the RFC 4533 Sync Request, the DirSync control, or the paged results control.
//!
//! It is not a mock of a directory: it never pretends to hold data. Each connection is
//! served by its own thread until the client hangs up or a write fails; the listener's
//! thread ends with the process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

pub const SYNC_REQUEST: &str = "1.3.6.1.4.1.4203.1.9.1.1";
pub const SYNC_STATE: &str = "1.3.6.1.4.1.4203.1.9.1.2";
pub const SYNC_DONE: &str = "1.3.6.1.4.1.4203.1.9.1.3";
pub const SYNC_INFO: &str = "1.3.6.1.4.1.4203.1.9.1.4";
pub const DIRSYNC: &str = "1.2.840.113556.1.4.841";
pub const PAGED: &str = "1.2.840.113556.1.4.319";

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An entry whose attribute list is 100,000 SEQUENCEs deep.
    NestedBer,
    /// A message announcing 2 GB, then zero bytes for as long as the client reads.
    HugeLength,
    /// Entries, each a new object, without end and without a final result.
    EndlessEntries,
    /// An AddResponse where a search response belongs.
    WrongOp,
    /// A message with BER's indefinite length form.
    IndefiniteLength,
    /// A never-ending stream of entries, one byte every 100 ms.
    SlowLoris,
    /// Page after page (DirSync: round after round), each with a new cookie (paged: and a
    /// new entry). RFC 4533: Sync Info messages with a new cookie each, without end.
    EndlessPages,
    /// Page after page (DirSync: round after round) with the same cookie and no entries.
    /// RFC 4533: Sync Info messages with the same cookie, without end.
    SameCookie,
    /// Page after page with a new cookie and no entries (paged searches only).
    EmptyPages,
}

/// Which search misbehaves: the one carrying this control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    SyncRequest,
    DirSync,
    Paged,
}

impl Trigger {
    fn oid(self) -> &'static str {
        match self {
            Trigger::SyncRequest => SYNC_REQUEST,
            Trigger::DirSync => DIRSYNC,
            Trigger::Paged => PAGED,
        }
    }
}

pub struct HostileLdap {
    port: u16,
}

impl HostileLdap {
    pub fn start(mode: Mode, trigger: Trigger, base_dn: &str) -> HostileLdap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = base_dn.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let base = base.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, mode, trigger, &base);
                });
            }
        });
        HostileLdap { port }
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }
}

// ---- BER, just enough ----

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        out.push(0x84);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(content);
    out
}

fn int(v: i64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let mut i = 0;
    while i < 7 && ((b[i] == 0 && b[i + 1] & 0x80 == 0) || (b[i] == 0xff && b[i + 1] & 0x80 != 0)) {
        i += 1;
    }
    tlv(0x02, &b[i..])
}

fn octets(b: &[u8]) -> Vec<u8> {
    tlv(0x04, b)
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// (tag, content, rest)
fn read_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        let len = rest
            .get(..n)?
            .iter()
            .fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    Some((tag, rest.get(..len)?, &rest[len..]))
}

fn message(id: i64, op: Vec<u8>, controls: &[Vec<u8>]) -> Vec<u8> {
    let mut parts = vec![int(id), op];
    if !controls.is_empty() {
        parts.push(tlv(0xa0, &controls.concat()));
    }
    seq(&parts)
}

fn result(tag: u8, rc: u8, text: &str) -> Vec<u8> {
    tlv(
        tag,
        &[tlv(0x0a, &[rc]), octets(b""), octets(text.as_bytes())].concat(),
    )
}

fn control(oid: &str, value: &[u8]) -> Vec<u8> {
    seq(&[octets(oid.as_bytes()), octets(value)])
}

fn entry(dn: &str, attrs: &[(&str, Vec<Vec<u8>>)]) -> Vec<u8> {
    let list: Vec<Vec<u8>> = attrs
        .iter()
        .map(|(n, vs)| {
            let vals: Vec<u8> = vs.iter().flat_map(|v| octets(v)).collect();
            seq(&[octets(n.as_bytes()), tlv(0x31, &vals)])
        })
        .collect();
    tlv(0x64, &[octets(dn.as_bytes()), seq(&list)].concat())
}

/// A plausible new object number `n` for the trigger's source kind, as one message.
fn object(id: i64, n: u64, trigger: Trigger, base: &str) -> Vec<u8> {
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&n.to_be_bytes());
    uuid[8] = 0x40;
    let cn = format!("u{n}");
    let dn = format!("cn={cn},{base}");
    match trigger {
        Trigger::DirSync => message(
            id,
            entry(
                &dn,
                &[
                    ("objectGUID", vec![uuid.to_vec()]),
                    ("objectClass", vec![b"top".to_vec(), b"user".to_vec()]),
                    ("sAMAccountName", vec![cn.clone().into_bytes()]),
                    ("name", vec![cn.into_bytes()]),
                ],
            ),
            &[],
        ),
        Trigger::SyncRequest => {
            let state = seq(&[tlv(0x0a, &[1]), octets(&uuid)]);
            message(
                id,
                entry(
                    &dn,
                    &[
                        ("objectClass", vec![b"inetOrgPerson".to_vec()]),
                        ("cn", vec![cn.clone().into_bytes()]),
                        ("sn", vec![cn.into_bytes()]),
                    ],
                ),
                &[control(SYNC_STATE, &state)],
            )
        }
        Trigger::Paged => {
            let u = uuid::Uuid::from_bytes(uuid).hyphenated().to_string();
            message(
                id,
                entry(
                    &dn,
                    &[
                        ("objectClass", vec![b"inetOrgPerson".to_vec()]),
                        ("cn", vec![cn.clone().into_bytes()]),
                        ("sn", vec![cn.into_bytes()]),
                        ("entryUUID", vec![u.into_bytes()]),
                    ],
                ),
                &[],
            )
        }
    }
}

// ---- the server ----

/// One parsed request: message ID, op tag, op content, control OIDs and values.
struct Request {
    id: i64,
    op: u8,
    body: Vec<u8>,
    controls: Vec<(String, Vec<u8>)>,
}

fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let mut head = [0u8; 2];
    conn.read_exact(&mut head).ok()?;
    let len = if head[1] < 0x80 {
        head[1] as usize
    } else {
        let mut n = vec![0u8; (head[1] & 0x7f) as usize];
        conn.read_exact(&mut n).ok()?;
        n.iter().fold(0usize, |a, &b| (a << 8) | b as usize)
    };
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    let (_, id, rest) = read_tlv(&body)?;
    let id = id.iter().fold(0i64, |a, &b| (a << 8) | i64::from(b));
    let (op, content, rest) = read_tlv(rest)?;
    let mut controls = Vec::new();
    if let Some((0xa0, mut list, _)) = read_tlv(rest) {
        while let Some((_, c, more)) = read_tlv(list) {
            list = more;
            let (_, oid, mut c) = read_tlv(c)?;
            if let Some((0x01, _, more)) = read_tlv(c) {
                c = more;
            }
            let value = read_tlv(c).map(|(_, v, _)| v.to_vec()).unwrap_or_default();
            controls.push((String::from_utf8_lossy(oid).into_owned(), value));
        }
    }
    Some(Request {
        id,
        op,
        body: content.to_vec(),
        controls,
    })
}

fn serve(mut conn: TcpStream, mode: Mode, trigger: Trigger, base: &str) -> std::io::Result<()> {
    let mut round = 0u64;
    while let Some(req) = read_request(&mut conn) {
        match req.op {
            0x60 => conn.write_all(&message(req.id, result(0x61, 0, ""), &[]))?,
            0x42 => return Ok(()),
            0x77 => conn.write_all(&message(req.id, result(0x78, 2, "no"), &[]))?,
            0x63 => {
                let triggered = req.controls.iter().any(|(o, _)| o == trigger.oid());
                if triggered {
                    round += 1;
                    misbehave(&mut conn, &req, mode, trigger, base, round)?;
                } else {
                    answer(&mut conn, &req, base)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A plausible answer to a search that is not under test.
fn answer(conn: &mut TcpStream, req: &Request, base: &str) -> std::io::Result<()> {
    let search_base = read_tlv(&req.body)
        .map(|(_, b, _)| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    if search_base.is_empty() {
        let root = entry(
            "",
            &[
                ("namingContexts", vec![base.as_bytes().to_vec()]),
                ("defaultNamingContext", vec![base.as_bytes().to_vec()]),
                (
                    "configurationNamingContext",
                    vec![format!("CN=Configuration,{base}").into_bytes()],
                ),
                ("highestCommittedUSN", vec![b"1".to_vec()]),
            ],
        );
        conn.write_all(&message(req.id, root, &[]))?;
    }
    let mut controls = Vec::new();
    for (oid, _) in &req.controls {
        match oid.as_str() {
            SYNC_REQUEST => {
                let cookie = b"rid=000,csn=20260101000000.000000Z#000000#000#000000";
                let done = seq(&[octets(cookie), tlv(0x01, &[0xff])]);
                controls.push(control(SYNC_DONE, &done));
            }
            DIRSYNC => {
                let v = seq(&[int(0), int(0), octets(b"hostile-baseline")]);
                controls.push(control(DIRSYNC, &v));
            }
            PAGED => controls.push(control(PAGED, &seq(&[int(0), octets(b"")]))),
            _ => {}
        }
    }
    conn.write_all(&message(req.id, result(0x65, 0, ""), &controls))
}

/// The end of a page or round that says "more" with `cookie`.
fn more(id: i64, trigger: Trigger, cookie: &[u8]) -> Vec<u8> {
    let ctrl = match trigger {
        Trigger::Paged => control(PAGED, &seq(&[int(0), octets(cookie)])),
        Trigger::DirSync => control(DIRSYNC, &seq(&[int(1), int(0), octets(cookie)])),
        Trigger::SyncRequest => {
            // RFC 4533 has no pages: a Sync Info newcookie message instead.
            let info = tlv(0x80, cookie);
            let v = [tlv(0x80, SYNC_INFO.as_bytes()), tlv(0x81, &info)].concat();
            return message(id, tlv(0x79, &v), &[]);
        }
    };
    message(id, result(0x65, 0, ""), &[ctrl])
}

fn misbehave(
    conn: &mut TcpStream,
    req: &Request,
    mode: Mode,
    trigger: Trigger,
    base: &str,
    round: u64,
) -> std::io::Result<()> {
    let id = req.id;
    match mode {
        Mode::NestedBer => {
            const DEPTH: usize = 100_000;
            let mut nested = Vec::with_capacity(DEPTH * 6);
            for level in 0..DEPTH {
                nested.push(0x30);
                nested.push(0x84);
                nested.extend_from_slice(&(((DEPTH - 1 - level) * 6) as u32).to_be_bytes());
            }
            let body = [octets(format!("cn=deep,{base}").as_bytes()), nested].concat();
            conn.write_all(&message(id, tlv(0x64, &body), &[]))
        }
        Mode::HugeLength => {
            conn.write_all(&[0x30, 0x84, 0x7f, 0xff, 0xff, 0xff])?;
            let zeros = vec![0u8; 1 << 16];
            loop {
                conn.write_all(&zeros)?;
            }
        }
        Mode::EndlessEntries => {
            let mut n = 0u64;
            loop {
                n += 1;
                conn.write_all(&object(id, n, trigger, base))?;
            }
        }
        Mode::WrongOp => conn.write_all(&message(id, result(0x69, 0, ""), &[])),
        Mode::IndefiniteLength => {
            let inner = [int(id), result(0x65, 0, "")].concat();
            conn.write_all(&[&[0x30, 0x80][..], &inner, &[0, 0]].concat())
        }
        Mode::SlowLoris => {
            let mut n = 0u64;
            loop {
                n += 1;
                for b in object(id, n, trigger, base) {
                    conn.write_all(&[b])?;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Mode::EndlessPages | Mode::SameCookie | Mode::EmptyPages => {
            let cookie = |n: u64| match mode {
                Mode::SameCookie => b"the-same-cookie".to_vec(),
                _ => format!("cookie-{n}").into_bytes(),
            };
            if trigger == Trigger::SyncRequest {
                let mut n = 0u64;
                loop {
                    n += 1;
                    conn.write_all(&more(id, trigger, &cookie(n)))?;
                }
            }
            // Paged: new cookies bring a new entry each; the same cookie brings nothing.
            if trigger == Trigger::Paged && mode == Mode::EndlessPages {
                conn.write_all(&object(id, round, trigger, base))?;
            }
            conn.write_all(&more(id, trigger, &cookie(round)))
        }
    }
}
