//! The request parser, the line and client limits, and the stale/live socket rules.

use super::*;
use crate::host::root::{ChannelDownlink, HostConfig};
use proptest::prelude::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

fn b(s: &str) -> Addr {
    s.parse().unwrap()
}

fn w(n: usize) -> Width {
    Width::new(n).unwrap()
}

#[test]
fn parses_every_verb() {
    assert_eq!("status".parse(), Ok(Request::Status));
    assert_eq!(
        " lspci \r".parse(),
        Ok(Request::Lspci {
            dump: Dump::None,
            bdf: None
        })
    );
    assert_eq!(
        "lspci -xxxx 01:00.0".parse(),
        Ok(Request::Lspci {
            dump: Dump::Extended,
            bdf: Some(b("01:00.0"))
        })
    );
    assert_eq!(
        "lspci -x".parse(),
        Ok(Request::Lspci {
            dump: Dump::Header,
            bdf: None
        })
    );
    assert_eq!(
        "config 01:00.0 0x10 4".parse(),
        Ok(Request::Config {
            bdf: b("01:00.0"),
            offset: 0x10,
            width: w(4)
        })
    );
    assert_eq!(
        "read 01:00.0 0 0x8 4".parse(),
        Ok(Request::Read {
            bdf: b("01:00.0"),
            bar: 0,
            offset: 8,
            width: w(4)
        })
    );
    assert_eq!(
        "write 01:00.0 2 16 1 0xff".parse(),
        Ok(Request::Write {
            bdf: b("01:00.0"),
            bar: 2,
            offset: 16,
            width: w(1),
            value: 0xff
        })
    );
}

#[test]
fn clear_errors() {
    let e = |s: &str| s.parse::<Request>().unwrap_err();
    assert_eq!(e(""), ParseError::Empty);
    assert_eq!(e("frob"), ParseError::UnknownVerb("frob".into()));
    assert_eq!(e("read 1:2 0 0 4"), ParseError::BadBdf("1:2".into()));
    assert_eq!(e("read 01:00.0 0 0 3"), ParseError::BadWidth("3".into()));
    assert_eq!(e("config 01:00.0 0 8"), ParseError::BadWidth("8".into()));
    assert_eq!(
        e("config 01:00.0 0x2 4"),
        ParseError::BadOffset("0x2".into())
    );
    assert_eq!(
        e("config 01:00.0 4096 1"),
        ParseError::BadOffset("4096".into())
    );
    assert_eq!(e("read 01:00.0 6 0 4"), ParseError::BadBar("6".into()));
    assert_eq!(
        e("read 01:00.0 0 zz 4"),
        ParseError::NotANumber("zz".into())
    );
    assert_eq!(
        e("write 01:00.0 0 0 1 0x100"),
        ParseError::TooWide {
            value: "0x100".into(),
            width: 1
        }
    );
    assert_eq!(e("write 01:00.0 0 0 4"), ParseError::Usage(USAGE_WRITE));
    assert_eq!(e("status now"), ParseError::Usage(USAGE_STATUS));
    assert_eq!(e("lspci -xx"), ParseError::BadFlag("-xx".into()));
    assert_eq!(e("lspci 01:00.0 -x"), ParseError::Usage(USAGE_LSPCI));
    assert_eq!(e("lspci 01:00.0 01:00.1"), ParseError::Usage(USAGE_LSPCI));
    assert!(e("write 01:00.0 0 0 8 0x1ffffffffffffffff")
        .to_string()
        .contains("not a number"));
    assert!(Width::new(8).unwrap().fits(u64::MAX));
    assert!(!Width::new(2).unwrap().fits(0x1_0000));
}

#[test]
fn default_path_is_one_file_under_run() {
    assert_eq!(
        default_path("web-1"),
        PathBuf::from("/run/pcietun/host-web-1.sock")
    );
    assert_eq!(
        default_path("../x y"),
        PathBuf::from("/run/pcietun/host-_._x_y.sock")
    );
}

