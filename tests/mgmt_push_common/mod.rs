//! A tiny HTTP/1.1 receiver of pushed events on loopback: it answers every POST with the
//! status it is told to and hands each request's body to the test, in arrival order.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Receiver {
    pub url: String,
    /// The status every request gets.
    pub status: Arc<AtomicU16>,
    rx: mpsc::Receiver<(Instant, String, Value)>,
}

fn serve(
    stream: TcpStream,
    status: &AtomicU16,
    tx: &mpsc::Sender<(Instant, String, Value)>,
) -> Option<()> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut w = stream.try_clone().ok()?;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let request_line = line.trim_end().to_string();
        let mut len = 0usize;
        let mut content_type = String::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':')?;
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().ok()?;
            }
            if name.eq_ignore_ascii_case("content-type") {
                content_type = value.trim().to_string();
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).ok()?;
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let _ = tx.send((
            Instant::now(),
            format!("{request_line} {content_type}"),
            json,
        ));
        let code = status.load(Ordering::SeqCst);
        write!(
            w,
            "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        )
        .ok()?;
    }
}

impl Receiver {
    pub fn start(status: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let status = Arc::new(AtomicU16::new(status));
        let (tx, rx) = mpsc::channel();
        let s = status.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (s, tx) = (s.clone(), tx.clone());
                std::thread::spawn(move || serve(stream, &s, &tx));
            }
        });
        Receiver { url, status, rx }
    }

    /// The next request (arrival time, request line and content type, JSON body), waiting at
    /// most `wait`.
    pub fn next(&self, wait: Duration) -> Option<(Instant, String, Value)> {
        self.rx.recv_timeout(wait).ok()
    }

    /// The next event body (panics after `wait`).
    pub fn event(&self, wait: Duration) -> Value {
        self.next(wait).expect("an event reaches the receiver").2
    }

    /// Nothing arrives within `wait`.
    pub fn quiet(&self, wait: Duration) -> bool {
        self.next(wait).is_none()
    }
}

/// (MessageId, first MessageArg) of each record of an event.
pub fn records(ev: &Value) -> Vec<(String, String)> {
    ev["Events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["MessageId"].as_str().unwrap_or("").to_string(),
                        r["Message"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
