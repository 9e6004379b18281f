//! ClientConn and ServerConn talking through the I/O shell over a non-blocking socket pair:
//! devlist, import, then pipelined large transfers with unlinks racing completions, every
//! one checked for exactly one answer.

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixStream;

use pvusb_frontend::usbip::{
    read_some, write_some, ClientConn, ClientEvent, CmdSubmit, Completion, ConnEvent, Direction,
    Event, ExportedDevice, Limits, ReadStatus, ServerConn, Speed,
};

const ECONNRESET: i32 = -104;

fn device() -> ExportedDevice {
    ExportedDevice {
        busid: "3-1".into(),
        busnum: 3,
        devnum: 9,
        speed: Speed::Super,
        ..Default::default()
    }
}

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// The server's engine: answers the handshake, queues submits, and on each unlink either
/// cancels the victim or completes it first (the race), alternately.
#[derive(Default)]
struct Engine {
    queued: VecDeque<CmdSubmit>,
    unlinks_seen: usize,
}

fn fill(seqnum: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seqnum) as u8)
        .collect()
}

impl Engine {
    fn handle(&mut self, server: &mut ServerConn) {
        while let Some(ev) = server.poll_event() {
            match ev {
                ConnEvent::DevlistRequested => server.reply_devlist(&[device()]).unwrap(),
                ConnEvent::ImportRequested { busid } => {
                    assert_eq!(busid, "3-1");
                    server.accept_import(&device()).unwrap().unwrap();
                }
                ConnEvent::Urb(Event::Submit(s)) => self.queued.push_back(s),
                ConnEvent::Urb(Event::Unlink { victim, .. }) => {
                    self.unlinks_seen += 1;
                    let session = server.session().unwrap();
                    if self.unlinks_seen % 2 == 0 {
                        let s = self
                            .queued
                            .iter()
                            .find(|s| s.seqnum == victim)
                            .unwrap()
                            .clone();
                        session.complete(victim, complete(&s)).unwrap();
                        assert!(session.unlinked(victim).is_err());
                    } else {
                        session.unlinked(victim).unwrap();
                    }
                    self.queued.retain(|s| s.seqnum != victim);
                }
            }
        }
    }

    fn complete_some(&mut self, server: &mut ServerConn, n: usize) {
        for _ in 0..n {
            let Some(s) = self.queued.pop_front() else {
                return;
            };
            server
                .session()
                .unwrap()
                .complete(s.seqnum, complete(&s))
                .unwrap();
        }
    }
}

fn complete(s: &CmdSubmit) -> Completion {
    match s.dir {
        Direction::In => {
            let data = fill(s.seqnum, s.length as usize);
            Completion {
                actual_length: s.length,
                data,
                ..Default::default()
            }
        }
        Direction::Out => {
            assert_eq!(
                s.data,
                fill(s.length, s.length as usize),
                "OUT data of {}",
                s.seqnum
            );
            Completion {
                actual_length: s.length,
                ..Default::default()
            }
        }
    }
}

/// One round of I/O both ways; returns the client's events.
fn pump(
    client: &mut ClientConn,
    cs: &mut UnixStream,
    server: &mut ServerConn,
    ss: &mut UnixStream,
) -> Vec<ClientEvent> {
    let mut buf = vec![0u8; 64 * 1024];
    write_some(cs, client).unwrap();
    let st = read_some(ss, server, &mut buf, 256 * 1024).unwrap();
    assert_ne!(st, ReadStatus::Eof);
    write_some(ss, server).unwrap();
    read_some(cs, client, &mut buf, 256 * 1024).unwrap();
    std::iter::from_fn(|| client.poll_event()).collect()
}

#[test]
fn devlist_over_the_shell() {
    let (mut cs, mut ss) = pair();
    let mut client = ClientConn::devlist(Limits::default());
    let mut server = ServerConn::new(Limits::default(), 64);
    let mut engine = Engine::default();
    let mut events = Vec::new();
    for _ in 0..10 {
        events.extend(pump(&mut client, &mut cs, &mut server, &mut ss));
        engine.handle(&mut server);
    }
    assert_eq!(events, vec![ClientEvent::Devlist(vec![device()])]);
    assert!(client.is_done() && server.should_close());
}

#[test]
fn pipelined_transfers_with_racing_unlinks_get_exactly_one_answer_each() {
    let (mut cs, mut ss) = pair();
    let mut client = ClientConn::import("3-1", Limits::default());
    let mut server = ServerConn::new(Limits::default(), 256);
    let mut engine = Engine::default();
    let mut events = Vec::new();
    while !events.iter().any(|e| matches!(e, ClientEvent::Imported(_))) {
        events.extend(pump(&mut client, &mut cs, &mut server, &mut ss));
        engine.handle(&mut server);
    }
    assert_eq!(
        events,
        vec![ClientEvent::Imported(ExportedDevice {
            interfaces: vec![],
            ..device()
        })]
    );

    // 40 transfers up to 300 KiB, far more than the socket buffer holds.
    let mut sent: HashMap<u32, (Direction, usize)> = HashMap::new();
    for i in 0..40u32 {
        let len = ((i as usize * 7919) % 300) * 1024 + i as usize;
        let dir = if i % 2 == 0 {
            Direction::In
        } else {
            Direction::Out
        };
        let data = if dir == Direction::Out {
            fill(len as u32, len)
        } else {
            vec![]
        };
        let cmd = CmdSubmit {
            dir,
            ep: 1 + (i % 3) as u8,
            length: len as u32,
            data,
            ..Default::default()
        };
        let seqnum = client.submit(cmd).unwrap();
        sent.insert(seqnum, (dir, len));
        if i % 5 == 4 {
            client.unlink(seqnum).unwrap();
        }
    }
    let mut answers: HashMap<u32, usize> = HashMap::new();
    for _ in 0..10_000 {
        for ev in pump(&mut client, &mut cs, &mut server, &mut ss) {
            match ev {
                ClientEvent::Completed(r) => {
                    *answers.entry(r.seqnum).or_default() += 1;
                    let (dir, len) = sent[&r.seqnum];
                    assert_eq!((r.status, r.actual_length as usize), (0, len));
                    if dir == Direction::In {
                        assert_eq!(r.data, fill(r.seqnum, len));
                    }
                }
                ClientEvent::Unlinked { victim, status, .. } => {
                    if status == ECONNRESET {
                        *answers.entry(victim).or_default() += 1;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        engine.handle(&mut server);
        engine.complete_some(&mut server, 1);
        if client.outstanding() == 0 && client.outstanding_unlinks() == 0 {
            break;
        }
    }
    assert_eq!(client.outstanding(), 0);
    assert_eq!(client.outstanding_unlinks(), 0);
    assert_eq!(answers.len(), 40);
    assert!(answers.values().all(|&n| n == 1), "{answers:?}");
    assert_eq!(engine.unlinks_seen, 8);
}