fn arb_request() -> impl Strategy<Value = Request> {
    // Segment 0 (no prefix) often, any segment otherwise.
    let segment = prop_oneof![Just(0u16), any::<u16>()];
    let bdf = (segment, any::<u8>(), 0u8..32, 0u8..8)
        .prop_map(|(s, b, d, f)| Addr::new(s, Bdf::new(b, d, f)));
    let width = prop_oneof![Just(1usize), Just(2), Just(4), Just(8)].prop_map(w);
    let dump = prop_oneof![
        Just(Dump::None),
        Just(Dump::Header),
        Just(Dump::Config),
        Just(Dump::Extended)
    ];
    prop_oneof![
        Just(Request::Status),
        (dump, proptest::option::of(bdf.clone()))
            .prop_map(|(dump, bdf)| Request::Lspci { dump, bdf }),
        (
            bdf.clone(),
            prop_oneof![Just(1usize), Just(2), Just(4)],
            0u16..1024
        )
            .prop_map(|(bdf, n, o)| Request::Config {
                bdf,
                offset: (o * n as u16) % 4096,
                width: w(n)
            }),
        (bdf.clone(), 0u8..6, any::<u64>(), width.clone()).prop_map(|(bdf, bar, offset, width)| {
            Request::Read {
                bdf,
                bar,
                offset,
                width,
            }
        }),
        (bdf, 0u8..6, any::<u64>(), width, any::<u64>()).prop_map(
            |(bdf, bar, offset, width, v)| Request::Write {
                bdf,
                bar,
                offset,
                width,
                value: if width.bytes() == 8 {
                    v
                } else {
                    v & ((1 << (8 * width.bytes())) - 1)
                },
            }
        ),
    ]
}

proptest! {
    #[test]
    fn every_valid_request_round_trips(r in arb_request()) {
        let line = r.to_string();
        prop_assert!(line.len() <= MAX_REQUEST, "{line}");
        prop_assert_eq!(line.parse::<Request>(), Ok(r));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(r) = text.parse::<Request>() {
            // Whatever parses prints to a line that parses to the same request.
            prop_assert_eq!(r.to_string().parse::<Request>(), Ok(r));
        }
        let _ = read_line(&mut &bytes[..], MAX_REQUEST);
    }

    #[test]
    fn arbitrary_words_never_panic(words in proptest::collection::vec(
        prop_oneof![
            Just("read".to_string()), Just("write".to_string()), Just("config".to_string()),
            Just("lspci".to_string()), Just("-x".to_string()), Just("01:00.0".to_string()),
            Just("0001:01:00.0".to_string()), "[0-9a-fx:.-]{0,12}"
        ], 0..7)) {
        let _ = words.join(" ").parse::<Request>();
    }

    /// An address with a segment parses iff the segment is 1-8 hex digits of value at most
    /// ffff, and then to exactly that segment; the printed form reads back.
    #[test]
    fn segments_parse_exactly(seg in "[0-9a-fA-Fg]{0,9}", bus in any::<u8>(), dev in 0u8..32, f in 0u8..8) {
        let text = format!("{seg}:{bus:02x}:{dev:02x}.{f}");
        let want = (!seg.is_empty() && seg.len() <= 8 && !seg.contains('g'))
            .then(|| u32::from_str_radix(&seg, 16).unwrap())
            .and_then(|v| u16::try_from(v).ok());
        let got = address(&text);
        match want {
            Some(s) => {
                let a = got.unwrap();
                prop_assert_eq!(a, Addr::new(s, Bdf::new(bus, dev, f)));
                prop_assert_eq!(address(&a.to_string()), Ok(a));
            }
            None => prop_assert_eq!(got, Err(ParseError::BadBdf(text.chars().take(32).collect()))),
        }
    }
}

#[test]
fn addresses_with_and_without_segment() {
    assert_eq!(b("01:00.0"), Addr::new(0, Bdf::new(1, 0, 0)));
    assert_eq!(b("0000:01:00.0"), b("01:00.0"));
    assert_eq!(b("0001:02:03.4"), Addr::new(1, Bdf::new(2, 3, 4)));
    assert_eq!(b("ffff:00:00.0").segment, 0xffff);
    assert_eq!(b("0001:02:03.4").to_string(), "0001:02:03.4");
    assert_eq!(b("0000:02:03.4").to_string(), "02:03.4");
    let e = |s: &str| s.parse::<Request>().unwrap_err();
    assert_eq!(
        e("read 10000:01:00.0 0 0 4"),
        ParseError::BadBdf("10000:01:00.0".into())
    );
    assert_eq!(
        e("read 0001:01:00 0 0 4"),
        ParseError::BadBdf("0001:01:00".into())
    );
    assert_eq!(
        "lspci -x 0001:01:00.0".parse(),
        Ok(Request::Lspci {
            dump: Dump::Header,
            bdf: Some(b("0001:01:00.0"))
        })
    );
    // The longest request (segment, widest numbers) fits in a request line.
    let longest = Request::Write {
        bdf: b("ffff:ff:1f.7"),
        bar: 5,
        offset: u64::MAX,
        width: w(8),
        value: u64::MAX,
    };
    assert!(longest.to_string().len() <= MAX_REQUEST);
}

