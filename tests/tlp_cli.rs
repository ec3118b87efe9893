//! `pcietun tlp decode/encode`, run as the built binary: the analyser
//! output, `--json`, decode→encode reproducing the input bytes, stdin input, and a bad line's
//! error message and exit code.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn pcietun(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pcietun");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const TRACE: &str = "\
# a small trace
0x00000001 0x0100010f 0xf7e00010
4a000001 01000004 00000000 4d1408a8

60000010 010000ff 00000001 7fe0c000 00000000 00000000 00000100 00000001 11111111 22222222 33333333 44444444 55555555 66666666 77777777 88888888 99999999 aaaaaaaa bbbbbbbb cccccccc
34000000 01000020 00000000 00000000
80000001 91212345 20008001 0100010f 00000001 00000000 eebb7e3e
";

fn normalised_hex_lines(s: &str) -> Vec<String> {
    s.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.trim_start_matches("0x"))
                .collect::<String>()
        })
        .collect()
}

#[test]
fn decode_prints_analyser_lines() {
    let out = pcietun(&["tlp", "decode"], TRACE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 5, "{s}");
    assert!(lines[0].starts_with("MRd32") && lines[0].contains("Addr 0xf7e00010"));
    assert!(lines[1].starts_with("CplD") && lines[1].contains("SC") && lines[1].contains("BC 4"));
    assert!(lines[2].starts_with("MWr64"));
    assert!(lines[3].contains("Assert_INTA"));
    assert!(lines[4].contains("PASID(12345 PMR)") && lines[4].contains("ECRC eebb7e3e"));
}

#[test]
fn decode_json_then_encode_reproduces_the_bytes() {
    let out = pcietun(&["tlp", "decode", "--json"], TRACE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "MRd32");
    assert_eq!(first["fmt"], 0);
    assert_eq!(first["type"], 0);
    assert_eq!(first["requester_id"], "01:00.0");
    assert_eq!(first["address"], "0xf7e00010");
    assert_eq!(first["first_be"], 15);
    assert!(first.get("status").is_none() && first.get("data").is_none());
    let cpl: serde_json::Value = serde_json::from_str(json.lines().nth(1).unwrap()).unwrap();
    assert_eq!(cpl["status"], "SC");
    assert_eq!(cpl["completer_id"], "01:00.0");
    assert_eq!(cpl["data"], "4d1408a8");

    let enc = pcietun(&["tlp", "encode"], &json);
    assert!(enc.status.success(), "{}", text(&enc.stderr));
    assert_eq!(
        normalised_hex_lines(&text(&enc.stdout)),
        normalised_hex_lines(TRACE)
    );
}

#[test]
fn decode_takes_arguments() {
    let out = pcietun(
        &["tlp", "decode", "40000001 0100000f fee00000 00000041"],
        "",
    );
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("MWr32"));
}

#[test]
fn a_bad_line_is_reported_and_the_rest_still_decodes() {
    let input = "00000001 0100010f f7e00010\nzz\n03000001 0100010f 00000000\n34000000 01000020 00000000 00000000\n";
    let out = pcietun(&["tlp", "decode"], input);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("line 2:") && err.contains("not a hex digit"),
        "{err}"
    );
    assert!(
        err.contains("line 3:") && err.contains("reserved Fmt/Type"),
        "{err}"
    );
    assert_eq!(text(&out.stdout).lines().count(), 2);
}

#[test]
fn encode_reports_bad_json_and_inconsistent_fields() {
    let input = concat!(
        "{\"kind\":\"MRd32\",\"requester_id\":\"01:00.0\",\"address\":\"0x1000\",\"first_be\":15,\"length_dw\":1}\n",
        "{\"kind\":\"Bogus\"}\n",
        "not json\n",
        "{\"kind\":\"MRd32\",\"fmt\":1,\"requester_id\":\"01:00.0\",\"address\":\"0x1000\",\"first_be\":15}\n",
    );
    let out = pcietun(&["tlp", "encode"], input);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).trim(), "000000010100000f00001000");
    let err = text(&out.stderr);
    assert!(err.contains("line 2: unknown kind"), "{err}");
    assert!(err.contains("line 3: invalid JSON"), "{err}");
    assert!(err.contains("line 4:") && err.contains("\"fmt\""), "{err}");
}