/// Two appliances whose links go nowhere, segments 0 and 1.
fn two_segments() -> Fabric {
    let seg = |segment: u16, name: &str, port: u16| Segment {
        segment,
        name: name.into(),
        target: format!("udp:127.0.0.1:{port}"),
        host: lonely_host(),
    };
    Fabric {
        host_id: "h1".into(),
        segments: vec![seg(0, "a", 7470), seg(1, "b", 7471)],
    }
}

#[test]
fn several_appliances_show_their_segments_and_unknown_ones_are_errors() {
    let f = two_segments();
    let run = |line: &str| execute(&f, &line.parse().unwrap());
    let l = run("lspci").unwrap().output;
    let roots: Vec<&str> = l.lines().map(|l| &l[..12]).collect();
    assert_eq!(roots, ["0000:00:00.0", "0001:00:00.0"], "{l}");
    let only = run("lspci 0001:00:00.0").unwrap().output;
    assert!(
        only.starts_with("0001:00:00.0 ") && only.lines().count() == 1,
        "{only}"
    );
    assert_eq!(
        run("read 0001:01:00.0 0 0 4").unwrap_err().to_string(),
        "no tunnelled function at 0001:01:00.0"
    );
    let e = run("write 0002:01:00.0 0 0 4 1").unwrap_err().to_string();
    assert_eq!(
        e,
        "no appliance at segment 0002: this agent has 2 (segments 0000 and up)"
    );
    for line in [
        "lspci 0005:00:00.0",
        "config 0002:01:00.0 0 4",
        "read ffff:01:00.0 0 0 4",
    ] {
        assert!(
            matches!(run(line), Err(ExecError::NoSegment { .. })),
            "{line}"
        );
    }
    let st = run("status").unwrap();
    assert!(
        st.output
            .contains("appliance 0001 b: udp:127.0.0.1:7471 session down"),
        "{}",
        st.output
    );
    let j = st.to_json();
    assert_eq!(j["target"], "udp:127.0.0.1:7470");
    assert_eq!(j["appliances"][1]["segment"], "0001");
    assert_eq!(j["appliances"][1]["name"], "b");
    // One appliance: no segments printed, the listing as it always was.
    let one = Fabric::single(lonely_host(), &info());
    let l = execute(
        &one,
        &Request::Lspci {
            dump: Dump::None,
            bdf: None,
        },
    )
    .unwrap();
    assert!(l.output.starts_with("00:00.0 "), "{}", l.output);
    assert!(matches!(
        execute(&one, &"read 0001:01:00.0 0 0 4".parse().unwrap()),
        Err(ExecError::NoSegment {
            segment: 1,
            known: 1
        })
    ));
}

#[test]
fn line_limits() {
    let ok = format!("{}\n", "a".repeat(MAX_REQUEST));
    assert_eq!(
        read_line(&mut ok.as_bytes(), MAX_REQUEST).unwrap(),
        Some(("a".repeat(MAX_REQUEST), true))
    );
    let long = format!("{}\n", "a".repeat(MAX_REQUEST + 1));
    let e = read_line(&mut long.as_bytes(), MAX_REQUEST).unwrap_err();
    assert!(
        e["error"].as_str().unwrap().contains("longer than 256"),
        "{e}"
    );
    assert!(read_line(&mut &b"\xff\xfe\n"[..], MAX_REQUEST).is_err());
    assert_eq!(read_line(&mut &b""[..], MAX_REQUEST).unwrap(), None);
    assert_eq!(
        read_line(&mut &b"status"[..], MAX_REQUEST).unwrap(),
        Some(("status".into(), false))
    );
}

/// A host whose link goes nowhere: no functions, every request to a card fails.
fn lonely_host() -> Arc<Host> {
    let (tx, _rx) = crossbeam::channel::unbounded();
    Host::new(Arc::new(ChannelDownlink(tx)), HostConfig::default())
}

fn info() -> ControlInfo {
    ControlInfo {
        host_id: "h1".into(),
        target: "udp:127.0.0.1:7470".into(),
    }
}

fn start(path: &Path) -> Result<ControlServer, BindError> {
    ControlServer::start(BoundSocket::bind(path)?, lonely_host(), info())
}

fn server(dir: &Path) -> ControlServer {
    start(&dir.join("c.sock")).unwrap()
}

#[test]
fn serves_requests_and_errors_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let mode = std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // No temporary directory left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let mut c = Client::connect(s.path(), Duration::from_secs(5)).unwrap();
    let st = c.ask("status").unwrap();
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["host_id"], "h1");
    assert_eq!(st["target"], "udp:127.0.0.1:7470");
    assert_eq!(st["session"], "down");
    let l = c.ask("lspci").unwrap();
    assert!(l["output"].as_str().unwrap().starts_with("00:00.0 "), "{l}");
    let r = c.ask("read 01:00.0 0 0 4").unwrap();
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"], "no tunnelled function at 01:00.0");
    let r = c.ask("frob").unwrap();
    assert!(
        r["error"].as_str().unwrap().contains("unknown request"),
        "{r}"
    );
    let path = s.path().to_path_buf();
    drop(s);
    assert!(!path.exists(), "socket left behind");
}

#[test]
fn over_long_line_gets_an_error_and_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let mut c = Client::connect(s.path(), Duration::from_secs(5)).unwrap();
    let r = c.ask(&"x".repeat(MAX_REQUEST + 1)).unwrap();
    assert!(r["error"].as_str().unwrap().contains("longer than"), "{r}");
    assert!(c.ask("status").is_err(), "connection still open");
}

#[test]
fn silent_client_is_dropped_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let mut c = UnixStream::connect(s.path()).unwrap();
    c.set_read_timeout(Some(READ_TIMEOUT * 3)).unwrap();
    let t0 = Instant::now();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    let took = t0.elapsed();
    assert!(
        took >= READ_TIMEOUT - Duration::from_millis(100),
        "{took:?}"
    );
    assert!(took < READ_TIMEOUT * 2, "{took:?}");
    assert!(reply.contains("in time"), "{reply}");
}

#[test]
fn at_most_eight_clients_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    // Eight clients that send nothing hold every slot (for READ_TIMEOUT).
    let mut held = Vec::new();
    for _ in 0..MAX_CLIENTS {
        let mut c = Client::connect(s.path(), Duration::from_secs(5)).unwrap();
        // A served client answers, so it holds its slot.
        assert_eq!(c.ask("status").unwrap()["ok"], true);
        held.push(c);
    }
    let mut extra = Client::connect(s.path(), Duration::from_secs(5)).unwrap();
    let r = extra.ask("status").unwrap();
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("busy"), "{r}");
    // Once one leaves, a new client is served.
    drop(held.pop());
    let t0 = Instant::now();
    loop {
        let r = request(s.path(), "status", Duration::from_secs(5)).unwrap();
        if r["ok"] == true {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "slot not freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stale_socket_is_replaced_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    // Stale: bound, then its listener gone.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let s = start(&path).unwrap();
    assert_eq!(
        request(&path, "status", Duration::from_secs(5)).unwrap()["ok"],
        true
    );
    // Live: the first server answers.
    let e = start(&path).unwrap_err();
    assert!(matches!(e, BindError::Live(_)), "{e}");
    assert!(e.to_string().contains("another agent"), "{e}");
    // The refused one did not take the path away.
    assert_eq!(
        request(&path, "status", Duration::from_secs(5)).unwrap()["ok"],
        true
    );
    drop(s);
    // Not a socket: refused, left alone.
    std::fs::write(&path, b"x").unwrap();
    assert!(matches!(start(&path), Err(BindError::NotASocket(_))));
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
}

#[test]
fn a_replaced_socket_is_not_removed_by_the_old_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let s = start(&path).unwrap();
    // Someone else's socket now sits at the path.
    std::fs::remove_file(&path).unwrap();
    let _other = UnixListener::bind(&path).unwrap();
    drop(s);
    assert!(path.exists());
}
